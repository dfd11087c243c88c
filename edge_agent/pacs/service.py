"""The PACS link as the rest of the box uses it: the daemon's export worker, and the functions the kiosk and the CLI call.

For the kiosk:

- on referral, ``refer_to_pacs(services.ingest.queue, services.settings,
  study_uid, requested_by=username)`` queues the study to every
  *identified* destination (the woman's care team) and returns their
  ``ExportState`` rows (empty when no PACS is configured: the printed
  referral is then the only way);
- ``export_states(services.db, study_uid)`` gives the per-destination state
  to show on the study page (queued / sending / retrying / sent / failed,
  with objects sent and the last error);
- the "schedule screening" form calls ``schedule_screening(services.ingest.worklist,
  patient_id=..., name="SURNAME^GIVEN", birth_date=..., accession=...,
  requested_by=username)`` (a PacsError's text says what to fix), and
  ``worklist_today(services.ingest.worklist)`` lists the day's entries. Both
  carry identity: show them to signed-in users only.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import sqlite_utils

from edge_agent import audit
from edge_agent.errors import PacsError
from edge_agent.pacs import outbox
from edge_agent.pacs.destinations import find, parse_destinations
from edge_agent.pacs.outbox import ExportState
from edge_agent.pacs.worklist import WorklistBook, WorklistEntry

if TYPE_CHECKING:
    from edge_agent.box import Box
    from edge_agent.pacs.export import ExportHandler
    from edge_agent.queue import JobQueue
    from edge_agent.settings import Settings
    from edge_agent.worker import Worker

log = logging.getLogger(__name__)

POLL_S = 1.0
#: An export's lease: long enough to send a study of real-size images to a slow PACS (the handler's own timeouts are shorter).
LEASE_S = 900.0

__all__ = ["ExportState", "WorklistEntry", "export_states", "export_study", "refer_to_pacs", "schedule_screening", "start_services",
           "worklist_today"]


def export_study(queue: JobQueue, settings: Settings, study_uid: str, destination: str, *, requested_by: str) -> ExportState:
    """Queue one study to one configured destination (AE@host:port); once: an export already queued or sent is returned as it is."""
    configured = parse_destinations(settings.pacs_destinations)
    dest = find(configured, destination)
    if dest is None:
        known = ", ".join(str(d) for d in configured) or "none"
        raise PacsError(f"{destination} is not a configured PACS destination (configured: {known}). "
                        "Fix: add it to pacs_destinations (env MAMMO_PACS_DESTINATIONS) as AE_TITLE@host:port/identified.")
    if queue.db.execute("SELECT 1 FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone() is None:
        raise PacsError(f"No study {study_uid} on this box. Fix: copy the study UID from the kiosk's study page or `mammo export list`.")
    return outbox.request(queue, dest, study_uid, requested_by=requested_by, max_attempts=settings.pacs_max_attempts)


def refer_to_pacs(queue: JobQueue, settings: Settings, study_uid: str, *, requested_by: str) -> list[ExportState]:
    """The kiosk's referral: the study to every identified destination (the care team); [] when none is configured."""
    return [export_study(queue, settings, study_uid, d.name, requested_by=requested_by)
            for d in parse_destinations(settings.pacs_destinations) if d.identified]


def export_states(db: sqlite_utils.Database, study_uid: str | None = None, limit: int = 50) -> list[ExportState]:
    """Per-destination export state of a study (or the latest exports): for the kiosk's study page and the console."""
    return outbox.states(db, study_uid, limit)


CONSOLE_WORDS = {
    "tr": {"title": "PACS gönderimi", "queued": "sırada", "sending": "gönderiliyor", "retrying": "yeniden denenecek",
           "sent": "gönderildi", "failed": "başarısız"},
    "en": {"title": "PACS exports", "queued": "queued", "sending": "sending", "retrying": "retrying", "sent": "sent", "failed": "failed"},
}


