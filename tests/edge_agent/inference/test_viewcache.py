"""Views prepared while their study arrives: each prepared once, waited for rather than decoded twice, bounded."""

from __future__ import annotations

import threading

import numpy as np

from edge_agent.inference.viewcache import ViewCache
from edge_agent.inference.worker import result_of
from edge_agent.worker import Worker
from models.preprocess import preprocess
from models.synthetic import generate

PREPARED = preprocess(generate(1, size=256).image)


def test_a_view_is_prepared_once_and_then_found_ready():
    calls = []
    cache = ViewCache()
    first = cache.get("a" * 64, 128, lambda d, s: calls.append(d) or PREPARED)
    again = cache.get("a" * 64, 128, lambda d, s: calls.append(d) or PREPARED)
    assert first == (PREPARED, False) and again == (PREPARED, True) and len(calls) == 1


def test_a_job_waits_for_the_view_the_poller_is_preparing_instead_of_decoding_it_again():
    started, release, calls = threading.Event(), threading.Event(), []

    def slow(digest, size):
        calls.append(digest)
        started.set()
        release.wait(10)
        return PREPARED

    cache = ViewCache(parallel=2)
    poller = threading.Thread(target=cache.get, args=("b" * 64, 128, slow))
    poller.start()
    started.wait(10)
    got = []
    job = threading.Thread(target=lambda: got.append(cache.get("b" * 64, 128, slow)))
    job.start()
    release.set()
    poller.join(10)
    job.join(10)
    assert got == [(PREPARED, True)] and len(calls) == 1


def test_errors_are_not_kept_and_the_cache_is_bounded():
    cache = ViewCache(capacity=3)
    err = ValueError("cannot decode")
    assert cache.get("c" * 64, 128, lambda d, s: err) == (err, False)
    assert cache.get("c" * 64, 128, lambda d, s: PREPARED) == (PREPARED, False)  # tried again, not remembered as broken
    for i in range(5):
        cache.get(f"{i:064d}", 128, lambda d, s: PREPARED)
    assert len(cache._ready) == 3


def test_views_stored_before_the_job_are_prepared_ahead_and_give_the_same_result(screening):
    handler = screening.handler
    assert handler.prepare_ahead() == 0  # notes where the table ends; older views are left to their jobs
    results = screening.push_study(seed=21)
    assert handler.prepare_ahead() == 4
    assert Worker(screening.box.queue, "infer", handler, name="test").run(drain=True).done == 1
    assert handler.timings[-1].views_ready == 4
    assert handler.timings[-1].seconds["decode"] == 0.0  # nothing was decoded in the job's time
    ahead = result_of(screening.box.db, results[0].study_uid)
    # the same study through a handler that prepares everything in the job
    handler.views = ViewCache()
    screening.box.db.execute("DELETE FROM infer_results")
    screening.box.queue.enqueue("infer", {"study_uid": results[0].study_uid}, key="again")
    assert Worker(screening.box.queue, "infer", handler, name="test").run(drain=True).done == 1
    assert handler.timings[-1].views_ready == 0
    fresh = result_of(screening.box.db, results[0].study_uid)
    assert np.allclose([v["p_abnormal"] for v in ahead["views"]], [v["p_abnormal"] for v in fresh["views"]])
    assert [v["heatmap_digest"] for v in ahead["views"]] == [v["heatmap_digest"] for v in fresh["views"]]
