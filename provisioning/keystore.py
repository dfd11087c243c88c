"""The box keystore: its identity keypair and the master key for data at rest.

``FileKeystore`` keeps both in one JSON file whose secret part is encrypted
with a key derived from a passphrase by Argon2id.  The rest of the box only
sees the :class:`Keystore` protocol, so a TPM- or HSM-backed store (which
never reveals the master key, only unwraps with it) can replace the file
without touching callers: they ask for ``secret(purpose)`` or ``sign(data)``.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_agent.errors import KeystoreError

FORMAT = "mammo-keystore/1"


class Keystore(Protocol):
    box_id: str

    def master_key(self) -> bytes: ...

    def secret(self, purpose: str) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost; the defaults take ~0.1-0.3 s on a small box, paid once at start-up."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 1


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"))


def _derive(passphrase: str, salt: bytes, p: KdfParams) -> bytes:
    return hash_secret_raw(passphrase.encode("utf-8"), salt, p.time_cost, p.memory_kib, p.parallelism, 32, Type.ID)


class FileKeystore:
    """A passphrase-protected keystore file (Argon2id + AES-256-GCM)."""

    def __init__(self, box_id: str, master: bytes, identity: Ed25519PrivateKey, created_at: float) -> None:
        self.box_id = box_id
        self._master = master
        self._identity = identity
        self.created_at = created_at

    @classmethod
    def open_or_create(cls, path: Path, passphrase: str, kdf: KdfParams = KdfParams()) -> FileKeystore:
        """Open the keystore, creating the box identity on first start. Never overwrites an existing file."""
        path = Path(path)
        if path.exists():
            return cls.open(path, passphrase)
        return cls.create(path, passphrase, kdf)

    @classmethod
    def create(cls, path: Path, passphrase: str, kdf: KdfParams = KdfParams()) -> FileKeystore:
        if not passphrase:
            raise KeystoreError("An empty keystore passphrase is not allowed. Fix: set MAMMO_KEYSTORE_PASSPHRASE.")
        store = cls(str(uuid.uuid4()), AESGCM.generate_key(bit_length=256), Ed25519PrivateKey.generate(), time.time())
        salt, nonce = os.urandom(16), os.urandom(12)
        header = {
            "format": FORMAT,
            "box_id": store.box_id,
            "created_at": store.created_at,
            "public_key": store.public_key_pem().decode("ascii"),
            "kdf": {"name": "argon2id", "salt": _b64(salt), "time_cost": kdf.time_cost, "memory_kib": kdf.memory_kib, "parallelism": kdf.parallelism},
        }
        secret = json.dumps({
            "master_key": _b64(store._master),
            "identity": _b64(store._identity.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())),
        }).encode()
        aad = json.dumps(header, sort_keys=True).encode()
        header["nonce"] = _b64(nonce)
        header["ciphertext"] = _b64(AESGCM(_derive(passphrase, salt, kdf)).encrypt(nonce, secret, aad))
        _write_new(path, json.dumps(header, indent=2).encode())
        return store

    @classmethod
    def open(cls, path: Path, passphrase: str) -> FileKeystore:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            if doc.get("format") != FORMAT:
                raise KeystoreError(f"{path} is not a MammoAI keystore (format {doc.get('format')!r}). Fix: point MAMMO_HOME at the box's data directory.")
            nonce, ciphertext = _unb64(doc.pop("nonce")), _unb64(doc.pop("ciphertext"))
            k = doc["kdf"]
            params = KdfParams(k["time_cost"], k["memory_kib"], k["parallelism"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeystoreError(f"Keystore {path} is unreadable or damaged ({exc}). Fix: restore it from the box backup.") from exc
        aad = json.dumps(doc, sort_keys=True).encode()
        try:
            secret = json.loads(AESGCM(_derive(passphrase or "", _unb64(k["salt"]), params)).decrypt(nonce, ciphertext, aad))
        except InvalidTag:
            raise KeystoreError(
                f"Cannot unlock keystore {path}: wrong passphrase, or the file was tampered with. "
                "Fix: give the right MAMMO_KEYSTORE_PASSPHRASE; the file was not changed."
            ) from None
        identity = Ed25519PrivateKey.from_private_bytes(_unb64(secret["identity"]))
        return cls(doc["box_id"], _unb64(secret["master_key"]), identity, doc["created_at"])

    def master_key(self) -> bytes:
        return self._master

    def secret(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose (``uid-remap``, ``date-shift`` ...), derived so purposes never share keys."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mammo:" + purpose.encode()).derive(self._master)

    def sign(self, data: bytes) -> bytes:
        return self._identity.sign(data)

    def public_key_pem(self) -> bytes:
        return self._identity.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify(public_key_pem: bytes, signature: bytes, data: bytes) -> bool:
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise KeystoreError("Expected an Ed25519 public key.")
    try:
        key.verify(signature, data)
        return True
    except Exception:
        return False


def _write_new(path: Path, data: bytes) -> None:
    """Atomically create ``path`` (temp, fsync, link); refuses if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if path exists: a keystore is never overwritten
    except FileExistsError:
        raise KeystoreError(f"Keystore {path} already exists; refusing to overwrite it.") from None
    finally:
        os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def peek_box_id(path: Path) -> str | None:
    """The box id from the keystore's clear header, without the passphrase (for status screens); None if absent or unreadable."""
    try:
        box_id = json.loads(Path(path).read_text(encoding="utf-8")).get("box_id")
    except (OSError, ValueError, AttributeError):
        return None
    return box_id if isinstance(box_id, str) else None
