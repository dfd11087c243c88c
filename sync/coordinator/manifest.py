"""The signed round manifest: which encrypted updates a round aggregated, with what weight, giving which model.

A box cannot see the aggregate's inputs, so the coordinator commits to them:
the hashes of the accepted updates (the SHA-256 of each ciphertext frame, the
same hash the box's outbox holds), each one's weight, share, staleness and
epsilon, the base and new model versions, the round number and time.  The
body is canonical JSON (sorted keys, no spaces, UTF-8) and is signed with the
federation's model-signing key (Ed25519, as releases are:
``edge_agent.inference.activation``, ``provisioning.authority``).  The
signature covers a domain prefix (``mammo-round-manifest/1`` and a newline)
before the body, so a manifest signature can never pass as a release
signature or the other way round.

A box checks a manifest against the model-signing keys of its startup kit
(``provisioning.enrolment.model_signing_keys``) with :func:`verify_manifest`,
then :func:`update_included` tells it whether its update counted.  No box id
is listed: the manifest goes to every box, and which clinics took part is
the coordinator's to know, not each clinic's.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import IntegrityError, ProvisioningError
from provisioning.kit import SigningKey, verify_release

FORMAT = "mammo-round-manifest/1"
DOMAIN = (FORMAT + "\n").encode()


@dataclass(frozen=True)
class ManifestUpdate:
    """One update a round took."""

    sha256: str
    weight: float
    share: float
    staleness: int
    example_count: int
    epsilon: float
    delta_dp: float


@dataclass(frozen=True)
class RoundManifest:
    round: int
    base_model_version: str
    new_model_version: str
    created_at: str  # ISO 8601, UTC
    spec_digest: str
    aggregate_sha256: str
    total_weight: float
    updates: tuple[ManifestUpdate, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "round": self.round, "base_model_version": self.base_model_version, "new_model_version": self.new_model_version,
                "created_at": self.created_at, "spec_digest": self.spec_digest, "aggregate_sha256": self.aggregate_sha256,
                "total_weight": self.total_weight, "max_epsilon": max((u.epsilon for u in self.updates), default=0.0),
                "updates": [u.__dict__ for u in self.updates]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundManifest:
        if d.get("format") != FORMAT:
            raise IntegrityError(f"Not a round manifest of format {FORMAT} (got {d.get('format')!r}). Fix: update the box software.")
        return cls(int(d["round"]), str(d["base_model_version"]), str(d["new_model_version"]), str(d["created_at"]), str(d["spec_digest"]),
                   str(d["aggregate_sha256"]), float(d["total_weight"]), tuple(ManifestUpdate(**u) for u in d["updates"]))


def build(number: int, *, base_model_version: str, new_model_version: str, spec_digest: str, aggregate_sha256: str, total_weight: float,
          contributions: Sequence[dict[str, Any]], now: dt.datetime | None = None) -> RoundManifest:
    """A manifest from a round's contributions (``sync.coordinator.store.round_contributions``)."""
    at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0).isoformat()
    updates = tuple(ManifestUpdate(str(c["sha256"]), float(c["weight"]), float(c["share"]), int(c["staleness"]), int(c["example_count"]),
                                   float(c["epsilon"]), float(c["delta_dp"])) for c in contributions)
    return RoundManifest(number, base_model_version, new_model_version, at, spec_digest, aggregate_sha256, float(total_weight), updates)


def canonical(manifest: RoundManifest) -> bytes:
    """The exact bytes that are signed and published (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(manifest.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign_manifest(manifest: RoundManifest, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(body, base64 signature) signed with the model-signing key (``Authority.signing_key(version)``)."""
    body = canonical(manifest)
    return body, base64.b64encode(key.sign(DOMAIN + body))


def verify_manifest(body: bytes, signature_b64: bytes, keys: tuple[SigningKey, ...] | Ed25519PublicKey, *, now: dt.datetime | None = None) -> RoundManifest:
    """The manifest, once its signature verifies under the kit's model-signing keys (or one given key); IntegrityError otherwise."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        raise IntegrityError("The round manifest's signature is not base64. Fix: fetch the manifest again.") from None
    if isinstance(keys, Ed25519PublicKey):
        try:
            keys.verify(signature, DOMAIN + body)
        except InvalidSignature:
            raise IntegrityError("The round manifest's signature does not verify: it was altered or signed by another key. Do not trust it.") from None
    else:
        try:
            verify_release(keys, signature, DOMAIN + body, now or dt.datetime.now(dt.UTC))
        except ProvisioningError as exc:
            raise IntegrityError(f"The round manifest's signature does not verify under this box's federation keys ({exc}). Do not trust it.") from None
    try:
        manifest = RoundManifest.from_dict(json.loads(body))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"The signed round manifest cannot be read ({exc}). Fix: update the box software.") from None
    if canonical(manifest) != body:
        raise IntegrityError("The round manifest is not in canonical form; refusing it.")
    return manifest


def update_included(manifest: RoundManifest, sha: str) -> ManifestUpdate | None:
    """The entry for the update whose ciphertext hashes to ``sha``, or None when the round did not take it."""
    return next((u for u in manifest.updates if u.sha256 == sha), None)
