"""The inference handler: one ``infer`` job = one study triaged.

Everything that can be redone is done before the ack (reading and scoring
the views, storing sealed heatmaps, which are content-addressed and so
idempotent); the rows that make the result visible are written by the ack
effect, together with the ``report`` job, so a crash never leaves half a
result or two reports.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import pydicom
import sqlite_utils
from PIL import Image

from edge_agent.errors import IntegrityError, MammoError, ModelError, StoreError
from edge_agent.inference.activation import Activation, ModelRegistry, verify_release
from edge_agent.inference.triage import ViewScore, aggregate
from edge_agent.ingest.image_store import ImageStore
from edge_agent.queue import Effect, Job, JobQueue
from models.release_files import suspicion

log = logging.getLogger(__name__)

REPORT_QUEUE = "report"

ScreenerFactory = Callable[[object], object]  # Release -> models.runtime.Screener


def pixels_of(dicom_bytes: bytes) -> np.ndarray:
    """The first frame of a stored (de-identified, MONOCHROME2) instance as a 2-D array."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes))
    arr = ds.pixel_array
    if arr.ndim == 3:
        arr = arr[0] if ds.get("SamplesPerPixel", 1) == 1 else arr.mean(axis=-1)
    return arr


def heatmap_png(heat: np.ndarray) -> bytes:
    """A heatmap in 0..1 as an 8-bit greyscale PNG (the kiosk colours it)."""
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.asarray(heat) * 255.0, 0, 255).astype(np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class InferenceHandler:
    """Holds the loaded model; reloads when the active model changes between studies."""

    def __init__(self, queue: JobQueue, store: ImageStore, registry: ModelRegistry, factory: ScreenerFactory,
                 *, profile: str, clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.db = queue.db
        self.store = store
        self.registry = registry
        self.factory = factory
        self.profile = profile
        self.clock = clock
        self._loaded: tuple[int, object] | None = None  # (activation id, screener)
        self._lock = threading.Lock()

    def screener(self) -> tuple[object, Activation]:
        """The screener of the active model; a newly activated model that fails to load leaves the old one in use."""
        act = self.registry.active()
        if act is None:
            raise ModelError("No model is active. Fix: `mammo model activate VERSION`.")
        with self._lock:
            if self._loaded is not None and self._loaded[0] == act.id:
                return self._loaded[1], act
            try:
                release, digest = verify_release(act.path, self.registry.settings.infer_model_signing_key)
                if digest != act.manifest_sha256:
                    raise ModelError(f"Model {act.version}: manifest changed since activation; refusing it.")
                screener = self.factory(release)
            except MammoError as exc:
                if self._loaded is None:
                    raise ModelError(f"Active model {act.version} cannot be used ({exc}); no earlier model is loaded.") from exc
                log.error("active model %s refused (%s); still screening with the previous model", act.version, exc)
                return self._loaded[1], act
            self._loaded = (act.id, screener)
            return screener, act

    def __call__(self, job: Job) -> Effect:
        t0 = time.perf_counter()
        study_uid = job.payload["study_uid"]
        screener, _act = self.screener()
        rows = self.db.execute(
            "SELECT sop_uid, digest, laterality, view FROM ingest_instances WHERE study_uid = ? AND modality = 'MG' ORDER BY received_at, sop_uid",
            [study_uid],
        ).fetchall()
        views: list[ViewScore] = []
        unreadable: list[str] = []
        pixels: dict[str, np.ndarray] = {}
        for sop_uid, digest, laterality, view in rows:
            try:
                pixels[sop_uid] = pixels_of(self.store.get(digest))
            except (IntegrityError, StoreError) as exc:
                unreadable.append(f"{laterality or '?'}-{view or '?'}: {exc}")
            except (ValueError, TypeError, AttributeError, NotImplementedError, RuntimeError) as exc:
                unreadable.append(f"{laterality or '?'}-{view or '?'}: image could not be decoded ({type(exc).__name__}: {exc})")
        # Score each view once; its suspicion then uses the other breast's score from the same pass
        # (Screener.score(image, other) would preprocess and run the other breast a second time).
        scored: dict[str, object] = {}
        for sop_uid, digest, laterality, view in rows:
            if sop_uid not in pixels:
                continue
            other = None
            if screener.channels > 1:  # a two-breast model reads the other breast as an input channel
                other = next((pixels[o] for o, _, lat, v in rows if o in pixels and v == view and lat and lat != laterality), None)
            try:
                scored[sop_uid] = screener.score(pixels[sop_uid], other)
            except (ModelError, ValueError) as exc:
                unreadable.append(f"{laterality or '?'}-{view or '?'}: image could not be scored ({exc})")
        points = screener.release.operating_points
        for sop_uid, digest, laterality, view in rows:
            result = scored.get(sop_uid)
            if result is None:
                continue
            p_other = next((scored[o].p_abnormal for o, _, lat, v in rows if o in scored and v == view and lat and lat != laterality), None)
            heat_digest, _ = self.store.put(heatmap_png(result.heatmap))
            views.append(ViewScore(sop_uid, laterality, view, result.p_abnormal, result.p_malignant,
                                   suspicion(result.p_abnormal, p_other, points.beta, points.fallback_p_other),
                                   result.peak_xy[0], result.peak_xy[1], heat_digest))
        release = screener.release
        outcome = aggregate(views, unreadable, release.operating_points)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        now = self.clock()

        def effect(db: sqlite_utils.Database) -> None:
            db.execute("DELETE FROM infer_views WHERE study_uid = ?", [study_uid])
            db.execute(
                "INSERT OR REPLACE INTO infer_results (study_uid, status, triage, study_score, breast_scores, reasons, model_version,"
                " profile, backend, elapsed_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [study_uid, outcome.status, outcome.triage, outcome.study_score, json.dumps(outcome.breast_scores),
                 json.dumps(list(outcome.reasons)), release.version, self.profile, screener.backend, elapsed_ms, now],
            )
            for v in views:
                db.execute(
                    "INSERT INTO infer_views (study_uid, sop_uid, view, laterality, p_abnormal, p_malignant, suspicion, peak_x, peak_y, heatmap_digest)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [study_uid, v.sop_uid, v.view, v.laterality, v.p_abnormal, v.p_malignant, v.suspicion, v.peak_x, v.peak_y, v.heatmap_digest],
                )
            self.queue.enqueue_tx(db, REPORT_QUEUE, {"study_uid": study_uid, "status": outcome.status}, key=f"report:{study_uid}")

        log.info("study %s…: %s %s (%.0f ms)", study_uid[:16], outcome.status, outcome.triage or "", elapsed_ms)
        return effect


def result_of(db: sqlite_utils.Database, study_uid: str) -> dict | None:
    """The stored result of a study as plain data (for the CLI and tests)."""
    row = db.execute(
        "SELECT status, triage, study_score, breast_scores, reasons, model_version, profile, backend, elapsed_ms FROM infer_results WHERE study_uid = ?",
        [study_uid],
    ).fetchone()
    if row is None:
        return None
    views = db.execute(
        "SELECT sop_uid, laterality, view, p_abnormal, p_malignant, suspicion, peak_x, peak_y, heatmap_digest FROM infer_views WHERE study_uid = ? ORDER BY laterality, view",
        [study_uid],
    ).fetchall()
    return {
        "study_uid": study_uid, "status": row[0], "triage": row[1], "study_score": row[2],
        "breast_scores": json.loads(row[3]), "reasons": json.loads(row[4]), "model_version": row[5],
        "profile": row[6], "backend": row[7], "elapsed_ms": row[8],
        "views": [asdict(ViewScore(*v)) for v in views],
    }
