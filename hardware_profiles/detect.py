"""What this machine offers: cores, memory, ONNX Runtime providers, TFLite delegates, a visible GPU."""

from __future__ import annotations

import ctypes.util
import glob
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

DELEGATE_DIRS = ("/usr/lib", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/opt/npu/lib")


@dataclass(frozen=True)
class MachineFacts:
    arch: str
    cores: int
    memory_gb: float
    ort_providers: tuple[str, ...]
    litert_available: bool
    delegates: tuple[tuple[str, str], ...]  # (library name, path found)
    gpu_visible: bool
    gpu_name: str | None


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def _ort_providers() -> tuple[str, ...]:
    try:
        import onnxruntime
    except ImportError:
        return ()
    return tuple(onnxruntime.get_available_providers())


def _litert_available() -> bool:
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def find_delegates(names: tuple[str, ...], extra_dirs: tuple[str, ...] = (), override: str | None = None) -> tuple[tuple[str, str], ...]:
    """Delegate libraries present on disk, in the order asked for; ``override`` (a path from settings) first."""
    found = []
    if override and Path(override).is_file():
        found.append((Path(override).name, override))
    for name in names:
        for d in (*extra_dirs, *DELEGATE_DIRS):
            hits = glob.glob(os.path.join(d, name))
            if hits:
                found.append((name, hits[0]))
                break
        else:
            lib = ctypes.util.find_library(name.removeprefix("lib").split(".so")[0])
            if lib:
                found.append((name, lib))
    return tuple(found)


def _gpu() -> tuple[bool, str | None]:
    if Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi"):
        name = None
        try:
            import subprocess

            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5)
            name = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
        return True, name
    return False, None


def detect(delegate_names: tuple[str, ...] = (), delegate_override: str | None = None) -> MachineFacts:
    gpu, gpu_name = _gpu()
    return MachineFacts(
        arch=platform.machine(),
        cores=os.cpu_count() or 1,
        memory_gb=round(_memory_gb(), 1),
        ort_providers=_ort_providers(),
        litert_available=_litert_available(),
        delegates=find_delegates(delegate_names, override=delegate_override),
        gpu_visible=gpu,
        gpu_name=gpu_name,
    )
