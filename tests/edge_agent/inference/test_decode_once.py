"""A view is decoded once: ingest hands the inference worker the work image it reduced from the pixels it decoded."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.inference import realsize
from edge_agent.inference.decode import work_image
from edge_agent.inference.worker import InferenceHandler, result_of
from edge_agent.ingest import mg
from edge_agent.ingest.service import IngestService
from edge_agent.ingest.work_images import WorkImages
from edge_agent.worker import Worker
from models.preprocess import preprocess
from models.runtime import Screener


@pytest.fixture
def handoff(box, screening):
    """The daemon's wiring: ingest offers work images, the inference handler takes them (it sets the input size)."""
    work_images = WorkImages()
    ingest = IngestService.from_box(box, work_images=work_images)
    handler = InferenceHandler(box.queue, screening.store, screening.registry, lambda rel: Screener(rel, backend="onnx-int8", threads=1),
                               profile="cpu-small", work_images=work_images)
    handler.screener()  # the model loads at start, before the first study arrives
    return work_images, ingest, handler


def test_a_study_is_scored_from_the_views_ingest_decoded_without_reading_them_back(box, screening, handoff):
    work_images, ingest, handler = handoff
    assert work_images.size == handler.screener()[0].release.input_size  # ingest reduces views for the model in use
    patient, uid = mg.fake_patient(61), mg._uid("decode-once", 61)
    results = [ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(610 + i, lat, 512), patient=patient, laterality=lat,
                                                             view=view, study_uid=uid, instance_number=i + 1, seed=61)), source="test")
               for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)]
    assert work_images.offered == 4 and len(work_images) == 4
    # The stored objects are gone: only views handed over by ingest can still be scored.
    for r in results:
        screening.store.delete(r.digest)
    assert Worker(box.queue, "infer", handler, name="test").run(drain=True).done == 1
    r = result_of(box.db, results[0].study_uid)
    assert r["status"] == "done" and len(r["views"]) == 4, r["reasons"]
    assert work_images.taken == 4 and len(work_images) == 0
    assert handler.timings[-1].seconds["read_decrypt"] == 0 and handler.timings[-1].seconds["decode"] == 0


def test_an_offer_is_only_taken_for_the_input_size_it_was_made_for(box, handoff):
    work_images, ingest, _ = handoff
    res = ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(8, "L", 256), patient=mg.fake_patient(62), laterality="L",
                                                       view="CC")), source="test")
    assert work_images.take(res.digest, work_images.size * 2) is None  # a model with another input size decodes itself
    assert work_images.take(res.digest, work_images.size) is not None


@pytest.mark.slow
@pytest.mark.parametrize("syntax", ["native", "rle", "j2k"])
def test_real_size_work_image_from_ingest_is_the_one_inference_would_decode(box, handoff, syntax):
    """Uncompressed and RLE: the same pixels, bit for bit. JPEG 2000: ingest decodes a finer level for its checks (1/4),
    block-meaned to the 1/8 grid inference reads; the model input stays within the reduction's tested tolerance."""
    if syntax == "j2k" and not realsize.j2k_encoding_available():
        pytest.skip("no JPEG 2000 encoder here (pylibjpeg-openjpeg) to make the test file")
    work_images, ingest, _ = handoff
    size = work_images.size
    img = realsize.pixels(9, "R")
    ts = realsize.SYNTAXES[syntax]
    ds = realsize.instance(img, realsize.encode(img, ts), ts, patient=mg.fake_patient(63), laterality="R", view="CC",
                           study_uid=mg._uid("decode-once", 63), instance_number=1)
    res = ingest.ingest_bytes(mg.to_bytes(ds), source="test")
    handed = work_images.take(res.digest, size)
    assert handed is not None
    own = work_image(ingest.store.get(res.digest), size)
    assert (handed.factor, handed.height, handed.width, handed.pixels.shape) == (own.factor, own.height, own.width, own.pixels.shape)
    if syntax != "j2k":
        np.testing.assert_array_equal(handed.pixels, own.pixels)
        return
    a, b = preprocess(handed, size), preprocess(own, size)
    d = np.abs(a.image - b.image)
    assert d.mean() < 0.012 and np.percentile(d, 99) < 0.08 and (a.mask != b.mask).mean() < 0.005


def test_views_handed_over_are_prepared_at_once_and_the_job_finds_them_ready(box, handoff):
    work_images, ingest, handler = handoff
    patient, uid = mg.fake_patient(64), mg._uid("decode-once", 64)
    results = [ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(640 + i, lat, 256), patient=patient, laterality=lat,
                                                             view=view, study_uid=uid, instance_number=i + 1, seed=64)), source="test")
               for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)]
    keys = work_images.wait(0.0)
    assert sorted(keys) == sorted((r.digest, work_images.size) for r in results)
    assert handler.prepare_offered(keys) == 4 and len(work_images) == 0 and work_images.wait(0.0) == []
    assert Worker(box.queue, "infer", handler, name="test").run(drain=True).done == 1
    assert handler.timings[-1].views_ready == 4 and result_of(box.db, results[0].study_uid)["status"] == "done"
