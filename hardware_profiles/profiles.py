"""Loading and validating the profile files."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import SettingsError

PROFILE_DIR = Path(__file__).with_name("profiles")
RUNTIMES = {"onnxruntime", "litert"}
BACKENDS = {"onnx-int8", "onnx-fp32", "tflite-int8"}
PRECISIONS = {"INT8", "FP16", "FP32"}


@dataclass(frozen=True)
class Requirements:
    min_cores: int = 1
    min_memory_gb: float = 0.0
    any_provider: tuple[str, ...] = ()
    gpu_visible: bool = False
    delegate: bool = False


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    priority: int
    runtime: str
    backend: str
    threads: int
    batch_size: int
    precision: str
    workers: int
    latency_budget_ms_per_study: int
    memory_cap_mb: int
    providers: tuple[str, ...] = ()
    delegates: tuple[str, ...] = ()
    requires: Requirements = field(default_factory=Requirements)


def load_profile(path: Path) -> Profile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"Hardware profile {path} is unreadable: {exc}. Fix the TOML or remove the file.") from exc
    req = raw.pop("requires", {})
    try:
        req_fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in req.items()}
        prof_fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        requires = Requirements(**req_fields)
        profile = Profile(**prof_fields, requires=requires)
    except TypeError as exc:
        raise SettingsError(f"Hardware profile {path} has an unknown or missing key ({exc}). Fix: compare it with cpu-small.toml.") from exc
    problems = []
    if profile.runtime not in RUNTIMES:
        problems.append(f"runtime must be one of {sorted(RUNTIMES)}")
    if profile.backend not in BACKENDS:
        problems.append(f"backend must be one of {sorted(BACKENDS)}")
    if profile.precision not in PRECISIONS:
        problems.append(f"precision must be one of {sorted(PRECISIONS)}")
    if profile.runtime == "onnxruntime" and not profile.providers:
        problems.append("an onnxruntime profile names its providers")
    if profile.runtime == "litert" and not profile.backend.startswith("tflite"):
        problems.append("a litert profile runs a tflite backend")
    if min(profile.threads, profile.batch_size, profile.workers, profile.latency_budget_ms_per_study, profile.memory_cap_mb) < 1:
        problems.append("threads, batch_size, workers, latency budget and memory cap must be >= 1")
    if problems:
        raise SettingsError(f"Hardware profile {path.name} is invalid: {'; '.join(problems)}.")
    return profile


def load_profiles(directory: Path = PROFILE_DIR) -> dict[str, Profile]:
    profiles = {}
    for path in sorted(directory.glob("*.toml")):
        p = load_profile(path)
        if p.name in profiles:
            raise SettingsError(f"Two hardware profiles are named {p.name!r}. Fix: rename one in {directory}.")
        profiles[p.name] = p
    if "cpu-small" not in profiles:
        raise SettingsError(f"The fallback profile cpu-small is missing from {directory}. Fix: restore cpu-small.toml.")
    return profiles
