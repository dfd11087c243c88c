"""Synthetic studies and triage results for the kiosk's tests, screenshots and benchmark.

Studies go through the real ingest service (generated MG DICOM with fake
Turkish identities). Results are written straight into ``infer_results`` /
``infer_views`` with a heatmap sealed in the image store, as the inference
worker would; they are marked with the model version ``synthetic-demo`` so
nobody takes them for a model's output. :func:`write_release_info` gives that
made-up version a ``model.json`` (thresholds, and woman-level figures only
when a test passes them) so the kiosk's heatmap rule has thresholds to apply.
Never used by a running box.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_agent.ingest import mg
from edge_agent.ingest.service import IngestService
from edge_agent.store import transaction

SYNTHETIC_MODEL = "synthetic-demo"
SYNTHETIC_POINTS = {"review": 0.3, "priority": 0.6, "beta": 0.5}


def write_release_info(models_dir: Path, woman_level: Mapping[str, Any] | None = None) -> Path:
    """``models_dir/synthetic-demo/model.json``: made-up thresholds (and woman-level figures when given), no model files."""
    folder = Path(models_dir) / SYNTHETIC_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"version": SYNTHETIC_MODEL, "operating_points": SYNTHETIC_POINTS}
    if woman_level is not None:
        info["woman_level"] = dict(woman_level)
    path = folder / "model.json"
    path.write_text(json.dumps(info, indent=1), encoding="utf-8")
    return path


def ingest_study(ingest: IngestService, seed: int, *, size: int = 128, views: int = 4, patient: int | None = None) -> str:
    """Ingest ``views`` of the four screening views of a made-up patient; returns the (de-identified) study UID."""
    who = mg.fake_patient(seed if patient is None else patient)
    study_uid = ""
    for ds in mg.screening_study(who, seed=seed, size=size)[:views]:
        result = ingest.ingest_bytes(mg.to_bytes(ds), source="test", label=f"seed{seed}")
        study_uid = result.study_uid or study_uid
    return study_uid


def heatmap_png(width: int, height: int, cx: float, cy: float, sigma: float = 0.12) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    g = np.exp(-(((xx / width - cx) ** 2) + ((yy / height - cy) ** 2)) / (2 * sigma**2))
    buf = io.BytesIO()
    Image.fromarray((g * 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def write_result(ingest: IngestService, study_uid: str, *, triage: str | None, score: float | None, status: str = "done",
                 profile: str = "cpu-basic", now: float | None = None) -> None:
    """A triage result for every MG view of the study, as the inference worker writes it.

    The first view scores ``score``, the others 0.6 of it; each view's suspicion is its score, so the breast scores
    (each breast's highest view) and the study score (the highest breast) agree, as the worker's aggregation makes them.
    """
    db, store = ingest.db, ingest.store
    now = time.time() if now is None else now
    rows = db.execute("SELECT sop_uid, laterality, view FROM ingest_instances WHERE study_uid = ?", [study_uid]).fetchall()
    views = []
    for i, (sop, lat, view) in enumerate(rows):
        p = max(0.0, min(1.0, (score or 0.0) * (1.0 if i == 0 else 0.6)))
        digest_h, _ = store.put(heatmap_png(128, 128, 0.35 if lat == "L" else 0.65, 0.45))
        views.append((study_uid, sop, view, lat, p, p * 0.8, p, 40, 60, digest_h))
    # the shape edge_agent.inference.triage.aggregate writes: per breast, the most suspicious view's figures
    breast = {side: {"p_abnormal": m, "p_malignant": m * 0.8, "suspicion": m}
              for side in ("L", "R") if any(v[3] == side for v in views) for m in [max(v[4] for v in views if v[3] == side)]}
    reasons = ["synthetic result for tests and demos"] if triage else ["missing views"]
    with transaction(db):
        db.execute("INSERT OR REPLACE INTO infer_results (study_uid, status, triage, study_score, breast_scores, reasons, model_version,"
                   " profile, backend, elapsed_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [study_uid, status, triage, score, json.dumps(breast), json.dumps(reasons), SYNTHETIC_MODEL, profile, "onnxruntime", 12.5, now])
        for v in views:
            db.execute("INSERT OR REPLACE INTO infer_views (study_uid, sop_uid, view, laterality, p_abnormal, p_malignant, suspicion, peak_x,"
                       " peak_y, heatmap_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", list(v))
        db.execute("INSERT OR REPLACE INTO infer_runtime (id, profile, backend, model_version, fallback_reason, updated_at)"
                   " VALUES (1, ?, 'onnxruntime', ?, NULL, ?)", [profile, SYNTHETIC_MODEL, now])


def bulk_studies(ingest: IngestService, count: int, *, template_study: str, now: float | None = None, span_days: float = 25.0) -> None:
    """Copy one ingested study's rows ``count`` times under new UIDs (same patient pseudonym), with results: benchmark volume."""
    db = ingest.db
    now = time.time() if now is None else now
    pseudo = db.execute("SELECT pseudonym FROM ingest_studies WHERE study_uid = ?", [template_study]).fetchone()[0]
    inst = db.execute("SELECT digest, size, sop_class, laterality, view FROM ingest_instances WHERE study_uid = ?", [template_study]).fetchall()
    triages = ("no_suspicious_finding", "no_suspicious_finding", "no_suspicious_finding", "radiologist_review", "priority_radiologist_review")
    rng = np.random.default_rng(7)
    with transaction(db):
        for n in range(count):
            uid = f"2.25.9{n:012d}"
            t = now - float(rng.uniform(0, span_days * 86400))
            db.execute("INSERT INTO ingest_studies (study_uid, pseudonym, modality, first_seen, last_seen, state, complete_reason, completed_at)"
                       " VALUES (?, ?, 'MG', ?, ?, 'complete', 'four_views', ?)", [uid, pseudo, t, t, t])
            for j, (digest, size, sop_class, lat, view) in enumerate(inst):
                db.execute("INSERT INTO ingest_instances (sop_uid, study_uid, series_uid, digest, size, modality, sop_class, laterality, view,"
                           " outcome, fixes, source, received_at) VALUES (?, ?, ?, ?, ?, 'MG', ?, ?, ?, 'accepted', '[]', 'bench', ?)",
                           [f"{uid}.{j}", uid, f"{uid}.1", digest, size, sop_class, lat, view, t])
            triage = triages[n % len(triages)]
            score = float(rng.uniform(0, 1))
            db.execute("INSERT INTO infer_results (study_uid, status, triage, study_score, breast_scores, reasons, model_version, profile,"
                       " backend, elapsed_ms, created_at) VALUES (?, 'done', ?, ?, '{}', '[]', ?, 'cpu-basic', 'onnxruntime', 10, ?)",
                       [uid, triage, score, SYNTHETIC_MODEL, t])