def console_line(db: sqlite_utils.Database, lang: str) -> str:
    """The console's queues screen: exports by state, and the latest stuck one with its reason ('' when nothing was exported)."""
    from rich.markup import escape

    words = CONSOLE_WORDS.get(lang, CONSOLE_WORDS["en"])
    counts = outbox.counts(db)
    if not counts:
        return ""
    order = ("queued", "sending", "retrying", "sent", "failed")
    line = f"[b]{words['title']}[/b]  " + " · ".join(f"{words[s]} {counts[s]}" for s in order if counts.get(s))
    stuck = outbox.stuck(db)
    if stuck is not None:
        line += f"\n[red]{escape(stuck.destination)} {stuck.study_uid[:20]}…: {escape((stuck.last_error or '')[:160])}[/red]"
    return line


def worklist_book(box: Box) -> WorklistBook:
    """The CLI's worklist; the kiosk and the receiver use their ingest service's (``IngestService.worklist``), the same table."""
    return WorklistBook(box.db, box.keystore.master_key(), zone=box.settings.timezone)


def schedule_screening(book: WorklistBook, *, patient_id: str, name: str, birth_date: str, accession: str, scheduled: str | None = None,
                       requested_by: str) -> WorklistEntry:
    """Put a woman on the modality worklist (the kiosk's form, `mammo worklist add`); the audit names the entry, not her."""
    entry = book.add(patient_id=patient_id, name=name, birth_date=birth_date, accession=accession, scheduled=scheduled)
    audit.append(book.db, requested_by, "worklist_scheduled", None, {"entry": entry.id, "scheduled": entry.scheduled})
    return entry


def worklist_today(book: WorklistBook, day: str | None = None) -> list[WorklistEntry]:
    """A day's entries (default today, clinic time), scheduled and done."""
    return book.entries(day=day)


def make_worker(box: Box, stop: threading.Event) -> tuple[Worker, ExportHandler]:
    """The export worker on its own database connection (a thread owns it)."""
    from edge_agent.box import retry_policy
    from edge_agent.ingest.service import IngestService
    from edge_agent.pacs.export import ExportHandler
    from edge_agent.queue import JobQueue
    from edge_agent.store import open_database
    from edge_agent.worker import Worker

    db = open_database(box.settings.db_path, max_size_mb=box.settings.db_max_size_mb)
    queue = JobQueue(db, retry_policy(box.settings))
    ingest = IngestService(db=db, keystore=box.keystore, queue=queue, settings=box.settings)
    handler = ExportHandler(db, ingest, box.settings, box.keystore.master_key())
    return Worker(queue, outbox.QUEUE, handler, name="pacs-export", lease_s=LEASE_S, poll_s=POLL_S, stop=stop), handler


def wait_done(box: Box, study_uid: str, destination: str, timeout_s: float) -> ExportState | None:
    """Run exports in this process until this one is sent or failed, or the time is up (`mammo export study --wait`)."""
    stop = threading.Event()
    worker, _ = make_worker(box, stop)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            state = outbox.state_of(box.db, study_uid, destination)
            if state is None or state.state in ("sent", "failed") or time.monotonic() >= deadline:
                return state
            if not worker.run_once():
                time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    finally:
        worker.queue.db.conn.close()


def start_services(box: Box, stop: threading.Event) -> list[threading.Thread]:
    """Daemon hook: the export worker (it idles when nothing is queued; destinations are read per job)."""
    dests = parse_destinations(box.settings.pacs_destinations)
    log.info("PACS export: %s", ", ".join(map(str, dests)) if dests else "no destination configured (pacs_destinations)")
    worker, _ = make_worker(box, stop)

    def run() -> None:
        try:
            while not stop.is_set():
                try:
                    worker.run()
                except Exception:
                    log.exception("PACS export worker failed; restarting it")
                    stop.wait(POLL_S)
        finally:
            worker.queue.db.conn.close()

    thread = threading.Thread(target=run, name="pacs-export", daemon=True)
    thread.start()
    return [thread]
