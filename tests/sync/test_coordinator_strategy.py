"""FedBuff-style rules as pure functions, and the weighted mean they make on real ciphertexts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.errors import SyncError
from provisioning import he as he_material
from sync import he
from sync.coordinator.strategy import Buffered, StrategyConfig, aggregate, dedupe, plan_round, staleness_factor, trigger

SPEC = "spec-a"
CFG = StrategyConfig(buffer_k=3, deadline_s=100.0, min_updates=2, max_staleness=2, staleness_exponent=0.5)


def upd(sha: str, *, box: str = "b1", uid: str | None = None, base: int = 5, n: int = 10, at: float = 0.0, spec: str = SPEC, eps: float = 0.5) -> Buffered:
    return Buffered(sha, box, uid or sha, base, n, eps, at, spec)


def test_staleness_weight_is_one_over_sqrt_one_plus_s():
    assert staleness_factor(0, 0.5) == 1.0
    assert staleness_factor(3, 0.5) == pytest.approx(0.5)
    assert staleness_factor(3, 0.0) == 1.0


def test_k_updates_trigger_a_round_and_weights_combine_examples_and_staleness():
    plan = plan_round([upd("a", n=10, base=5), upd("b", n=30, base=4, at=1), upd("c", n=20, base=3, at=2)],
                      current_generation=5, spec_digest=SPEC, now=3.0, config=CFG)
    assert plan is not None and plan.trigger == "buffer_k"
    weights = {c.sha256: c.weight for c in plan.contributions}
    assert weights == pytest.approx({"a": 10.0, "b": 30 / math.sqrt(2), "c": 20 / math.sqrt(3)})
    assert sum(c.share for c in plan.contributions) == pytest.approx(1.0)
    assert plan.total_weight == pytest.approx(sum(weights.values()))


def test_fewer_than_k_wait_until_the_deadline_then_aggregate():
    buf = [upd("a", at=0.0), upd("b", at=50.0)]
    assert plan_round(buf, current_generation=5, spec_digest=SPEC, now=99.0, config=CFG) is None
    plan = plan_round(buf, current_generation=5, spec_digest=SPEC, now=100.0, config=CFG)
    assert plan is not None and plan.trigger == "deadline" and len(plan.contributions) == 2
    assert trigger([upd("a")], 1e9, CFG) is None  # below min_updates even long after the deadline


def test_too_stale_foreign_spec_and_future_base_are_rejected_with_reasons():
    buf = [upd("old", base=1), upd("spec", spec="spec-b"), upd("future", base=9), upd("ok", base=5)]
    plan = plan_round(buf, current_generation=5, spec_digest=SPEC, now=0.0, config=CFG)
    assert plan is not None and plan.contributions == ()  # one admissible update, no round yet, but the rejections are reported
    reasons = dict(plan.rejected)
    assert set(reasons) == {"old", "spec", "future"}
    assert "staleness 4 > bound 2" in reasons["old"] and "trainable part" in reasons["spec"] and "newer" in reasons["future"]


def test_an_update_under_another_he_key_is_never_added():
    buf = [Buffered("new", "b1", "u1", 5, 10, 0.5, 0.0, SPEC, 2), Buffered("old", "b2", "u2", 5, 10, 0.5, 0.0, SPEC, 1)]
    plan = plan_round(buf, current_generation=5, spec_digest=SPEC, now=1e9, config=CFG, he_version=2)
    assert plan is not None and plan.contributions == ()  # one left: below min_updates
    assert [sha for sha, _ in plan.rejected] == ["old"] and "HE key version 1" in plan.rejected[0][1]


def test_duplicates_by_hash_or_by_box_and_update_id_count_once():
    kept, dupes = dedupe([upd("a", at=0), upd("a", at=1), upd("x", box="b1", uid="u1", at=2), upd("y", box="b1", uid="u1", at=3), upd("z", box="b2", uid="u1", at=4)])
    assert [u.sha256 for u in kept] == ["a", "x", "z"] and dupes == ["a", "y"]


def test_a_round_takes_at_most_k_oldest_first():
    buf = [upd(f"u{i}", at=float(i)) for i in range(5)]
    plan = plan_round(buf, current_generation=5, spec_digest=SPEC, now=10.0, config=CFG)
    assert plan is not None and [c.sha256 for c in plan.contributions] == ["u0", "u1", "u2"]


def test_bad_configs_are_refused():
    with pytest.raises(SyncError):
        StrategyConfig(buffer_k=2, min_updates=3)
    with pytest.raises(SyncError):
        StrategyConfig(deadline_s=0)


def test_the_encrypted_weighted_mean_decrypts_to_the_plaintext_one():
    material = he_material.make_material()
    secret = he_material.load_context(material.secret, need_secret=True)
    public = he_material.load_context(material.public, need_secret=False)
    rng = np.random.default_rng(3)
    deltas = {s: rng.normal(0, 1e-2, 9000).astype(np.float32) for s in ("a", "b", "c")}
    frames = {s: he.encrypt(secret, d) for s, d in deltas.items()}
    plan = plan_round([upd("a", n=10, base=5), upd("b", n=30, base=4, at=1), upd("c", n=20, base=3, at=2)],
                      current_generation=5, spec_digest=SPEC, now=3.0, config=CFG)
    assert plan is not None
    reads: list[str] = []

    def read(sha: str) -> bytes:
        reads.append(sha)
        return frames[sha]

    mean = he.decrypt(secret, aggregate(plan, public, read, expect_values=9000))
    expected = sum(c.weight * deltas[c.sha256].astype(np.float64) for c in plan.contributions) / plan.total_weight
    assert np.abs(mean - expected).max() < 1e-6
    assert reads == ["a", "b", "c"]  # one at a time, in order
