"""Opening the model on the chosen profile, with a visible fallback to the CPU.

A provider or delegate that fails to load, or that ONNX Runtime silently
replaced by the CPU, counts as a failure: the box then runs the cpu-small
profile and says why, instead of pretending to use the GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hardware_profiles.profiles import Profile
from hardware_profiles.select import FALLBACK

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedRuntime:
    screener: object  # models.runtime.Screener
    profile: Profile
    backend: str
    fallback_reason: str | None


def open_on_profile(release: Any, profile: Profile, profiles: dict[str, Profile], delegate_path: str | None = None) -> OpenedRuntime:
    from models.runtime import Screener

    try:
        screener = Screener(release, backend=profile.backend, threads=profile.threads,
                            providers=profile.providers or None, delegate=delegate_path if profile.runtime == "litert" else None)
        return OpenedRuntime(screener, profile, profile.backend, None)
    except Exception as exc:  # any provider/delegate failure: the CPU profile must still screen
        if profile.name == FALLBACK:
            raise
        reason = f"profile {profile.name} could not run ({type(exc).__name__}: {exc}); fell back to {FALLBACK}"
        log.warning(reason)
    cpu = profiles[FALLBACK]
    screener = Screener(release, backend=cpu.backend, threads=cpu.threads, providers=cpu.providers or None)
    return OpenedRuntime(screener, cpu, cpu.backend, reason)
