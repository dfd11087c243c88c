"""Buffered asynchronous aggregation (FedBuff-style) of encrypted updates: the rules, as pure functions.

Boxes train offline and their updates arrive whenever a link appears, each on
the global model version it started from.  The coordinator does not wait for a
synchronous round: it buffers what arrives and aggregates when

* ``buffer_k`` distinct admissible updates are waiting (FedBuff's K), or
* ``deadline_s`` has passed since the oldest of them arrived and at least
  ``min_updates`` are waiting, so a quiet week still yields a model.

An update's *staleness* is the number of global generations published since
its base: ``s = current - base``.  Beyond ``max_staleness`` it is rejected
(its delta points from a model too far behind); otherwise its weight is its
example count times ``(1 + s) ** -staleness_exponent`` (1/sqrt(1+s) by
default, as FedBuff and FedAsync suggest).  Duplicates (the same ciphertext
hash, or the same box's same ``update_id``, sent twice over a dropping link)
count once.

The weighted sum runs on ciphertexts with the public context only
(:func:`aggregate`): each update times its *normalised* weight w_i / W, added
up, so the aggregate a clinic decrypts is the weighted mean delta itself
(``sync.he`` explains why normalised: one plaintext multiply fits the
[60, 40, 60] chain, and the sum must stay inside the last prime's headroom).
The total weight W travels in the round manifest.

Nothing here touches a clock, a file or a socket: the caller passes ``now``,
the buffer and a function that reads a ciphertext.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.errors import SyncError
from sync import he

if TYPE_CHECKING:
    import tenseal as ts


@dataclass(frozen=True)
class StrategyConfig:
    """The coordinator's aggregation rule (settings ``sync_buffer_k``, ``sync_deadline_s``, ...)."""

    buffer_k: int = 3
    deadline_s: float = 6 * 3600.0
    min_updates: int = 1
    max_staleness: int = 4
    staleness_exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.buffer_k < 1 or self.min_updates < 1 or self.min_updates > self.buffer_k:
            raise SyncError(f"Aggregation needs 1 <= min_updates ({self.min_updates}) <= buffer_k ({self.buffer_k}). Fix: the sync_buffer_k / sync_min_updates settings.")
        if self.deadline_s <= 0 or self.max_staleness < 0 or self.staleness_exponent < 0:
            raise SyncError("sync_deadline_s must be > 0, sync_max_staleness and sync_staleness_exponent >= 0. Fix: the coordinator's settings.")

    @classmethod
    def from_settings(cls, settings: Any) -> StrategyConfig:
        return cls(settings.sync_buffer_k, settings.sync_deadline_s, settings.sync_min_updates, settings.sync_max_staleness, settings.sync_staleness_exponent)


@dataclass(frozen=True)
class Buffered:
    """What the strategy needs of one received update (``sync.coordinator.store.Received`` provides it)."""

    sha256: str
    box_id: str
    update_id: str
    base_generation: int
    example_count: int
    epsilon: float
    received_at: float
    spec_digest: str
    he_version: int | None = None  # the clinics' CKKS key version it was encrypted under (from the box's kit)


@dataclass(frozen=True)
class Contribution:
    """One update's part in a round: its staleness, raw weight (examples x staleness factor) and share of the total."""

    sha256: str
    box_id: str
    update_id: str
    staleness: int
    example_count: int
    epsilon: float
    weight: float
    share: float


@dataclass(frozen=True)
class RoundPlan:
    """What one aggregation takes, whom it leaves out and why, and what started it."""

    base_generation: int
    trigger: str  # "buffer_k" or "deadline"
    contributions: tuple[Contribution, ...]
    rejected: tuple[tuple[str, str], ...]  # (sha256, reason): too stale, another spec
    duplicates: tuple[str, ...]
    total_weight: float

    @property
    def shares(self) -> tuple[tuple[str, float], ...]:
        return tuple((c.sha256, c.share) for c in self.contributions)


def staleness(base_generation: int, current_generation: int) -> int:
    """Generations published since the update's base (a base from the future is refused by :func:`admissible`)."""
    return current_generation - base_generation


def staleness_factor(s: int, exponent: float) -> float:
    """(1 + s) ** -exponent: 1 for a fresh update, 1/sqrt(2) one generation behind at the default exponent."""
    return float((1 + s) ** -exponent)


