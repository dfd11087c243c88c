"""The kiosk showing what the real inference worker wrote (not synthetic rows): the contract between the two."""

from edge_agent.inference.activation import ModelRegistry
from edge_agent.inference.worker import InferenceHandler, result_of
from edge_agent.worker import Worker
from kiosk_ui import synthetic
from models.runtime import Screener


def test_study_triaged_by_the_real_model_opens_with_its_scores_and_heatmaps(kiosk, doctor):
    study = synthetic.ingest_study(kiosk.services.ingest, seed=7)
    registry = ModelRegistry(kiosk.box.db, kiosk.settings)
    registry.ensure_active()
    handler = InferenceHandler(kiosk.box.queue, kiosk.services.ingest.store, registry,
                               lambda rel: Screener(rel, backend="onnx-int8", threads=1), profile="cpu-small")
    assert Worker(kiosk.box.queue, "infer", handler).run(drain=True).done >= 1
    result = result_of(kiosk.box.db, study)
    assert result["status"] == "done"

    page = doctor.get(f"/studies/{study}")
    assert page.status_code == 200, page.text[:500]
    assert f"{result['study_score']:.2f}" in page.text
    assert result["model_version"] in page.text
    for view in result["views"]:
        assert doctor.get(f"/studies/{study}/views/{view['sop_uid']}/heatmap.png").status_code == 200
    assert doctor.get(f"/studies/{study}/referral.pdf").status_code == 200
