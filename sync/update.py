"""The update envelope: what one finished local training round hands to federated sync.

Local training (``edge_agent.learning``) produces a :class:`LocalUpdate` in
plaintext inside the training process; ``sync.outbox`` encrypts its ``delta``
with the clinics' CKKS context at once and keeps only ciphertext and the
metadata below.  Nothing else about the women leaves the training process:
no image, no identifier, no per-woman number, only the summed change of the
trainable parameters and counts.

``spec`` names the trainable part (``models.trainable.spec_of``): the ordered
parameter names and shapes and their digest, so the coordinator aggregates
only updates of the same shape over the same base model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrainableSpec:
    """The trainable part of a model: parameter names and shapes, in the order they are flattened."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))

    @property
    def digest(self) -> str:
        text = json.dumps([[n, list(s)] for n, s in zip(self.names, self.shapes, strict=True)])
        return hashlib.sha256(text.encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes], "digest": self.digest}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainableSpec:
        return cls(tuple(d["names"]), tuple(tuple(int(x) for x in s) for s in d["shapes"]))


@dataclass(frozen=True)
class LocalUpdate:
    """One round's result, in plaintext, before the outbox encrypts it.

    ``delta`` is the flat float32 change of the trainable parameters
    (new minus base, in ``spec`` order).  ``epsilon``/``delta_dp`` is the
    differential-privacy cost of the round that produced it.
    """

    update_id: str
    base_model_version: str
    spec: TrainableSpec
    delta: np.ndarray
    example_count: int
    epsilon: float
    delta_dp: float
    noise_multiplier: float
    local_metrics: dict[str, float] = field(default_factory=dict)
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def __post_init__(self) -> None:
        if self.delta.dtype != np.float32 or self.delta.ndim != 1 or self.delta.size != self.spec.size:
            raise ValueError(f"delta must be flat float32 of {self.spec.size} values, got {self.delta.dtype} {self.delta.shape}")
        if self.example_count <= 0:
            raise ValueError("an update needs at least one example")
