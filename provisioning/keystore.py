"""The box keystore: its identity keypair and the master key for data at rest.

``FileKeystore`` keeps both in one JSON file.  Its secret part is encrypted
(AES-256-GCM) under a random key-encryption key, and the KEK is kept only
wrapped by one or more protectors (``provisioning.protectors``: an Argon2id
passphrase, a TPM 2.0), any of which unlocks the box.  The clear header
(box id, public key, creation time) is authenticated by both layers.  The
rest of the box only sees the :class:`Keystore` protocol: it asks for
``secret(purpose)`` or ``sign(data)``.

Destroying this one file (:func:`crypto_erase`) makes everything the box
sealed under its master key unreadable: that is the factory reset.
Version 1 files (the secret part under the passphrase directly) still open;
any change of protectors rewrites them as version 2.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_agent.errors import KeystoreError
from provisioning.files import fsync_dir
from provisioning.protectors import DEFAULT_KDF, KEK_BYTES, KdfParams, PassphraseProtector, Protector, derive
from provisioning.protectors import b64 as _b64
from provisioning.protectors import unb64 as _unb64

__all__ = ["FORMAT", "FileKeystore", "KdfParams", "Keystore", "crypto_erase", "peek_box_id", "protector_records", "verify"]

FORMAT = "mammo-keystore/2"
FORMAT_V1 = "mammo-keystore/1"
_HEADER_FIELDS = ("format", "box_id", "created_at", "public_key")
RECOVERY = ("If the TPM was replaced or cleared, the passphrase still opens the box (MAMMO_KEYSTORE_PASSPHRASE, or type it at a terminal); "
            "a lost passphrase on a box without its TPM cannot be recovered, by design: `mammo factory-reset --yes` starts a new box.")


class Keystore(Protocol):
    box_id: str

    def master_key(self) -> bytes: ...

    def secret(self, purpose: str) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


def _aad(doc: Mapping[str, Any]) -> bytes:
    return json.dumps({k: doc[k] for k in _HEADER_FIELDS}, sort_keys=True).encode()


class FileKeystore:
    """A keystore file whose secrets open with any one of its protectors (passphrase, TPM)."""

    def __init__(self, box_id: str, master: bytes, identity: Ed25519PrivateKey, created_at: float) -> None:
        self.box_id = box_id
        self._master = master
        self._identity = identity
        self.created_at = created_at

    @classmethod
    def open_or_create(cls, path: Path, passphrase: str, kdf: KdfParams = DEFAULT_KDF) -> FileKeystore:
        """Open the keystore, creating the box identity on first start. Never overwrites an existing file."""
        path = Path(path)
        if path.exists():
            return cls.open(path, passphrase)
        return cls.create(path, passphrase, kdf)

    @classmethod
    def create(cls, path: Path, passphrase: str, kdf: KdfParams = DEFAULT_KDF) -> FileKeystore:
        """A new box identity protected by a passphrase alone."""
        if not passphrase:
            raise KeystoreError("An empty keystore passphrase is not allowed. Fix: set MAMMO_KEYSTORE_PASSPHRASE.")
        return cls.create_protected(path, [PassphraseProtector(passphrase, kdf)])

    @classmethod
    def create_protected(cls, path: Path, protectors: Sequence[Protector]) -> FileKeystore:
        """A new box identity (box id, Ed25519 key, master key) whose KEK every given protector wraps."""
        store = cls(str(uuid.uuid4()), AESGCM.generate_key(bit_length=256), Ed25519PrivateKey.generate(), time.time())
        _write_new(Path(path), store._document(protectors))
        return store

    @classmethod
    def open(cls, path: Path, passphrase: str) -> FileKeystore:
        return cls.unlock(path, [PassphraseProtector(passphrase or (lambda: ""))])

    @classmethod
    def unlock(cls, path: Path, protectors: Sequence[Protector]) -> FileKeystore:
        """Try each protector, in the order given, on the file's records of its kind; the first that unwraps wins."""
        doc = _read(Path(path))
        if doc["format"] == FORMAT_V1:
            return cls._unlock_v1(Path(path), doc, protectors)
        aad = _aad(doc)
        records = [r for r in doc.get("protectors", []) if isinstance(r, dict)]
        reasons: list[str] = []
        for protector in protectors:
            for record in (r for r in records if r.get("kind") == protector.kind):
                try:
                    kek = protector.unwrap(record, aad)
                except KeystoreError as exc:
                    reasons.append(f"{protector.kind}: {exc}")
                    continue
                return cls._from_secret(Path(path), doc, kek, aad)
        if not reasons:
            offered, held = [p.kind for p in protectors], [str(r.get("kind")) for r in records]
            reasons.append(f"it is protected by {', '.join(held) or 'nothing'} and this start offered {', '.join(offered) or 'nothing'}")
        raise KeystoreError(f"Cannot unlock keystore {path}: {'; '.join(reasons)}. Fix: give the right passphrase. {RECOVERY} The file was not changed.")

    @classmethod
    def _from_secret(cls, path: Path, doc: Mapping[str, Any], kek: bytes, aad: bytes) -> FileKeystore:
        try:
            secret = json.loads(AESGCM(kek).decrypt(_unb64(doc["nonce"]), _unb64(doc["ciphertext"]), b"secret|" + aad))
        except InvalidTag:
            raise KeystoreError(f"Cannot unlock keystore {path}: its secret part fails authentication (the file was tampered with). "
                                "Fix: restore keystore.json from the box backup; the file was not changed.") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise KeystoreError(f"Keystore {path} is unreadable or damaged ({exc}). Fix: restore it from the box backup.") from None
        identity = Ed25519PrivateKey.from_private_bytes(_unb64(secret["identity"]))
        return cls(doc["box_id"], _unb64(secret["master_key"]), identity, doc["created_at"])

    @classmethod
    def _unlock_v1(cls, path: Path, doc: dict[str, Any], protectors: Sequence[Protector]) -> FileKeystore:
        """Version 1: the secret part sealed directly under Argon2id(passphrase)."""
        passphrase = next((p for p in protectors if isinstance(p, PassphraseProtector)), None)
        if passphrase is None:
            raise KeystoreError(f"Cannot unlock keystore {path}: it is protected by a passphrase only. Fix: {RECOVERY}")
        try:
            body = {k: v for k, v in doc.items() if k not in ("nonce", "ciphertext")}
            k = body["kdf"]
            params = KdfParams(k["time_cost"], k["memory_kib"], k["parallelism"])
            key = derive(passphrase.passphrase(), _unb64(k["salt"]), params)
            secret = json.loads(AESGCM(key).decrypt(_unb64(doc["nonce"]), _unb64(doc["ciphertext"]), json.dumps(body, sort_keys=True).encode()))
        except InvalidTag:
            raise KeystoreError(f"Cannot unlock keystore {path}: wrong passphrase, or the file was tampered with. Fix: {RECOVERY} The file was not changed.") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise KeystoreError(f"Keystore {path} is unreadable or damaged ({exc}). Fix: restore it from the box backup.") from None
        identity = Ed25519PrivateKey.from_private_bytes(_unb64(secret["identity"]))
        return cls(doc["box_id"], _unb64(secret["master_key"]), identity, doc["created_at"])

    def _document(self, protectors: Sequence[Protector]) -> bytes:
        """The whole file under a fresh KEK wrapped by every protector: a protector failing here stops before anything is written."""
        if not protectors:
            raise KeystoreError("A keystore needs at least one protector. Fix: give a passphrase (MAMMO_KEYSTORE_PASSPHRASE or at a terminal).")
        doc: dict[str, Any] = {"format": FORMAT, "box_id": self.box_id, "created_at": self.created_at,
                               "public_key": self.public_key_pem().decode("ascii")}
        aad, kek, nonce = _aad(doc), AESGCM.generate_key(bit_length=KEK_BYTES * 8), os.urandom(12)
        secret = json.dumps({
            "master_key": _b64(self._master),
            "identity": _b64(self._identity.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())),
        }).encode()
        doc["protectors"] = [p.wrap(kek, aad) for p in protectors]
        doc["nonce"], doc["ciphertext"] = _b64(nonce), _b64(AESGCM(kek).encrypt(nonce, secret, b"secret|" + aad))
        return json.dumps(doc, indent=2).encode()

    def reprotect(self, path: Path, protectors: Sequence[Protector]) -> None:
        """Replace the file's protectors (new passphrase, TPM added or removed): a fresh KEK, the same keys, atomically."""
        _replace(Path(path), self._document(protectors))

    def master_key(self) -> bytes:
        return self._master

    def secret(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose (``uid-remap``, ``date-shift`` ...), derived so purposes never share keys."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mammo:" + purpose.encode()).derive(self._master)

    def sign(self, data: bytes) -> bytes:
        return self._identity.sign(data)

    def public_key_pem(self) -> bytes:
        return self._identity.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, FORMAT_V1):
            fmt = doc.get("format") if isinstance(doc, dict) else None
            raise KeystoreError(f"{path} is not a MammoAI keystore (format {fmt!r}). Fix: point MAMMO_HOME at the box's data directory.")
        for key in (*_HEADER_FIELDS, "nonce", "ciphertext"):
            doc[key]  # noqa: B018  (present, or the file is damaged)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeystoreError(f"Keystore {path} is unreadable or damaged ({exc}). Fix: restore it from the box backup.") from exc
    return doc


