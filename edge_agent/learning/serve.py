"""Serving a gate-approved adaptation: the box derives, signs and activates its own release.

When the evaluation gate (``gate``) says a round's adapted model beats the
active one on held-back women, the box screens with it -- through the same
path as every other model, so nothing about serving is special:

1. ``models.derive.build_derived`` builds a release folder from the release
   the round trained on plus the round's change (fp32 and INT8 ONNX, a fresh
   self-test), under ``$MAMMO_HOME/models/<base>+local.<round>``, with
   ``model.json["local"]`` naming the base (version and manifest SHA-256),
   the round, and the gate's comparison;
2. the box signs its manifest with its local release key
   (``activation.local_release_key``: derived from the keystore, never
   stored, trusted by this box only);
3. ``ModelRegistry.activate`` verifies it (the local signature, a base this
   box still trusts and unchanged, the gate's "serve"), runs the self-test on
   the box's hardware profile and activates it atomically; workers take it
   at their next study. ``mammo model rollback`` returns to the base.

A failure at any step (a TFLite profile: derived releases carry ONNX only)
leaves the active model as it was; the round still places its update, and the
reason is recorded with the round. The ``train_serve_local`` setting turns
step 3 off for a clinic that wants only federated releases.

The privacy ledger, the updates and the coordinator keep counting the base
release (``Activation.generation``): a local adaptation is not a new model
generation, so serving it changes no budget.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlite_utils

from edge_agent.errors import MammoError
from edge_agent.settings import Settings

if TYPE_CHECKING:
    from edge_agent.learning.gate import GateResult
    from models.release_files import Release
    from provisioning.keystore import Keystore

log = logging.getLogger(__name__)

ACTOR = "learning"


@dataclass(frozen=True)
class Served:
    """What became of a "serve" verdict: the release built, and whether the box now screens with it."""

    version: str
    path: str | None
    activated: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_version(base_version: str, round_id: str) -> str:
    """``0.1.0+local.1a2b3c4d``, or ``0.1.0+fl.3.local.1a2b3c4d`` on a federated base (a PEP 440 local label either way)."""
    return f"{base_version}{'.' if '+' in base_version else '+'}local.{round_id[:8]}"


def serve(db: sqlite_utils.Database, settings: Settings, keystore: Keystore, base: Release, base_digest: str, delta: np.ndarray,
          round_id: str, verdict: GateResult, *, examples: int, epsilon: float) -> Served:
    """Build, sign and activate the adapted release (see the module docstring); never raises for a refused release."""
    from edge_agent.inference.activation import LOCAL, ModelRegistry, local_release_key, sign_release
    from models.derive import build_derived
    from models.errors import ReleaseError

    version = local_version(base.version, round_id)
    registry = ModelRegistry(db, settings, keystore=keystore)
    target = settings.models_dir / version
    active = registry.active()
    if active is not None and active.path == target:  # a round resumed after a crash between activation and its ledger entry
        return Served(version, str(target), True, "already active")
    provenance = {"base_manifest_sha256": base_digest, "round_id": round_id, "examples": examples, "epsilon": epsilon,
                  "made_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  "gate": {"decision": verdict.decision, "active_auc": verdict.active_auc, "adapted_auc": verdict.adapted_auc,
                           "margin": settings.train_gate_margin, "n_studies": verdict.n_studies, "n_positive": verdict.n_positive,
                           "reason": verdict.reason}}
    try:
        settings.models_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = build_derived(base.path, delta, version, settings.models_dir, provenance_key=LOCAL, provenance=provenance,
                             card_header=_card_header(version, base.version, verdict, examples, epsilon))
        sign_release(path, local_release_key(keystore))
    except (ReleaseError, MammoError, OSError) as exc:
        log.warning("adapted model of round %s not built: %s", round_id[:8], exc)
        return Served(version, None, False, f"not built: {exc}")
    if not settings.train_serve_local:
        return Served(version, str(path), False, "built, not activated: train_serve_local is off")
    try:
        registry.activate(str(path), by=ACTOR, reason=f"local adaptation, round {round_id[:8]}: {verdict.reason}")
    except MammoError as exc:
        log.warning("adapted model %s not activated: %s", version, exc)
        return Served(version, str(path), False, f"not activated: {exc}")
    return Served(version, str(path), True, "activated")


def _card_header(version: str, base: str, verdict: GateResult, examples: int, epsilon: float) -> str:
    lines = [f"# Locally adapted release {version}", "",
             f"Made on this box from {base} by one round of differentially private training (epsilon {epsilon:.3f}) on "
             f"{examples} of its own radiologist-confirmed studies. It serves this box only, because on held-back women "
             f"it did better than the model then active: {verdict.reason} ({verdict.n_studies} studies, {verdict.n_positive} positive).",
             "Only the trainable part (fuse block and head) changed; the figures below are the base release's. "
             "No TFLite file: ONNX fp32 and INT8 only.", "", "---", "", ""]
    return "\n".join(lines)
