"""Packed CKKS vectors for model updates: encrypt, frame, check, add with weights, decrypt.

A flat float32 update of ``n`` values becomes ``ceil(n / slots)`` TenSEAL
``ckks_vector``s (slots = N/2: 4096 at N=8192), never a ``ckks_tensor``, which
spends a ciphertext per value.  The ~20.3 k-value trainable part is 5
ciphertexts, about 1.2 MB; CKKS ciphertexts do not compress and their size
depends only on the count of values (STACK-NOTES, TenSEAL).

Framing (``MCKV``, version 1), so that a frame can be checked before anything
is deserialised and a later format is refused with a clear message::

    b"MCKV" | u16 version | u32 values | u32 slots | u16 chunks | chunks x u32 length | chunk bytes ...

Weighted sums run with the coordinator's *public* context: each ciphertext is
multiplied by a plaintext scalar and added.  The federation's chain
[60, 40, 60] has one 40-bit prime to rescale by, so exactly one plaintext
multiply fits (a second fails with "scale out of bounds").  The coordinator
therefore multiplies by the *normalised* weight w_i / W: the decrypted sum is
already the weighted mean, and its magnitude stays that of one delta.  With
raw weights (example counts in the thousands) the sum could pass the ~2^19
headroom the last 60-bit prime leaves above the 2^40 scale and wrap around.
:func:`weighted_sum` streams: it holds one update and the running sum, never
the whole buffer (ten 1 M-value ciphertexts are 3.7 GB in memory).

Everything here is pure over bytes and contexts; tenseal is imported lazily so
``mammo`` commands that do not touch HE do not pay for it.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.errors import SyncError, UpdateRejected

if TYPE_CHECKING:
    import tenseal as ts

MAGIC = b"MCKV"
VERSION = 1
_HEAD = struct.Struct(">4sHIIH")  # magic, version, values, slots, chunks
_LEN = struct.Struct(">I")
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # one N=32768 ciphertext is ~ 4 MB; anything near this is not ours


class HeError(UpdateRejected):
    """An encrypted update cannot be read, checked or added: it is refused for good (re-sending the same bytes cannot help)."""


@dataclass(frozen=True)
class FrameInfo:
    """What a frame's header says, read without any context (cheap checks before deserialising)."""

    version: int
    values: int
    slots: int
    chunk_lengths: tuple[int, ...]

    @property
    def chunks(self) -> int:
        return len(self.chunk_lengths)


def sha256(data: bytes) -> str:
    """The update's identity at the box and the coordinator: SHA-256 of the framed ciphertext bytes."""
    return hashlib.sha256(data).hexdigest()


def slots_of(ctx: ts.Context) -> int:
    """Values one ciphertext packs: N/2."""
    return int(ctx.seal_context().data.first_context_data().parms().poly_modulus_degree()) // 2


def plain_multiplies(ctx: ts.Context) -> int:
    """How many plaintext multiplies (each followed by a rescale) a fresh ciphertext can take: [60, 40, 60] gives 1."""
    return int(ctx.seal_context().data.first_context_data().chain_index())


def chunk_count(values: int, slots: int) -> int:
    return max(1, math.ceil(values / slots))


def encrypt(ctx: ts.Context, values: np.ndarray) -> bytes:
    """Encrypt a flat vector into one framed byte string (a context with a public key suffices to encrypt)."""
    import tenseal as ts

    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise SyncError("An update must be a non-empty vector of finite numbers; this one is empty or holds NaN/inf. Fix: check the training round that made it.")
    slots = slots_of(ctx)
    chunks = [ts.ckks_vector(ctx, flat[i : i + slots].tolist()).serialize() for i in range(0, flat.size, slots)]
    return frame(flat.size, slots, chunks)


def frame(values: int, slots: int, chunks: list[bytes]) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, values, slots, len(chunks))
    return b"".join([head, *(_LEN.pack(len(c)) for c in chunks), *chunks])


def frame_info(data: bytes) -> FrameInfo:
    """Parse and check a frame's header and lengths (no TenSEAL): HeError when it is not a whole MCKV v1 frame."""
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise HeError("Not an encrypted update (no MCKV header). Fix: the sender must use sync.he.encrypt; drop this payload.")
    magic, version, values, slots, chunks = _HEAD.unpack_from(data)
    if version != VERSION:
        raise HeError(f"Encrypted update format v{version} is not understood by this software (v{VERSION}). Fix: update the coordinator and the boxes to the same release.")
    if slots == 0 or values == 0 or chunks != chunk_count(values, slots):
        raise HeError(f"Encrypted update header is inconsistent ({values} values, {slots} slots, {chunks} chunks); it was damaged or forged. Drop it.")
    end = _HEAD.size + chunks * _LEN.size
    if len(data) < end:
        raise HeError("Encrypted update is truncated inside its header. Fix: send it again.")
    lengths = tuple(_LEN.unpack_from(data, _HEAD.size + i * _LEN.size)[0] for i in range(chunks))
    if any(n == 0 or n > MAX_CHUNK_BYTES for n in lengths) or end + sum(lengths) != len(data):
        raise HeError(f"Encrypted update has {len(data)} bytes where its header announces {end + sum(lengths)}: truncated or padded. Fix: send it again.")
    return FrameInfo(version, values, slots, lengths)