def protector_records(path: Path) -> list[dict[str, Any]]:
    """The protector records of a keystore file, from its clear part (no passphrase needed); [] if absent or unreadable."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict):
        return []
    if doc.get("format") == FORMAT_V1:
        return [{"kind": "passphrase", "kdf": doc.get("kdf")}]
    return [r for r in doc.get("protectors", []) if isinstance(r, dict)]


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
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)  # fails if path exists: a keystore is never overwritten
    except FileExistsError:
        raise KeystoreError(f"Keystore {path} already exists; refusing to overwrite it.") from None
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)


def _replace(path: Path, data: bytes) -> None:
    """Atomically replace ``path``; the old version's blocks are overwritten first, so its old protectors are gone too."""
    tmp = _write_temp(path, data)
    _overwrite(path)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_temp(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _overwrite(path: Path) -> None:
    """Overwrite a file's bytes in place with random ones and fsync (the file stays)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.write(fd, os.urandom(max(size, 1)))
        os.fsync(fd)
    finally:
        os.close(fd)


def crypto_erase(path: Path) -> bool:
    """Destroy a key file: overwrite it with random bytes, fsync, unlink, fsync the folder.  True if there was one.

    For the keystore this is the crypto-erase of the whole box: every image and
    database secret was sealed under the master key, which existed nowhere else.
    On flash storage the old blocks may survive the overwrite inside the drive;
    they still hold only wrapped keys, useless without the passphrase or the TPM.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_symlink():
        _overwrite(path)
    path.unlink()
    fsync_dir(path.parent)
    return True


def peek_box_id(path: Path) -> str | None:
    """The box id from the keystore's clear header, without the passphrase (for status screens); None if absent or unreadable."""
    try:
        box_id = json.loads(Path(path).read_text(encoding="utf-8")).get("box_id")
    except (OSError, ValueError, AttributeError):
        return None
    return box_id if isinstance(box_id, str) else None
