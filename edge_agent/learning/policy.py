"""The training policy: whether a round may start (or a paused one continue) now, as a pure function.

Screening has priority over learning, always: a round starts only when the
inference queue is empty, inside the clinic's training window (at night, by
default), with the CPU idle and cool enough, on mains power where the
platform says, when enough new confirmed studies arrived since the last
round, and when the privacy budget has room. :func:`decide` sees only a
:class:`BoxState` (what ``edge_agent.learning.observe`` read from the box)
and a :class:`PolicyConfig` (from the settings), and returns every reason a
round may not run, so `mammo train status` can show them all at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """A daily local-time window; ``start > end`` crosses midnight (22:00-06:00); ``start == end`` is all day."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str) -> Window:
        a, b = text.strip().split("-")
        return cls(dt.time.fromisoformat(a), dt.time.fromisoformat(b))

    def contains(self, t: dt.time) -> bool:
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class PolicyConfig:
    window: Window
    max_load: float  # 1-minute load average per core
    max_temp_c: float
    require_mains: bool
    min_new_examples: int
    min_examples: int
    enabled: bool = True


@dataclass(frozen=True)
class BoxState:
    """What the policy looks at; ``None`` where the platform does not report it."""

    local_time: dt.time
    queue_depth: int  # open inference jobs (ready or leased)
    load_per_core: float | None
    temp_c: float | None
    on_mains: bool | None
    examples: int  # confirmed studies a round would train on
    new_examples: int  # confirmed since the last round of this model generation
    budget_left: float  # epsilon
    round_epsilon: float  # what the next round would spend (composed), epsilon
    open_round: bool = False  # a paused round of this generation is waiting to resume


@dataclass(frozen=True)
class Decision:
    train: bool
    reasons: tuple[str, ...]  # why not (empty when train), or why yes


def decide(state: BoxState, cfg: PolicyConfig, *, force_window: bool = False) -> Decision:
    """May a round run now? Every failed condition is a reason; ``force_window`` waives only the window (a technician's run).

    A paused round resumes without new examples or a new reservation (its
    epsilon is already counted), but under every other condition.
    """
    why: list[str] = []
    if not cfg.enabled:
        why.append("training is disabled (train_enabled = false)")
    if state.queue_depth > 0:
        why.append(f"screening first: {state.queue_depth} inference job(s) waiting")
    if not force_window and not cfg.window.contains(state.local_time):
        why.append(f"outside the training window {cfg.window} (local time {state.local_time:%H:%M})")
    if state.load_per_core is not None and state.load_per_core > cfg.max_load:
        why.append(f"CPU busy: load {state.load_per_core:.2f} per core > {cfg.max_load:.2f}")
    if state.temp_c is not None and state.temp_c > cfg.max_temp_c:
        why.append(f"too hot: {state.temp_c:.0f} C > {cfg.max_temp_c:.0f} C")
    if cfg.require_mains and state.on_mains is False:
        why.append("on battery: training waits for mains power")
    if not state.open_round:
        if state.examples < cfg.min_examples:
            why.append(f"too few confirmed studies: {state.examples} < {cfg.min_examples}")
        if state.new_examples < cfg.min_new_examples:
            why.append(f"too few new confirmed studies since the last round: {state.new_examples} < {cfg.min_new_examples}")
        if state.budget_left <= 0 or state.round_epsilon > state.budget_left + 1e-12:
            why.append(f"privacy budget: a round needs epsilon {state.round_epsilon:.3f}, {max(state.budget_left, 0.0):.3f} left")
    if why:
        return Decision(False, tuple(why))
    return Decision(True, ("resume the paused round",) if state.open_round else ("all conditions met",))