def _chunks(data: bytes, info: FrameInfo) -> list[bytes]:
    out, at = [], _HEAD.size + info.chunks * _LEN.size
    for n in info.chunk_lengths:
        out.append(data[at : at + n])
        at += n
    return out


def load(ctx: ts.Context, data: bytes, *, expect_values: int | None = None, fresh: bool = True) -> list[ts.CKKSVector]:
    """Deserialise a frame against ``ctx`` and check every ciphertext is what a box's ``encrypt`` makes.

    ``fresh`` (the default, for updates from boxes) demands the top level of the chain at the
    context's scale, so the one plaintext multiply of :func:`weighted_sum` still fits; an
    aggregate (already multiplied and rescaled) is loaded with ``fresh=False``.
    """
    import tenseal as ts

    info = frame_info(data)
    if expect_values is not None and info.values != expect_values:
        raise HeError(f"Encrypted update holds {info.values} values where {expect_values} were expected (another trainable part). Drop it; the box must train the current spec.")
    if info.slots != slots_of(ctx):
        raise HeError(f"Encrypted update was packed for {info.slots} slots, this context has {slots_of(ctx)}: another HE parameter set. Fix: boxes and coordinator need the same HE version.")
    top = ctx.seal_context().data.first_context_data()
    vectors = []
    for i, raw in enumerate(_chunks(data, info)):
        try:
            vec = ts.ckks_vector_from(ctx, raw)
        except Exception as exc:  # SEAL raises bare ValueError/RuntimeError on bytes it cannot load
            raise HeError(f"Ciphertext {i} of an encrypted update does not load under this HE context ({exc}); it is damaged or from another key. Drop it.") from None
        want = min(info.slots, info.values - i * info.slots)
        ct = vec.data.ciphertext()
        if vec.size() != want or len(ct) != 1 or ct[0].size() != 2:
            raise HeError(f"Ciphertext {i} packs {vec.size()} values in {len(ct)}x{ct[0].size() if ct else 0} polynomials, expected {want} in 1x2. Drop it.")
        if fresh and (ct[0].parms_id() != top.parms_id() or ct[0].scale != ctx.global_scale):
            raise HeError(f"Ciphertext {i} is not freshly encrypted (wrong level or scale), so it cannot be weighted. Drop it.")
        vectors.append(vec)
    return vectors


def serialize(vectors: list[ts.CKKSVector], values: int, slots: int) -> bytes:
    return frame(values, slots, [v.serialize() for v in vectors])


def weighted_sum(ctx: ts.Context, items: Iterable[tuple[float, bytes]], *, expect_values: int | None = None) -> bytes:
    """Sum_i w_i * update_i on ciphertexts, one update in memory at a time; returns the aggregate frame.

    ``items`` may be a generator reading ciphertexts from disk.  Works with the public
    context (no secret key).  Pass normalised weights (w_i / W) so the result is the
    mean; see the module docstring for why.
    """
    acc: list[Any] | None = None
    values = slots = 0
    for weight, data in items:
        if not math.isfinite(weight) or weight < 0:
            raise SyncError(f"Aggregation weight {weight} is not a finite number >= 0. Fix: check the strategy's weights.")
        vectors = load(ctx, data, expect_values=expect_values)
        if acc is None:
            info = frame_info(data)
            values, slots, expect_values = info.values, info.slots, info.values
            acc = [v * float(weight) for v in vectors]
        else:
            for a, v in zip(acc, vectors, strict=True):
                a.add_(v * float(weight))
        del vectors
    if acc is None:
        raise SyncError("Nothing to aggregate: no updates were given.")
    return serialize(acc, values, slots)


def decrypt(ctx: ts.Context, data: bytes, *, fresh: bool = False) -> np.ndarray:
    """Decrypt a frame (an update or an aggregate) with the clinics' secret context; float32 values."""
    if not ctx.is_private():
        raise SyncError("This HE context has no secret key, so it cannot decrypt (the coordinator never can, by design). Fix: decrypt on a clinic box.")
    out = []
    for vec in load(ctx, data, fresh=fresh):
        out.append(np.asarray(vec.decrypt(), dtype=np.float64))
    return np.concatenate(out).astype(np.float32)
