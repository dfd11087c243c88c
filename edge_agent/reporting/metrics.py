"""The box's Prometheus endpoint: ``GET /metrics`` on ``metrics_host:metrics_port`` while ``mammo up`` runs.

Every figure is read from the box's own tables (and the disk, and the
installed startup kit) at scrape time, by one collector on its own database
connection: nothing is counted in memory, so the figures are the same after a
restart and whichever process did the work. Other components' tables that a
box may not have yet (sync's outbox, the learning privacy ledger) are read
when present; when absent their families are still declared (``# HELP`` and
``# TYPE``) with no samples, never NaN, so a dashboard shows "no data" rather
than a made-up zero.

The dashboard and alert rules shipped beside this module
(``monitoring/grafana-dashboard.json``, ``monitoring/alert-rules.yml``) use only
names declared here; a test scrapes a real box and checks that.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlite_utils
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge_agent.queue import KNOWN_QUEUES
from edge_agent.reporting import state
from edge_agent.reporting.facts import table_exists
from edge_agent.settings import Settings

log = logging.getLogger(__name__)

MONITORING_DIR = Path(__file__).resolve().parent / "monitoring"
#: Inference latency buckets (seconds): a study takes from a fraction of a second (small profile, synthetic) to a minute.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TRIAGE_LEVELS = ("no_suspicious_finding", "radiologist_review", "priority_radiologist_review")


def software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mammoai-tr-edge")
    except PackageNotFoundError:
        return "unknown"


class BoxCollector:
    """A prometheus-client collector over one database connection and the box's home folder."""

    def __init__(self, db: sqlite_utils.Database, settings: Settings, *, box_id: str, clock: Callable[[], float] = time.time) -> None:
        self.db, self.settings, self.box_id, self.clock = db, settings, box_id, clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        yield from self._box()
        yield from self._queues(now)
        yield from self._studies()
        yield from self._latency()
        yield from self._model()
        yield from self._reports()
        yield from self._sync(now)
        yield from self._privacy()
        yield from self._disk()
        yield from self._certificate(now)

    def _box(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("mammo_box_info", "This box: its id, name and software version (always 1).", labels=["box_id", "box_name", "version"])
        g.add_metric([self.box_id, self.settings.box_name, software_version()], 1.0)
        yield g

    def _queues(self, now: float) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("mammo_queue_jobs", "Jobs per durable queue and state (ready, leased, dead; done until purged).", labels=["queue", "state"])
        age = GaugeMetricFamily("mammo_queue_oldest_ready_age_seconds", "Age of the oldest job waiting (ready) in each queue; 0 when none waits.", labels=["queue"])
        dead = GaugeMetricFamily("mammo_queue_dead_letters", "Dead-lettered jobs per queue (`mammo queue dead` lists them).", labels=["queue"])
        counts: dict[str, dict[str, int]] = {q: {} for q in KNOWN_QUEUES}
        for q, st, n in self.db.execute("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state"):
            counts.setdefault(q, {})[st] = n
        oldest = dict(self.db.execute("SELECT queue, min(available_at) FROM jobs WHERE state = 'ready' GROUP BY queue").fetchall())
        for q in sorted(counts):
            for st in ("ready", "leased", "dead", "done"):
                jobs.add_metric([q, st], float(counts[q].get(st, 0)))
            age.add_metric([q], max(0.0, now - oldest[q]) if oldest.get(q) is not None else 0.0)
            dead.add_metric([q], float(counts[q].get("dead", 0)))
        yield from (jobs, age, dead)

    def _studies(self) -> Iterable[Metric]:
        c = CounterMetricFamily("mammo_studies_screened", "Studies the model screened, by triage level (incomplete and failed ones by status).",
                                labels=["triage"])
        got = {t: 0 for t in (*TRIAGE_LEVELS, "incomplete", "failed")}
        for status, triage, n in self.db.execute("SELECT status, triage, count(*) FROM infer_results GROUP BY status, triage"):
            key = triage if status == "done" and triage else status
            got[key] = got.get(key, 0) + n
        for k, n in got.items():
            c.add_metric([k], float(n))
        yield c

    def _latency(self) -> Iterable[Metric]:
        h = HistogramMetricFamily("mammo_inference_latency_seconds", "Time the inference worker spent on one study, per hardware profile.",
                                  labels=["profile"])
        cases = ", ".join(f"sum(elapsed_ms <= {b * 1000!r})" for b in LATENCY_BUCKETS)
        for row in self.db.execute(f"SELECT profile, count(*), sum(elapsed_ms), {cases} FROM infer_results GROUP BY profile"):
            profile, n, total = row[0], int(row[1]), float(row[2] or 0.0)
            buckets = [(repr(b), float(c)) for b, c in zip(LATENCY_BUCKETS, row[3:], strict=True)] + [("+Inf", float(n))]
            h.add_metric([profile], buckets, total / 1000.0)
        yield h

    def _model(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("mammo_model_info", "The active model release (always 1): version and manifest SHA-256.", labels=["version", "manifest_sha256"])
        at = GaugeMetricFamily("mammo_model_activated_timestamp_seconds", "When the active model was activated (Unix time).")
        r = self.db.execute("SELECT version, manifest_sha256, activated_at FROM model_activations ORDER BY id DESC LIMIT 1").fetchone()
        if r is not None:
            g.add_metric([r[0], r[1]], 1.0)
            at.add_metric([], float(r[2]))
        yield from (g, at)

    def _reports(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("mammo_reports", "Screening reports (fhir) and family-doctor notices (sms) by delivery state.", labels=["channel", "state"])
        for (channel, st), n in sorted(state.counts(self.db).items()):
            g.add_metric([channel, st], float(n))
        yield g

    def _sync(self, now: float) -> Iterable[Metric]:
        pending = GaugeMetricFamily("mammo_sync_updates", "Federated learning updates in the sync outbox, by state.", labels=["state"])
        lag = GaugeMetricFamily("mammo_sync_lag_seconds", "Age of the oldest update the coordinator has not acknowledged yet; 0 when none waits.")
        sent = CounterMetricFamily("mammo_sync_sent_bytes", "Bytes of updates the coordinator acknowledged.")
        last = GaugeMetricFamily("mammo_sync_last_ack_timestamp_seconds", "When the coordinator last acknowledged an update (Unix time).")
        if table_exists(self.db, "sync_outbox"):
            counts = {s: 0 for s in ("awaiting_kit", "queued", "sending", "acknowledged", "rejected")}
            counts.update(dict(self.db.execute("SELECT state, count(*) FROM sync_outbox GROUP BY state").fetchall()))
            for st, n in sorted(counts.items()):
                pending.add_metric([st], float(n))
            oldest = self.db.execute("SELECT min(placed_at) FROM sync_outbox WHERE closed_at IS NULL").fetchone()[0]
            lag.add_metric([], max(0.0, now - float(oldest)) if oldest is not None else 0.0)
            b, t = self.db.execute("SELECT coalesce(sum(bytes), 0), max(closed_at) FROM sync_outbox WHERE state = 'acknowledged'").fetchone()
            sent.add_metric([], float(b))
            if t is not None:
                last.add_metric([], float(t))
        yield from (pending, lag, sent, last)

    def _privacy(self) -> Iterable[Metric]:
        spent = GaugeMetricFamily("mammo_privacy_epsilon_spent", "Differential-privacy budget (epsilon) local training has spent (reserved rounds count), per model generation.",
                                  labels=["generation"])
        budget = GaugeMetricFamily("mammo_privacy_epsilon_budget", "Differential-privacy budget (epsilon) of each model generation.", labels=["generation"])
        for generation, used, total in privacy_figures(self.db):
            spent.add_metric([generation], used)
            budget.add_metric([generation], total)
        yield from (spent, budget)

    def _disk(self) -> Iterable[Metric]:
        free = GaugeMetricFamily("mammo_disk_free_bytes", "Free bytes on the disk holding the box's data (MAMMO_HOME).")
        size = GaugeMetricFamily("mammo_disk_size_bytes", "Size in bytes of the disk holding the box's data.")
        try:
            usage = shutil.disk_usage(self.settings.home)
        except OSError:
            usage = None
        if usage is not None:
            free.add_metric([], float(usage.free))
            size.add_metric([], float(usage.total))
        yield from (free, size)

    def _certificate(self, now: float) -> Iterable[Metric]:
        days = GaugeMetricFamily("mammo_certificate_days_left", "Days until the box's federation certificate expires (absent when not enrolled).")
        enrolled = GaugeMetricFamily("mammo_enrolled", "1 when the box holds a federation certificate (a startup kit), else 0.")
        not_after = certificate_not_after(self.settings)
        enrolled.add_metric([], 1.0 if not_after is not None else 0.0)
        if not_after is not None:
            days.add_metric([], (not_after.timestamp() - now) / 86400.0)
        yield from (days, enrolled)


def certificate_not_after(settings: Settings) -> dt.datetime | None:
    """The installed kit's certificate expiry, or None (not enrolled, or the kit cannot be read: logged)."""
    from provisioning.enrolment import folder_of, installed_kit

    try:
        kit = installed_kit(folder_of(settings))
    except Exception as exc:  # a damaged kit must not take the endpoint down; the console and `mammo provision status` say more
        log.warning("metrics: cannot read the installed startup kit: %s", exc)
        return None
    return kit.not_after if kit is not None else None


#: Rounds whose epsilon counts as spent (edge_agent.learning.ledger.COUNTED: a released round gave its reservation back).
_COUNTED = ("reserved", "running", "paused", "done", "failed")


def privacy_figures(db: sqlite_utils.Database) -> list[tuple[str, float, float]]:
    """(generation, epsilon spent, epsilon budget) per model generation from the learning ledger; empty without one.

    Read through SQL, as the ledger keeps it: a round's ``epsilon_total`` is the composed figure the generation will have
    spent once that round is through, so the generation's spend is the largest among its counted rounds.
    """
    if not (table_exists(db, "learning_generations") and table_exists(db, "learning_rounds")):
        return []
    marks = ",".join("?" * len(_COUNTED))
    return [(str(g), float(used), float(total)) for g, used, total in db.execute(
        "SELECT g.base_model_version, coalesce((SELECT max(r.epsilon_total) FROM learning_rounds r WHERE r.base_model_version ="
        f" g.base_model_version AND r.state IN ({marks})), 0), g.epsilon_budget FROM learning_generations g ORDER BY g.created_at", list(_COUNTED))]


def registry_for(collector: BoxCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


class MetricsServer:
    """A small HTTP server: ``GET /metrics`` renders the registry; every other path is 404."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        reg = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    body = generate_latest(reg)
                except Exception as exc:  # a scrape must report its failure, not kill the thread
                    log.exception("metrics: scrape failed")
                    self.send_error(500, f"scrape failed: {type(exc).__name__}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