def admissible(update: Buffered, current_generation: int, spec_digest: str, config: StrategyConfig, *, he_version: int | None = None) -> str | None:
    """Why ``update`` cannot join a round on the current model (None when it can).

    With ``he_version`` (the version of the public context the coordinator aggregates
    with), an update encrypted under another CKKS key is refused: ciphertexts of two keys
    add up to noise, silently.
    """
    if he_version is not None and update.he_version != he_version:
        return f"encrypted under HE key version {update.he_version}, the coordinator aggregates version {he_version}: the box needs the current startup kit"
    if update.spec_digest != spec_digest:
        return f"trainable part {update.spec_digest[:12]}… is not the current model's ({spec_digest[:12]}…): update the box's model"
    s = staleness(update.base_generation, current_generation)
    if s < 0:
        return f"base generation {update.base_generation} is newer than the coordinator's {current_generation}"
    if s > config.max_staleness:
        return f"staleness {s} > bound {config.max_staleness}: trained on a model too far behind; the box should take the current model"
    if update.example_count <= 0:
        return "no examples"
    return None


def dedupe(buffer: Iterable[Buffered]) -> tuple[list[Buffered], list[str]]:
    """Keep the first arrival of each hash and of each (box, update_id); return (kept, duplicate hashes)."""
    kept: list[Buffered] = []
    seen_sha: set[str] = set()
    seen_id: set[tuple[str, str]] = set()
    dupes: list[str] = []
    for u in sorted(buffer, key=lambda b: (b.received_at, b.sha256)):
        if u.sha256 in seen_sha or (u.box_id, u.update_id) in seen_id:
            dupes.append(u.sha256)
            continue
        seen_sha.add(u.sha256)
        seen_id.add((u.box_id, u.update_id))
        kept.append(u)
    return kept, dupes


def trigger(ready: Sequence[Buffered], now: float, config: StrategyConfig) -> str | None:
    """"buffer_k" when K updates wait, "deadline" when the oldest waited deadline_s with min_updates there, else None."""
    if len(ready) >= config.buffer_k:
        return "buffer_k"
    if len(ready) >= config.min_updates and now - min(u.received_at for u in ready) >= config.deadline_s:
        return "deadline"
    return None


def plan_round(buffer: Iterable[Buffered], *, current_generation: int, spec_digest: str, now: float, config: StrategyConfig,
               he_version: int | None = None) -> RoundPlan | None:
    """The next round over the buffer, or None when it should keep waiting.

    Inadmissible updates are reported in ``rejected`` whether or not a round is due, so the
    caller can close them (and tell their boxes) at once.  A round takes at most ``buffer_k``
    updates, oldest first; later arrivals wait for the next one.
    """
    unique, dupes = dedupe(buffer)
    rejected: list[tuple[str, str]] = []
    ready: list[Buffered] = []
    for u in unique:
        reason = admissible(u, current_generation, spec_digest, config, he_version=he_version)
        if reason:
            rejected.append((u.sha256, reason))
        else:
            ready.append(u)
    why = trigger(ready, now, config)
    if why is None:
        return RoundPlan(current_generation, "", (), tuple(rejected), tuple(dupes), 0.0) if rejected or dupes else None
    taken = ready[: config.buffer_k]
    weights = [u.example_count * staleness_factor(staleness(u.base_generation, current_generation), config.staleness_exponent) for u in taken]
    total = math.fsum(weights)
    contributions = tuple(
        Contribution(u.sha256, u.box_id, u.update_id, staleness(u.base_generation, current_generation), u.example_count, u.epsilon, w, w / total)
        for u, w in zip(taken, weights, strict=True)
    )
    return RoundPlan(current_generation, why, contributions, tuple(rejected), tuple(dupes), total)


def aggregate(plan: RoundPlan, public_ctx: ts.Context, read: Callable[[str], bytes], *, expect_values: int | None = None) -> bytes:
    """The encrypted weighted mean of a round: sum_i share_i * update_i on ciphertexts, reading one update at a time.

    ``public_ctx`` needs no secret key (the coordinator has none).  Raises
    ``UpdateRejected`` (from ``sync.he``) naming the first ciphertext that cannot be used.
    """
    if not plan.contributions:
        raise SyncError("This plan aggregates nothing (only rejections or duplicates). Fix: wait for admissible updates.")
    return he.weighted_sum(public_ctx, ((c.share, read(c.sha256)) for c in plan.contributions), expect_values=expect_values)

