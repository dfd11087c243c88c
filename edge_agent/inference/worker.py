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
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlite_utils
from PIL import Image

from edge_agent.errors import IntegrityError, MammoError, ModelError, StoreError
from edge_agent.inference.activation import Activation, ModelRegistry
from edge_agent.inference.decode import work_image
from edge_agent.inference.triage import ViewScore, aggregate, first_by_view, other_breast
from edge_agent.inference.viewcache import ViewCache
from edge_agent.ingest.image_store import ImageStore
from edge_agent.ingest.work_images import WorkImages
from edge_agent.queue import Effect, Job, JobQueue
from models.preprocess import Preprocessed, preprocess
from models.release_files import suspicion

if TYPE_CHECKING:
    from models.release_files import Release
    from models.runtime import Screener, ScreeningResult

log = logging.getLogger(__name__)

REPORT_QUEUE = "report"

#: Longest side of a stored heatmap. The kiosk draws views at 768 px and the
#: map is an upsampled 16 x 16 lesion map, so a larger one would only cost
#: PNG encoding time and store space (a full-size one of a detector image is
#: 13 megapixels).
HEATMAP_MAX_SIDE = 768

#: The stages of one study, in order, as ``mammo bench study`` reports them.
STAGES = ("read_decrypt", "decode", "preprocess", "inference", "heatmap", "store")

_Row = tuple[str, str, "str | None", "str | None"]  # sop_uid, digest, laterality, view
ScreenerFactory = Callable[["Release"], "Screener"]


def heatmap_png(heat: np.ndarray) -> bytes:
    """A heatmap in 0..1 as an 8-bit greyscale PNG (the kiosk colours it)."""
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.asarray(heat) * 255.0, 0, 255).astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class StudyTiming:
    """Where one study's time went inside the handler: seconds per stage, and ``time.monotonic()``
    instants (one clock for every process of the machine, so a benchmark can frame them)."""

    study_uid: str
    started: float
    finished: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    views_ready: int = 0  # views prepared while the study was arriving (their stages are not in ``seconds``)

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the block's time to ``name`` (views prepared in parallel add up: a stage may exceed the wall time)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[name] += time.perf_counter() - t0

    def as_dict(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, "started": self.started, "finished": self.finished, "seconds": dict(self.seconds),
                "views_ready": self.views_ready}


