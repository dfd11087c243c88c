"""Key protectors: what stands between a stolen disk and the box's keys.

The keystore's secret part (master key + identity key) is encrypted under a
random 256-bit key-encryption key (KEK).  The KEK itself is never stored in
the clear: each *protector* keeps its own wrapped copy in the keystore file,
and any one of them can unwrap it::

    keystore.json
     ├── header (box id, public key)          clear, authenticated
     ├── secret part  ── AES-256-GCM under KEK
     └── protectors
          ├── passphrase  KEK wrapped under Argon2id(passphrase)   (an operator, or the demo file)
          └── tpm2        KEK sealed to this machine's TPM          (unattended, this box only)

So a clinic box can start unattended with its TPM, and still be recovered
with the passphrase when the mainboard (and its TPM) is replaced; changing a
passphrase or adding a TPM rewraps 32 bytes, never the data.  A protector
that cannot work here (no TPM, no passphrase at hand) raises KeystoreError
saying why, and the keystore tries the next one.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_agent.errors import KeystoreError

KEK_BYTES = 32


class Protector(Protocol):
    """Wraps and unwraps the keystore's KEK; ``kind`` names the record it reads in the keystore file."""

    kind: str

    def wrap(self, kek: bytes, aad: bytes) -> dict[str, Any]:
        """A JSON-able record from which :meth:`unwrap` (here or on the same TPM) gets ``kek`` back."""
        ...

    def unwrap(self, record: Mapping[str, Any], aad: bytes) -> bytes:
        """The KEK, or KeystoreError saying why not (wrong passphrase, another TPM, no TPM here)."""
        ...


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost; the defaults take ~0.1-0.3 s on a small box, paid once at start-up."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 1


DEFAULT_KDF = KdfParams()


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"))


def derive(passphrase: str, salt: bytes, p: KdfParams) -> bytes:
    return hash_secret_raw(passphrase.encode("utf-8"), salt, p.time_cost, p.memory_kib, p.parallelism, 32, Type.ID)


class PassphraseProtector:
    """The KEK wrapped (AES-256-GCM) under a key Argon2id derives from a passphrase.

    The passphrase may be given as a function, called only when this
    protector is actually tried: a box whose TPM unseals the KEK never
    prompts its technician.
    """

    kind = "passphrase"

    def __init__(self, passphrase: str | Callable[[], str], kdf: KdfParams = KdfParams()) -> None:
        self._passphrase = passphrase
        self.kdf = kdf

    def passphrase(self) -> str:
        value = self._passphrase() if callable(self._passphrase) else self._passphrase
        if not value:
            raise KeystoreError("An empty keystore passphrase is not allowed. Fix: set MAMMO_KEYSTORE_PASSPHRASE, or run at a terminal to be asked for it.")
        return value

    def wrap(self, kek: bytes, aad: bytes) -> dict[str, Any]:
        salt, nonce = os.urandom(16), os.urandom(12)
        k = self.kdf
        wrapped = AESGCM(derive(self.passphrase(), salt, k)).encrypt(nonce, kek, b"passphrase|" + aad)
        return {"kind": self.kind, "kdf": {"name": "argon2id", "salt": b64(salt), "time_cost": k.time_cost, "memory_kib": k.memory_kib,
                                           "parallelism": k.parallelism}, "nonce": b64(nonce), "wrapped": b64(wrapped)}

    def unwrap(self, record: Mapping[str, Any], aad: bytes) -> bytes:
        try:
            k = record["kdf"]
            params = KdfParams(int(k["time_cost"]), int(k["memory_kib"]), int(k["parallelism"]))
            salt, nonce, wrapped = unb64(k["salt"]), unb64(record["nonce"]), unb64(record["wrapped"])
        except (KeyError, TypeError, ValueError) as exc:
            raise KeystoreError(f"the passphrase record is damaged ({exc})") from None
        try:
            return AESGCM(derive(self.passphrase(), salt, params)).decrypt(nonce, wrapped, b"passphrase|" + aad)
        except InvalidTag:
            raise KeystoreError("wrong passphrase, or the file was tampered with") from None


def describe(record: Mapping[str, Any]) -> str:
    """One line for status screens, from a protector record (no secret in it)."""
    kind = str(record.get("kind"))
    if kind == "passphrase" and isinstance(record.get("kdf"), dict):
        k = record["kdf"]
        return f"passphrase (argon2id t={k.get('time_cost')} m={k.get('memory_kib')} KiB p={k.get('parallelism')})"
    if kind == "tpm2":
        pcrs = record.get("pcrs") or ""
        return "TPM 2.0" + (f", bound to PCRs {pcrs}" if pcrs else "")
    return kind
