"""Envelope encryption for everything the box keeps at rest.

Each object gets a fresh 256-bit data key; the data key is wrapped by the
box master key (AES-256-GCM both times).  Re-keying the box means
re-wrapping small data keys, not re-encrypting gigabytes of images, and a
leaked data key exposes one object only.

Blob layout (all lengths fixed)::

    b"MEV1" | wrap_nonce(12) | wrapped_key(32+16) | data_nonce(12) | ciphertext+tag
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_agent.errors import IntegrityError

MAGIC = b"MEV1"
_NONCE = 12
_WRAPPED = 48
_HEADER = len(MAGIC) + _NONCE + _WRAPPED + _NONCE


def seal(master_key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` under a fresh data key wrapped by ``master_key``; ``aad`` is bound, not stored."""
    data_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce, data_nonce = os.urandom(_NONCE), os.urandom(_NONCE)
    wrapped = AESGCM(master_key).encrypt(wrap_nonce, data_key, MAGIC + aad)
    body = AESGCM(data_key).encrypt(data_nonce, plaintext, aad)
    return MAGIC + wrap_nonce + wrapped + data_nonce + body


def open_sealed(master_key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Decrypt a blob made by :func:`seal`; raises IntegrityError if anything was altered."""
    if len(blob) < _HEADER + 16 or blob[:4] != MAGIC:
        raise IntegrityError("Not a sealed object (bad header or truncated). The file is damaged; restore it from backup.")
    i = len(MAGIC)
    wrap_nonce, wrapped = blob[i : i + _NONCE], blob[i + _NONCE : i + _NONCE + _WRAPPED]
    data_nonce = blob[i + _NONCE + _WRAPPED : _HEADER]
    try:
        data_key = AESGCM(master_key).decrypt(wrap_nonce, wrapped, MAGIC + aad)
        return AESGCM(data_key).decrypt(data_nonce, blob[_HEADER:], aad)
    except InvalidTag:
        raise IntegrityError(
            "Sealed object failed authentication: it was modified, corrupted, or sealed by another box's key."
        ) from None