class InferenceHandler:
    """Holds the loaded model; reloads when the active model changes between studies."""

    def __init__(self, queue: JobQueue, store: ImageStore, registry: ModelRegistry, factory: ScreenerFactory,
                 *, profile: str, clock: Callable[[], float] = time.time, parallel: int = 1, views: ViewCache | None = None,
                 work_images: WorkImages | None = None) -> None:
        self.queue = queue
        self.db = queue.db
        self.store = store
        self.registry = registry
        self.factory = factory
        self.profile = profile
        self.clock = clock
        # views read, decoded and preprocessed at once (the profile's threads): decryption, hashing, decoders and
        # numpy release the GIL, and while a study is being read the model is idle anyway
        self.parallel = max(1, int(parallel))
        self.views = views if views is not None else ViewCache(self.parallel)
        self.work_images = work_images  # views ingest decoded and reduced already (decode once), taken by digest
        self._loaded: tuple[int, Screener] | None = None  # (activation id, screener)
        self._lock = threading.Lock()
        self.timings: deque[StudyTiming] = deque(maxlen=1000)  # the latest studies, for the benchmark and diagnosis
        # the latest views prepared, in a job or ahead of it: (time.monotonic() when done, seconds per stage)
        self.view_timings: deque[tuple[float, dict[str, float]]] = deque(maxlen=4000)

    def screener(self) -> tuple[Screener, Activation]:
        """The screener of the active model; a newly activated model that fails to load leaves the old one in use."""
        act = self.registry.active()
        if act is None:
            raise ModelError("No model is active. Fix: `mammo model activate VERSION`.")
        with self._lock:
            if self._loaded is not None and self._loaded[0] == act.id:
                return self._loaded[1], act
            try:
                release, digest = self.registry.verify(act.path)  # files and signature, with the box's trust of now
                if digest != act.manifest_sha256:
                    raise ModelError(f"Model {act.version}: manifest changed since activation; refusing it.")
                screener = self.factory(release)
            except MammoError as exc:
                if self._loaded is None:
                    raise ModelError(f"Active model {act.version} cannot be used ({exc}); no earlier model is loaded.") from exc
                log.error("active model %s refused (%s); still screening with the previous model", act.version, exc)
                return self._loaded[1], act
            self._loaded = (act.id, screener)
            if self.work_images is not None:
                self.work_images.size = screener.release.input_size  # ingest reduces views for this model from now on
            return screener, act

    def _prepare(self, digest: str, size: int, timing: StudyTiming) -> Preprocessed | Exception:
        """One view from the sealed store to the model input; an error is returned (and recorded by the caller)."""
        mine = StudyTiming(digest, time.monotonic())
        try:
            work = self.work_images.take(digest, size) if self.work_images is not None else None
            if work is None:  # not handed over by ingest (a restart, another input size): read and decode it here
                with timing.stage("read_decrypt"), mine.stage("read_decrypt"):
                    data = self.store.get(digest)
                with timing.stage("decode"), mine.stage("decode"):
                    work = work_image(data, size)
                del data
            with timing.stage("preprocess"), mine.stage("preprocess"):
                prepared = preprocess(work, size)
            self.view_timings.append((time.monotonic(), {k: mine.seconds[k] for k in ("read_decrypt", "decode", "preprocess")}))
            return prepared
        # ours (a damaged object, a picture that is no mammogram), then what pydicom and the decoders raise
        except (IntegrityError, StoreError, ModelError, ValueError, TypeError, AttributeError, KeyError, NotImplementedError,
                RuntimeError) as exc:
            return exc

    def _prepare_all(self, rows: list[_Row], size: int, timing: StudyTiming) -> list[Preprocessed | Exception]:
        """Every view's model input: ready ones from the cache, the others prepared now (in parallel)."""
        def one(row: _Row) -> tuple[Preprocessed | Exception, bool]:
            return self.views.get(row[1], size, lambda digest, s: self._prepare(digest, s, timing))

        if self.parallel == 1 or len(rows) < 2:
            got = [one(row) for row in rows]
        else:
            with ThreadPoolExecutor(max_workers=min(self.parallel, len(rows)), thread_name_prefix="infer-view") as pool:
                got = list(pool.map(one, rows))
        timing.views_ready = sum(ready for _, ready in got)
        return [result for result, _ in got]

    def prepare_offered(self, keys: list[tuple[str, int]]) -> int:
        """Prepare views ingest just handed over (``WorkImages.wait``), before their rows are even committed."""
        ahead = StudyTiming("(prepared ahead)", time.monotonic())
        for digest, size in keys:
            self.views.get(digest, size, lambda d, s: self._prepare(d, s, ahead))
            if self.work_images is not None:
                self.work_images.take(digest, size)  # already prepared (a re-sent view): the offer is not needed
        return len(keys)

    def prepare_ahead(self, db: sqlite_utils.Database | None = None) -> int:
        """Prepare the views stored since the last call, before their study's job exists (see viewcache).

        ``db``: the polling thread's own connection. On the worker's, a SELECT of this thread still open
        (between its execute and its fetch) would hold a read snapshot under the worker's next claim, and
        SQLite refuses that write at once ("database is locked") when another connection committed since.
        For the same reason the loaded model is asked for its input size without a query, once loaded.
        """
        loaded = self._loaded
        if loaded is not None:
            screener = loaded[1]
        else:
            try:
                screener, _ = self.screener()
            except ModelError:
                return 0  # no usable model yet: the jobs will say so
        ahead = StudyTiming("(prepared ahead)", time.monotonic())
        return self.views.prepare_new(self.db if db is None else db, screener.release.input_size,
                                      lambda digest, s: self._prepare(digest, s, ahead))

    def __call__(self, job: Job) -> Effect:
        t0 = time.perf_counter()
        study_uid = job.payload["study_uid"]
        timing = StudyTiming(study_uid, time.monotonic())
        screener, _act = self.screener()
        size = screener.release.input_size
        rows: list[_Row] = self.db.execute(
            "SELECT sop_uid, digest, laterality, view FROM ingest_instances WHERE study_uid = ? AND modality = 'MG' ORDER BY received_at, sop_uid",
            [study_uid],
        ).fetchall()
        views: list[ViewScore] = []
        unreadable: list[str] = []
        # Each view is read, decoded once and reduced at once (most of them while the study was arriving), so at most
        # `parallel` full-size images are in memory and what is kept per view is the 128 x 128 model input.
        prepared: dict[str, Preprocessed] = {}
        for (sop_uid, _digest, laterality, view), got in zip(rows, self._prepare_all(rows, size, timing), strict=True):
            if isinstance(got, Preprocessed):
                prepared[sop_uid] = got
            elif isinstance(got, (IntegrityError, StoreError)):
                unreadable.append(f"{laterality or '?'}-{view or '?'}: {got}")
            elif isinstance(got, ModelError):  # models.errors.InputImageError: decoded, but not a usable mammogram
                unreadable.append(f"{laterality or '?'}-{view or '?'}: image could not be scored ({got})")
            else:
                unreadable.append(f"{laterality or '?'}-{view or '?'}: image could not be decoded ({type(got).__name__}: {got})")
        # Score each view once; its suspicion then uses the other breast's score from the same pass
        # (Screener.score(image, other) would run the other breast a second time).
        scored: dict[str, ScreeningResult] = {}
        for sop_uid, _digest, laterality, view in rows:
            if sop_uid not in prepared:
                continue
            other = None
            if screener.channels > 1:  # a two-breast model reads the other breast as an input channel
                other = next((prepared[o] for o, _, lat, v in rows if o in prepared and v == view and lat and lat != laterality), None)
            try:
                with timing.stage("inference"):
                    scored[sop_uid] = screener.score_preprocessed(prepared[sop_uid], other, heatmap_side=HEATMAP_MAX_SIDE)
            except (ModelError, ValueError) as exc:
                unreadable.append(f"{laterality or '?'}-{view or '?'}: image could not be scored ({exc})")
        points = screener.release.operating_points
        p_first = first_by_view((lat, v, scored[o].p_abnormal) for o, _, lat, v in rows if o in scored and lat and v)
        for sop_uid, _digest, laterality, view in rows:
            result = scored.get(sop_uid)
            if result is None:
                continue
            p_other = other_breast(p_first, laterality, view)
            with timing.stage("heatmap"):
                png = heatmap_png(result.heatmap)
            with timing.stage("store"):
                heat_digest, _ = self.store.put(png)
            views.append(ViewScore(sop_uid, laterality or "?", view or "?", result.p_abnormal, result.p_malignant,
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

        timing.finished = time.monotonic()
        self.timings.append(timing)
        log.info("study %s…: %s %s (%.0f ms: %s)", study_uid[:16], outcome.status, outcome.triage or "", elapsed_ms,
                 ", ".join(f"{k} {v * 1000:.0f}" for k, v in timing.seconds.items()))
        return effect


def result_of(db: sqlite_utils.Database, study_uid: str) -> dict[str, Any] | None:
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
