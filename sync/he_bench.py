"""``mammo bench he``: what CKKS costs an update, beside the plaintext peer, for the shipped trainable part and for 1 M values.

Each phase is timed on its own: encrypt (values into packed ``ckks_vector``s),
serialise (the framed bytes a box sends), aggregate (the coordinator's
staleness/example-weighted sum of 10 and of 100 updates on the public
context) and decrypt (a clinic opening the aggregate).  The peer is the same
work in plaintext: float32 bytes, a numpy weighted sum.  ``*_update_bytes``
are the bytes one update puts on the wire.

Memory stays flat for 100 x 1 M values (100 ciphertext frames would be 5.8 GB,
and ten deserialised ones took 3.7 GB): a few distinct encrypted updates are
made once and the aggregation streams them in turn, one deserialised update
and the running sum in memory (``sync.he.weighted_sum``); the aggregation's
cost does not depend on which values the ciphertexts hold.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from sync import he
from sync.update import TrainableSpec

#: The shipped trainable part (release 0.1.0: fuse block + head), used when models.trainable cannot be loaded.
FALLBACK_SPEC = TrainableSpec(
    ("fuse.1.body.0.0.weight", "fuse.1.body.1.0.weight", "fuse.1.body.2.0.weight", "head.weight", "head.bias"),
    ((192, 48, 1, 1), (192, 1, 3, 3), (48, 192, 1, 1), (2, 48, 1, 1), (2,)),
)
PEER = "plaintext: float32 bytes and a numpy weighted sum of the same updates"
DISTINCT = 3  # distinct encrypted updates cycled through the aggregation


def trainable_spec() -> tuple[TrainableSpec, str]:
    """The shipped trainable part counted from release 0.1.0 via models.trainable, or the five known shapes."""
    try:
        import torch

        from models.network import model_from_state_dict
        from models.release_files import load_release
        from models.trainable import spec_of

        torch.set_num_threads(1)
        release = load_release(None)
        part = spec_of(model_from_state_dict(torch.load(release.file("model_fp32.pt"), map_location="cpu")))
        return TrainableSpec(part.names, part.shapes), f"models.trainable.spec_of(release {release.version})"
    except Exception as exc:  # any failure to load the model: the known shapes are the same part
        return FALLBACK_SPEC, f"the five shipped shapes (models.trainable unavailable: {type(exc).__name__})"


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stream(shares: list[float], frames: list[bytes]) -> Iterator[tuple[float, bytes]]:
    """One (share, frame) at a time, cycling the few distinct frames: nothing but the frames is held."""
    return ((share, frames[i % len(frames)]) for i, share in enumerate(shares))


def measure(values: int, counts: tuple[int, ...], ctx_secret: Any, ctx_public: Any, *, repeat: int = 3, seed: int = 0) -> dict[str, Any]:
    """Figures for updates of ``values`` floats: bytes, encrypt, serialise, aggregate for each count, decrypt, error."""
    import tenseal as ts

    rng = np.random.default_rng(seed)
    deltas = [rng.normal(0, 1e-2, values).astype(np.float32) for _ in range(DISTINCT)]
    slots = he.slots_of(ctx_secret)
    flat = deltas[0].astype(np.float64)

    def encrypt() -> list[Any]:
        return [ts.ckks_vector(ctx_secret, flat[i : i + slots].tolist()) for i in range(0, values, slots)]

    reps = 1 if values > 200_000 else repeat
    encrypt_s, encrypted = _timed(encrypt, reps)
    serialize_s, frame = _timed(lambda: he.serialize(encrypted, values, slots), reps)
    encrypted = None
    frames = [frame] + [he.encrypt(ctx_secret, d) for d in deltas[1:]]
    plain_bytes_s, plain = _timed(lambda: deltas[0].tobytes(), reps)
    out: dict[str, Any] = {
        "values": values,
        "ciphertexts_per_update": he.frame_info(frame).chunks,
        "plaintext_update_bytes": len(plain),
        "ckks_update_bytes": len(frame),
        "ckks_over_plaintext_update_bytes": round(len(frame) / len(plain), 2),
        "ckks_encrypt_s": round(encrypt_s, 4),
        "ckks_serialize_s": round(serialize_s, 4),
        "plaintext_serialize_s": round(plain_bytes_s, 6),
    }
    weights_rng = np.random.default_rng(seed + 1)
    for n in counts:
        w = weights_rng.uniform(5, 50, n)
        shares = (w / w.sum()).tolist()

        gc.collect()
        t = time.perf_counter()
        aggregate = he.weighted_sum(ctx_public, _stream(shares, frames), expect_values=values)
        ckks_s = time.perf_counter() - t
        t = time.perf_counter()
        plain_sum = np.zeros(values, np.float64)
        for i in range(n):  # the peer streams too: bytes in, weighted add
            plain_sum += shares[i] * np.frombuffer(deltas[i % DISTINCT].tobytes(), np.float32)
        plain_s = time.perf_counter() - t
        t = time.perf_counter()
        mean = he.decrypt(ctx_secret, aggregate)
        decrypt_s = time.perf_counter() - t
        out |= {
            f"ckks_aggregate_{n}_s": round(ckks_s, 4),
            f"plaintext_aggregate_{n}_s": round(plain_s, 6),
            f"ckks_over_plaintext_aggregate_{n}": round(ckks_s / max(plain_s, 1e-9), 1),
            f"ckks_aggregate_{n}_bytes": len(aggregate),
            f"max_abs_error_{n}": float(np.abs(mean - plain_sum).max()),
        }
        out.setdefault("ckks_decrypt_s", round(decrypt_s, 4))  # one aggregate, whatever the count
        del aggregate
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def run(*, counts: tuple[int, ...] = (10, 100), large: int = 1_000_000, repeat: int = 3) -> dict[str, Any]:
    """The whole benchmark: the trainable part and ``large`` values (0 skips it), plaintext vs CKKS side by side."""
    from provisioning import he as he_material

    params = he_material.HeParams()
    material = he_material.make_material(params)
    secret = he_material.load_context(material.secret, need_secret=True)
    public = he_material.load_context(material.public, need_secret=False)
    spec, source = trainable_spec()
    result: dict[str, Any] = {
        "peer": PEER,
        "he_params": params.as_dict(),
        "slots_per_ciphertext": he.slots_of(secret),
        "public_context_bytes": len(material.public),
        "trainable_source": source,
        "update_bytes_budget": 2_000_000,
        "trainable": measure(spec.size, counts, secret, public, repeat=repeat),
    }
    result["trainable_ckks_update_bytes"] = result["trainable"]["ckks_update_bytes"]
    result["trainable_plaintext_update_bytes"] = result["trainable"]["plaintext_update_bytes"]
    result["trainable_within_budget"] = result["trainable_ckks_update_bytes"] <= result["update_bytes_budget"]
    if large:
        result["1m"] = measure(large, counts, secret, public, repeat=repeat, seed=7)
        result["1m_ckks_update_bytes"] = result["1m"]["ckks_update_bytes"]
        result["1m_plaintext_update_bytes"] = result["1m"]["plaintext_update_bytes"]
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return result
