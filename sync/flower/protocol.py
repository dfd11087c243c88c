"""What the coordinator and a box say to each other inside Flower messages: frozen records in, Flower records out.

Two exchanges, both started by the coordinator's ServerApp (Flower's
deployment engine lets only the ServerApp send; a box answers when its
SuperNode next pulls, i.e. when its link is up)::

    query.sync     coordinator -> box   Poll:    acknowledgements (update hashes it holds), rejections, the latest
                                                 signed release (files, when the box reported an older one) and the
                                                 signed round manifests that include this box's updates
                   box -> coordinator   Answer:  its certificate, what it confirmed, its active model, and at most
                                                 one pending encrypted update (ciphertext + metadata)
    query.decrypt  coordinator -> one box   the encrypted weighted mean of a round
                   box -> coordinator       its decryption (the clinics hold the CKKS secret key; the coordinator never does)

Small structured parts travel as one JSON string in a ``ConfigRecord``;
large byte strings (a ciphertext, a release archive) as a one-dimensional
``bytes`` array in an ``ArrayRecord``, which Flower splits into chunks.
Everything here is pure; the loops live in ``server_app`` and ``box_side``.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

SYNC = "query.sync"
DECRYPT = "query.decrypt"

#: Files of a federated release that travel to a box (no TFLite, no CV predictions: see sync.coordinator.releases).
RELEASE_FILES = ("manifest.json", "manifest.sig", "model.json", "MODEL_CARD.md", "model_fp32.pt", "model_fp32.onnx", "model_int8.onnx", "selftest.npz")


def _blob(data: bytes, stype: str) -> Array:
    return Array(dtype="bytes", shape=(len(data),), stype=stype, data=data)


def _meta(content: RecordDict) -> dict[str, Any]:
    record = content.get("meta")
    if not isinstance(record, ConfigRecord) or not isinstance(record.get("json"), str):
        raise ValueError("message without its meta record")
    meta: dict[str, Any] = json.loads(str(record["json"]))
    return meta


def _blobs(content: RecordDict) -> dict[str, bytes]:
    record = content.get("blobs")
    if not isinstance(record, ArrayRecord):
        return {}
    return {k: bytes(v.data) for k, v in record.items()}


def _content(meta: dict[str, Any], blobs: dict[str, tuple[bytes, str]]) -> RecordDict:
    records: dict[str, Any] = {"meta": ConfigRecord({"json": json.dumps(meta, sort_keys=True)})}
    if blobs:
        records["blobs"] = ArrayRecord({k: _blob(data, stype) for k, (data, stype) in blobs.items()})
    return RecordDict(records)


# --- coordinator -> box ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """One ``query.sync`` to a box."""

    acks: tuple[str, ...] = ()
    rejects: tuple[tuple[str, str], ...] = ()
    release_version: str | None = None
    release: bytes | None = None  # tar of RELEASE_FILES, only when the box is behind
    manifests: tuple[bytes, ...] = ()  # signed round manifests (their own format, sync.coordinator.manifest)
    kit: bytes | None = None  # a renewed startup kit the authority issued on the box's request at sync

    def to_content(self) -> RecordDict:
        meta = {"acks": list(self.acks), "rejects": [list(r) for r in self.rejects], "release_version": self.release_version,
                "manifests": [m.decode("utf-8") for m in self.manifests], "kit": self.kit.decode("utf-8") if self.kit else None}
        return _content(meta, {"release": (self.release, "mammo.release.tar")} if self.release else {})

    @classmethod
    def from_content(cls, content: RecordDict) -> Poll:
        meta, blobs = _meta(content), _blobs(content)
        kit = meta.get("kit")
        return cls(tuple(meta.get("acks", ())), tuple((str(a), str(b)) for a, b in meta.get("rejects", ())), meta.get("release_version"),
                   blobs.get("release"), tuple(m.encode("utf-8") for m in meta.get("manifests", ())), str(kit).encode("utf-8") if kit else None)


@dataclass(frozen=True)
class Answer:
    """A box's reply to a :class:`Poll`."""

    box_id: str
    certificate: str
    model_version: str | None
    confirmed: tuple[str, ...] = ()
    update: dict[str, Any] | None = None  # sync.outbox.OutboxEntry.metadata()
    ciphertext: bytes | None = None
    manifest_checks: tuple[dict[str, Any], ...] = ()
    release_result: dict[str, Any] | None = None
    outbox: dict[str, Any] = field(default_factory=dict)
    renewal: dict[str, Any] | None = None  # {"csr": PEM, "settings": the installed kit's}: the certificate is near its end

    def to_content(self) -> RecordDict:
        meta = {"box_id": self.box_id, "certificate": self.certificate, "model_version": self.model_version, "confirmed": list(self.confirmed),
                "update": self.update, "manifest_checks": list(self.manifest_checks), "release_result": self.release_result, "outbox": self.outbox,
                "renewal": self.renewal}
        return _content(meta, {"ciphertext": (self.ciphertext, "mammo.ckks")} if self.ciphertext is not None else {})

    @classmethod
    def from_content(cls, content: RecordDict) -> Answer:
        meta, blobs = _meta(content), _blobs(content)
        return cls(str(meta["box_id"]), str(meta["certificate"]), meta.get("model_version"), tuple(meta.get("confirmed", ())), meta.get("update"),
                   blobs.get("ciphertext"), tuple(meta.get("manifest_checks", ())), meta.get("release_result"), dict(meta.get("outbox") or {}),
                   meta.get("renewal"))


@dataclass(frozen=True)
class DecryptRequest:
    round_id: int
    aggregate: bytes

    def to_content(self) -> RecordDict:
        return _content({"round_id": self.round_id}, {"aggregate": (self.aggregate, "mammo.ckks")})

    @classmethod
    def from_content(cls, content: RecordDict) -> DecryptRequest:
        return cls(int(_meta(content)["round_id"]), _blobs(content)["aggregate"])


@dataclass(frozen=True)
class DecryptAnswer:
    round_id: int
    box_id: str
    mean: np.ndarray  # float32, the weighted mean delta

    def to_content(self) -> RecordDict:
        data = np.ascontiguousarray(self.mean, dtype="<f4").tobytes()
        return _content({"round_id": self.round_id, "box_id": self.box_id}, {"mean": (data, "float32le")})

    @classmethod
    def from_content(cls, content: RecordDict) -> DecryptAnswer:
        meta = _meta(content)
        return cls(int(meta["round_id"]), str(meta["box_id"]), np.frombuffer(_blobs(content)["mean"], dtype="<f4").astype(np.float32))


# --- release archives ----------------------------------------------------------------------------------------------------


def pack_release(folder: Path) -> bytes:
    """A release folder's travelling files as one uncompressed tar (ONNX and ciphertexts hardly compress)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in RELEASE_FILES:
            if (folder / name).exists():
                tar.add(folder / name, arcname=name, recursive=False)
    return buf.getvalue()


def unpack_release(data: bytes, into: Path) -> Path:
    """Write a release archive's plain files into ``into`` (created new); names outside RELEASE_FILES are refused."""
    into.mkdir(parents=True, exist_ok=False, mode=0o700)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            if member.name not in RELEASE_FILES or not member.isfile():
                raise ValueError(f"unexpected entry {member.name!r} in a release archive")
            src = tar.extractfile(member)
            assert src is not None
            (into / member.name).write_bytes(src.read())
    return into
