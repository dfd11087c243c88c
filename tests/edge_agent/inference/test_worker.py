"""A study in through the real ingest service, out through the real inference worker and model."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from edge_agent.inference.worker import result_of
from edge_agent.ingest import mg
from edge_agent.worker import Worker
from models.release_files import triage
from models.runtime import Screener


def drain(screening):
    return Worker(screening.box.queue, "infer", screening.handler, name="test").run(drain=True)


def test_complete_study_gets_a_stored_triage_heatmaps_and_a_report_job(screening):
    results = screening.push_study(seed=1)
    assert results[-1].infer_job_id is not None
    counters = drain(screening)
    assert counters.done == 1
    study_uid = results[0].study_uid
    r = result_of(screening.box.db, study_uid)
    assert r["status"] == "done"
    # the level the release's operating points give this study: the model run here on the same pixels, each view
    # against the same view of the other breast, the most suspicious view deciding
    release = screening.handler.screener()[0].release
    own = Screener(release, backend="onnx-int8", threads=1)
    p = {(lat, view): own.score(mg.synthetic_pixels(10 + i, lat, 256)).p_abnormal for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)}
    beta = release.operating_points.beta
    expected = max(p[(lat, view)] - beta * p[("R" if lat == "L" else "L", view)] for lat, view in p)
    assert r["study_score"] == pytest.approx(expected, abs=1e-4)
    assert r["triage"] == triage(expected, release.operating_points)
    assert {(v["laterality"], v["view"]) for v in r["views"]} == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")}
    assert r["study_score"] == pytest.approx(max(v["suspicion"] for v in r["views"]))
    assert r["model_version"] == screening.registry.active().version and r["backend"] == "onnx-int8"
    for v in r["views"]:
        heat = np.asarray(Image.open(io.BytesIO(screening.store.get(v["heatmap_digest"]))))
        assert heat.shape == (256, 256) and heat.dtype == np.uint8
        assert 0 <= v["peak_x"] < 256 and 0 <= v["peak_y"] < 256
    # heatmaps are sealed at rest like the images
    raw = screening.store.path(r["views"][0]["heatmap_digest"]).read_bytes()
    assert raw[:4] == b"MEV1" and b"PNG" not in raw[:64]
    report = screening.box.db.execute("SELECT payload, key FROM jobs WHERE queue = 'report'").fetchall()
    assert [(json.loads(p)["study_uid"], k) for p, k in report] == [(study_uid, f"report:{study_uid}")]


def test_study_with_a_missing_view_is_incomplete_not_guessed(screening):
    results = screening.push_study(seed=2, views=[("L", "CC"), ("L", "MLO"), ("R", "CC")])
    assert results[-1].infer_job_id is None  # still waiting for the fourth view
    swept = screening.ingest.sweep(now=screening.ingest.clock() + screening.box.settings.ingest_study_complete_timeout_s + 1)
    assert [s.study_uid for s in swept] == [results[0].study_uid]
    drain(screening)
    r = result_of(screening.box.db, results[0].study_uid)
    assert r["status"] == "incomplete" and r["triage"] is None and r["study_score"] is None
    assert r["reasons"] == ["view R-MLO missing"]
    assert len(r["views"]) == 3


def test_unreadable_view_makes_the_study_incomplete_with_the_reason(screening):
    results = screening.push_study(seed=3)
    victim = screening.store.path(results[1].digest)
    blob = bytearray(victim.read_bytes())
    blob[-10] ^= 0x01  # one flipped bit on disk
    victim.write_bytes(bytes(blob))
    drain(screening)
    r = result_of(screening.box.db, results[0].study_uid)
    assert r["status"] == "incomplete"
    assert any(reason.startswith(f"unreadable: {results[1].laterality}-{results[1].view}") for reason in r["reasons"])


def test_a_newly_activated_model_is_used_from_the_next_study(screening, release_dir):
    screening.push_study(seed=4)
    drain(screening)
    new = screening.registry.activate(str(release_dir), by="tech", reason="update")
    results = screening.push_study(seed=5)
    drain(screening)
    assert screening.handler._loaded[0] == new.id
    assert result_of(screening.box.db, results[0].study_uid)["status"] == "done"


def test_model_tampered_after_activation_is_refused_and_screening_continues_on_the_loaded_one(screening, release_dir):
    screening.push_study(seed=6)
    drain(screening)  # the shipped model is loaded
    loaded = screening.handler._loaded
    screening.registry.activate(str(release_dir), by="tech", reason="update")
    (release_dir / "model_int8.onnx").write_bytes(b"not a model")
    results = screening.push_study(seed=7)
    drain(screening)
    assert screening.handler._loaded is loaded
    assert result_of(screening.box.db, results[0].study_uid)["status"] == "done"


def test_each_view_is_triaged_against_the_same_view_of_the_other_breast(screening):
    results = screening.push_study(seed=8)
    drain(screening)
    r = result_of(screening.box.db, results[0].study_uid)
    beta = screening.handler.screener()[0].release.operating_points.beta
    p = {(v["laterality"], v["view"]): v["p_abnormal"] for v in r["views"]}
    for v in r["views"]:
        other = "R" if v["laterality"] == "L" else "L"
        assert v["suspicion"] == pytest.approx(v["p_abnormal"] - beta * p[(other, v["view"])])


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [1, 2])
def test_real_size_rle_study_is_triaged_with_heatmaps_of_bounded_size(screening, parallel):
    """3328 x 4096, 14 bits stored, RLE Lossless: what a detector sends, through the real ingest and handler."""
    from edge_agent.inference import realsize
    from edge_agent.inference.worker import HEATMAP_MAX_SIDE, STAGES

    screening.handler.parallel = parallel
    patient, uid = mg.fake_patient(40 + parallel), mg._uid("real-size", parallel)
    views = {}
    for lat in ("R", "L"):
        img = realsize.pixels(41 if lat == "R" else 42, lat)
        views[(lat, "CC")] = views[(lat, "MLO")] = (img, realsize.encode(img, realsize.SYNTAXES["rle"]))
    for ds in realsize.study(views, realsize.SYNTAXES["rle"], patient=patient, study_uid=uid):
        assert str(ds.file_meta.TransferSyntaxUID) == str(realsize.SYNTAXES["rle"])
        res = screening.ingest.ingest_bytes(mg.to_bytes(ds), source="test")
        assert res.digest, res
    del views
    assert drain(screening).done == 1
    r = result_of(screening.box.db, res.study_uid)
    points = screening.handler.screener()[0].release.operating_points
    assert r["status"] == "done" and r["triage"] == triage(max(v["suspicion"] for v in r["views"]), points)
    assert len(r["views"]) == 4
    for v in r["views"]:
        png = screening.store.get(v["heatmap_digest"])
        heat = np.asarray(Image.open(io.BytesIO(png)))
        assert max(heat.shape) <= HEATMAP_MAX_SIDE and heat.dtype == np.uint8
        assert heat.shape[0] / heat.shape[1] == pytest.approx(4096 / 3328, rel=0.01)  # the detector's portrait shape
        assert len(png) < 256 * 1024
        assert 0 <= v["peak_x"] < 3328 and 0 <= v["peak_y"] < 4096  # in the original image's pixels
        # the peak is inside the breast, on the chest-wall side the laterality says
        assert (v["peak_x"] > 3328 / 3) if v["laterality"] == "R" else (v["peak_x"] < 2 * 3328 / 3)
    timing = screening.handler.timings[-1]
    assert set(timing.seconds) == set(STAGES) and all(timing.seconds[s] > 0 for s in ("read_decrypt", "decode", "preprocess", "inference"))
