"""Daemon hook for ``mammo up``: the report and notify workers, the confirmation sweep and the metrics endpoint.

Each part has its own database connection (store's rule: one per component
thread group), so a slow endpoint never holds another service's connection.
A setting that cannot work (reporting switched on without an endpoint, the
e-Nabız adapter that does not exist yet) refuses the whole service at start,
naming the setting; a malformed URL is already refused when the settings load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import sqlite_utils

from edge_agent.box import Box, retry_policy
from edge_agent.errors import SettingsError
from edge_agent.queue import JobQueue
from edge_agent.reporting import facts, fhir, metrics
from edge_agent.reporting.delivery import NOTIFY_QUEUE, REPORT_QUEUE, FhirTransactionAdapter, ReportHandler, route_fhir
from edge_agent.reporting.enabiz import EnabizAdapter, NationalRecordAdapter
from edge_agent.reporting.sms import SmsGateway, SmsHandler
from edge_agent.settings import Settings
from edge_agent.store import open_database, transaction
from edge_agent.worker import Worker

log = logging.getLogger(__name__)

SWEEP_S = 30.0  # how often studies waiting for a radiologist are looked at again
POLL_S = 1.0  # how often an idle report/notify worker looks for a job


def check_settings(s: Settings) -> None:
    """Refuse settings that cannot deliver, naming the setting and the fix (raised at start-up)."""
    if s.report_fhir_enabled and not s.report_fhir_url:
        raise SettingsError("report_fhir_enabled is true but report_fhir_url is empty (env MAMMO_REPORT_FHIR_URL). "
                            "Fix: set the FHIR endpoint's base URL, or set report_fhir_enabled = false.")
    if s.report_fhir_enabled and s.report_adapter == "enabiz":
        raise SettingsError("report_adapter = enabiz, but this box has no production e-Nabız adapter (see README, Reporting out). "
                            "Fix: set report_adapter = fhir, or report_fhir_enabled = false.")
    if s.sms_enabled and not s.sms_gateway_url:
        raise SettingsError("sms_enabled is true but sms_gateway_url is empty (env MAMMO_SMS_GATEWAY_URL). Fix: set the gateway URL, or sms_enabled = false.")
    if s.sms_enabled and not s.sms_recipients.strip():
        raise SettingsError("sms_enabled is true but sms_recipients is empty. Fix: list the family doctors' numbers (+905...), or sms_enabled = false.")


def adapter_for(s: Settings) -> NationalRecordAdapter | None:
    if not s.report_fhir_enabled:
        return None
    if s.report_adapter == "enabiz":
        return EnabizAdapter()
    return FhirTransactionAdapter(s.report_fhir_url, token=s.report_fhir_token, timeout_s=s.report_fhir_timeout_s)


def gateway_for(s: Settings) -> SmsGateway | None:
    if not (s.sms_enabled and s.sms_gateway_url):
        return None
    return SmsGateway(s.sms_gateway_url, token=s.sms_gateway_token, sender=s.sms_sender, timeout_s=s.sms_timeout_s)


def sweep_confirmed(db: sqlite_utils.Database, queue: JobQueue, s: Settings, box_id: str, now: float | None = None) -> list[str]:
    """Queue the FHIR send of every study that waited for a radiologist and now has one; returns their UIDs."""
    now = time.time() if now is None else now
    queued = []
    for uid in facts.study_uids_awaiting(db):
        conf = facts.confirmation(db, uid)
        with transaction(db) as d:
            got = route_fhir(d, queue, s, uid, conf is not None, now, fhir.report_identifier(box_id, uid),
                             key=f"fhir:{uid}:confirmed:{conf.created_at if conf else 0}")
        if got == "queued":
            queued.append(uid)
    return queued


def notify_loop(worker: Worker, handler: SmsHandler, stop: threading.Event, poll_s: float = POLL_S) -> None:
    """Claim notices one at a time, waiting first for as long as the rate limits ask."""
    while not stop.is_set():
        try:
            wait = handler.wait_s()
            if wait > 0:
                stop.wait(min(wait, 30.0))
                continue
            if not worker.run_once():
                stop.wait(poll_s)
        except Exception:  # the loop must outlive a database hiccup
            log.exception("notify worker: unexpected error; retrying")
            stop.wait(poll_s)


def _loop(name: str, body: Callable[[], None], stop: threading.Event, period_s: float) -> None:
    while not stop.wait(period_s):
        try:
            body()
        except Exception:
            log.exception("%s failed; retrying next period", name)


def start_services(box: Box, stop: threading.Event) -> list[threading.Thread]:
    s = box.settings
    check_settings(s)
    box_id = box.keystore.box_id
    threads: list[threading.Thread] = []

    db = open_database(s.db_path, max_size_mb=s.db_max_size_mb)
    queue = JobQueue(db, retry_policy(s))
    report = ReportHandler(db, queue, s, box_id=box_id, master_key=box.keystore.master_key(), adapter=adapter_for(s), signer=box.keystore)
    report_worker = Worker(queue, REPORT_QUEUE, report, name="report", lease_s=max(s.queue_lease_s, s.report_fhir_timeout_s * 3), poll_s=POLL_S, stop=stop)

    sms_db = open_database(s.db_path, max_size_mb=s.db_max_size_mb)
    sms_queue = JobQueue(sms_db, retry_policy(s))
    sms = SmsHandler(sms_db, s, box_id=box_id, gateway=gateway_for(s), signer=box.keystore)
    sms_worker = Worker(sms_queue, NOTIFY_QUEUE, sms, name="notify", lease_s=max(s.queue_lease_s, s.sms_timeout_s * 3), stop=stop)

    def run_reports() -> None:
        report_worker.run()
        db.conn.close()

    def run_notices() -> None:
        notify_loop(sms_worker, sms, stop)
        sms_db.conn.close()

    threads.append(threading.Thread(target=run_reports, name="report-worker", daemon=True))
    threads.append(threading.Thread(target=run_notices, name="notify-worker", daemon=True))
    sweep_db = open_database(s.db_path, max_size_mb=s.db_max_size_mb)
    sweep_queue = JobQueue(sweep_db, retry_policy(s))
    threads.append(threading.Thread(target=_loop, args=("report sweep", lambda: sweep_confirmed(sweep_db, sweep_queue, s, box_id), stop, SWEEP_S),
                                    name="report-sweep", daemon=True))
    for t in threads:
        t.start()
    if s.metrics_enabled:
        try:
            threads.append(start_metrics(box, stop))
        except OSError as exc:  # reports and notices still go out without the endpoint
            log.error("metrics endpoint could not listen on %s:%s (%s). Fix: free the port or set metrics_port (env MAMMO_METRICS_PORT).",
                      s.metrics_host, s.metrics_port, exc)
    fhir_to = adapter_for(s)
    log.info("reporting: FHIR %s; SMS %s", f"on, to {fhir_to.endpoint()}" if fhir_to else "off", "on" if s.sms_enabled else "off")
    return threads


def start_metrics(box: Box, stop: threading.Event) -> threading.Thread:
    """Serve /metrics until ``stop``; returns the thread that shuts it down (already started)."""
    s = box.settings
    mdb = open_database(s.db_path, max_size_mb=s.db_max_size_mb)
    server = metrics.MetricsServer(metrics.registry_for(metrics.BoxCollector(mdb, s, box_id=box.keystore.box_id)), s.metrics_host, s.metrics_port)
    server.start()
    log.info("metrics: serving http://%s:%d/metrics", s.metrics_host, server.port)

    def watch() -> None:
        stop.wait()
        server.stop()
        mdb.conn.close()

    t = threading.Thread(target=watch, name="metrics-stop", daemon=True)
    t.start()
    return t
