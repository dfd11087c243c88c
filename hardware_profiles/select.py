"""Choosing a profile: a pure function of the profiles and the machine facts."""

from __future__ import annotations

from dataclasses import dataclass

from hardware_profiles.detect import MachineFacts
from hardware_profiles.profiles import Profile

FALLBACK = "cpu-small"


@dataclass(frozen=True)
class Choice:
    profile: Profile
    reasons: tuple[tuple[str, str], ...]  # (profile name, why it was taken or skipped)


def unmet(profile: Profile, facts: MachineFacts) -> list[str]:
    """What this machine lacks for ``profile``; empty means it qualifies."""
    r = profile.requires
    missing = []
    if facts.cores < r.min_cores:
        missing.append(f"needs {r.min_cores} cores, has {facts.cores}")
    if facts.memory_gb < r.min_memory_gb:
        missing.append(f"needs {r.min_memory_gb} GB RAM, has {facts.memory_gb}")
    if r.any_provider and not set(r.any_provider) & set(facts.ort_providers):
        missing.append(f"needs ONNX Runtime provider {' or '.join(r.any_provider)}; available: {', '.join(facts.ort_providers) or 'none'}")
    if r.gpu_visible and not facts.gpu_visible:
        missing.append("no GPU visible")
    if r.delegate:
        if not facts.delegates:
            missing.append(f"no TFLite delegate library found ({', '.join(profile.delegates)})")
        if not facts.litert_available:
            missing.append("ai-edge-litert is not installed")
    if profile.runtime == "onnxruntime" and not facts.ort_providers:
        missing.append("onnxruntime is not installed")
    return missing


def choose(profiles: dict[str, Profile], facts: MachineFacts, forced: str | None = None) -> Choice:
    """The highest-priority profile this machine satisfies (or ``forced``), with every reason."""
    reasons: list[tuple[str, str]] = []
    if forced:
        if forced not in profiles:
            raise KeyError(f"unknown hardware profile {forced!r}; known: {', '.join(sorted(profiles))}")
        lacking = unmet(profiles[forced], facts)
        if not lacking:
            return Choice(profiles[forced], ((forced, "forced by settings"),))
        reasons.append((forced, "forced by settings but " + "; ".join(lacking)))
    picked: Profile | None = None
    for p in sorted(profiles.values(), key=lambda p: -p.priority):
        lacking = unmet(p, facts)
        if picked is None and not lacking:
            picked = p
            reasons.append((p.name, f"chosen: highest priority ({p.priority}) this machine satisfies"))
        elif lacking:
            reasons.append((p.name, "skipped: " + "; ".join(lacking)))
        else:
            reasons.append((p.name, f"qualifies, lower priority ({p.priority})"))
    if picked is None:
        picked = profiles[FALLBACK]
        reasons.append((FALLBACK, "fallback: nothing else qualifies"))
    return Choice(picked, tuple(reasons))
