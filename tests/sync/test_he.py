"""Packed CKKS updates with real TenSEAL ciphertexts: size, error, framing checks, sums on the public context."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from edge_agent.errors import SyncError, UpdateRejected
from provisioning import he as he_material
from sync import he

TRAINABLE = 20_450  # about the shipped fuse block + head (models/release/0.1.0)


@pytest.fixture(scope="module")
def material() -> he_material.HeMaterial:
    return he_material.make_material()


@pytest.fixture(scope="module")
def secret(material: he_material.HeMaterial) -> ts.Context:
    return he_material.load_context(material.secret, need_secret=True)


@pytest.fixture(scope="module")
def public(material: he_material.HeMaterial) -> ts.Context:
    return he_material.load_context(material.public, need_secret=False)


def deltas(n: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1e-2, n).astype(np.float32) for _ in range(count)]


def test_trainable_part_packs_into_five_ciphertexts_under_2_mb_and_round_trips(secret: ts.Context):
    x = deltas(TRAINABLE, 1)[0]
    data = he.encrypt(secret, x)
    info = he.frame_info(data)
    assert (info.values, info.slots, info.chunks) == (TRAINABLE, 4096, 5)
    assert 1_000_000 < len(data) < 2_000_000  # the budget per encrypted update
    assert np.abs(he.decrypt(secret, data, fresh=True) - x).max() < 1e-6


def test_public_context_weighted_mean_matches_numpy_and_cannot_decrypt(secret: ts.Context, public: ts.Context):
    xs = deltas(TRAINABLE, 3, seed=1)
    frames = [he.encrypt(secret, x) for x in xs]  # boxes encrypt with the clinics' context
    weights = np.array([120.0, 30.0, 7.5])
    norm = weights / weights.sum()
    aggregate = he.weighted_sum(public, zip(norm.tolist(), frames, strict=True), expect_values=TRAINABLE)
    assert len(aggregate) < len(frames[0])  # rescaled once: one prime fewer
    with pytest.raises(SyncError, match="no secret key"):
        he.decrypt(public, aggregate)
    with pytest.raises(ValueError):  # and TenSEAL itself refuses: the key is simply not there
        he.load(public, aggregate, fresh=False)[0].decrypt()
    expected = sum(w * x.astype(np.float64) for w, x in zip(norm, xs, strict=True))
    assert np.abs(he.decrypt(secret, aggregate) - expected).max() < 1e-6


def test_the_chain_allows_exactly_one_plain_multiply(secret: ts.Context, public: ts.Context):
    assert he.plain_multiplies(public) == 1
    vec = he.load(public, he.encrypt(secret, np.ones(10, np.float32)))[0]
    with pytest.raises(ValueError, match="scale out of bounds"):
        (vec * 0.5) * 0.5


def test_an_aggregate_or_rescaled_ciphertext_is_refused_as_an_update(secret: ts.Context, public: ts.Context):
    aggregate = he.weighted_sum(public, [(1.0, he.encrypt(secret, np.ones(100, np.float32)))])
    with pytest.raises(UpdateRejected, match="not freshly encrypted"):
        he.weighted_sum(public, [(1.0, aggregate)])


@pytest.mark.parametrize("damage", ["truncate", "pad", "magic", "version", "chunks", "body"])
def test_damaged_frames_are_refused_before_or_while_loading(secret: ts.Context, public: ts.Context, damage: str):
    data = bytearray(he.encrypt(secret, np.ones(5000, np.float32)))
    if damage == "truncate":
        data = data[:-10]
    elif damage == "pad":
        data += b"\0"
    elif damage == "magic":
        data[0:4] = b"XXXX"
    elif damage == "version":
        data[5] = 9
    elif damage == "chunks":
        data[15] = 3  # the chunk count (u16 at 14..15)
    else:
        data[200:400] = bytes(200)
    with pytest.raises(UpdateRejected):
        he.load(public, bytes(data))


def test_an_update_of_another_size_is_refused(secret: ts.Context, public: ts.Context):
    with pytest.raises(UpdateRejected, match="values where 20450"):
        he.load(public, he.encrypt(secret, np.ones(100, np.float32)), expect_values=TRAINABLE)


def test_non_finite_values_are_never_encrypted(secret: ts.Context):
    bad = np.ones(10, np.float32)
    bad[3] = np.nan
    with pytest.raises(SyncError, match="NaN"):
        he.encrypt(secret, bad)


def test_bench_he_prints_update_bytes_side_by_side_with_plaintext(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "edge_agent.cli", "bench", "he", "--json", "--large", "0", "--counts", "2", "--repeat", "1"],
                         capture_output=True, text=True, cwd=repo, timeout=300, env={**os.environ, "MAMMO_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    part = result["trainable"]
    assert part["values"] == 20_258 and part["ciphertexts_per_update"] == 5
    assert part["plaintext_update_bytes"] == 4 * 20_258
    assert part["ckks_update_bytes"] == result["trainable_ckks_update_bytes"] <= result["update_bytes_budget"]
    assert part["ckks_over_plaintext_update_bytes"] > 10  # CKKS costs about 14x the plaintext, measured, not assumed
    assert part["max_abs_error_2"] < 1e-6 and "plaintext" in result["peer"] and "1m" not in result
