"""Where a finished round's update goes: sync's outbox, reached by name only.

``sync`` sits above the box (it imports ``edge_agent``; the box never imports
``sync``, an import-linter contract). So, as the daemon reaches sync's
service through an import string, training reaches the outbox through the
``train_update_sink`` setting (default ``sync.outbox:place_update``,
``(box_db, home, update) -> update_id``), and builds the shared envelope
(``sync.update.LocalUpdate``, ``TrainableSpec``) from its module by name.
A test or another deployment names its own sink.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sqlite_utils

from edge_agent.errors import TrainingError

#: The shared update envelope (above the box, so reached by name).
ENVELOPE_MODULE = "sync.update"


class UpdateSink(Protocol):
    """Keeps an update durably (idempotent by ``update.update_id``) and returns its id."""

    def __call__(self, box_db: sqlite_utils.Database, home: Path, update: Any, /) -> str: ...


def resolve(spec: str) -> UpdateSink:
    """The sink function named ``module:function``; TrainingError with the fix when it cannot be loaded."""
    module, _, func = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TrainingError(f"The update sink {spec!r} cannot be loaded ({exc}). Fix: set train_update_sink to module:function, "
                            "e.g. sync.outbox:place_update, and check that the package is installed.") from exc
    if not callable(target):
        raise TrainingError(f"The update sink {spec!r} is not a function. Fix: name a function as module:function.")
    sink: UpdateSink = target
    return sink


def build_update(*, update_id: str, base_model_version: str, names: Sequence[str], shapes: Sequence[Sequence[int]], delta: np.ndarray,
                 example_count: int, epsilon: float, delta_dp: float, noise_multiplier: float, local_metrics: dict[str, float]) -> Any:
    """A ``sync.update.LocalUpdate`` (the envelope sync encrypts and sends)."""
    try:
        env = importlib.import_module(ENVELOPE_MODULE)
    except ImportError as exc:
        raise TrainingError(f"The update envelope module {ENVELOPE_MODULE} is missing ({exc}). Fix: install the full package.") from exc
    spec = env.TrainableSpec(tuple(names), tuple(tuple(int(x) for x in s) for s in shapes))
    return env.LocalUpdate(update_id=update_id, base_model_version=base_model_version, spec=spec,
                           delta=np.ascontiguousarray(delta, dtype=np.float32), example_count=int(example_count), epsilon=float(epsilon),
                           delta_dp=float(delta_dp), noise_multiplier=float(noise_multiplier), local_metrics=dict(local_metrics))
