"""The kiosk's side of the PACS link (issue 16): referral exports, the export state it shows, the "schedule screening" form.

The box side lives in :mod:`edge_agent.pacs.service`; this module only turns
its answers into what a page shows, in the reader's language. Its errors
(``PacsError``) are English for the CLI, so the form maps each refused field
to a catalog key here: no English reaches a Turkish page.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.errors import PacsError
from edge_agent.pacs import service as pacs
from edge_agent.pacs.outbox import ExportState
from edge_agent.pacs.worklist import check_entry
from kiosk_ui.i18n import Catalog, tr_upper

if TYPE_CHECKING:
    from edge_agent.pacs.worklist import WorklistBook
    from edge_agent.queue import JobQueue
    from edge_agent.settings import Settings

log = logging.getLogger(__name__)

EXPORT_STATES = ("queued", "sending", "retrying", "sent", "failed")
# Which field a PacsError's text blames (worklist.check_entry's wording) -> the catalog key that says the same in the reader's language.
_FIELD_PROBLEMS = (("--patient-id", "schedule.bad_patient_id"), ("--name", "schedule.bad_name"), ("--birth-date", "schedule.bad_birth_date"),
                   ("--accession", "schedule.bad_accession"), ("--scheduled", "schedule.bad_scheduled"))


@dataclass(frozen=True)
class ExportLine:
    destination: str
    state: str
    text: str


def refer(queue: JobQueue, settings: Settings, study_uid: str, username: str) -> list[ExportState]:
    """Queue a referred study to every identified PACS; a PACS problem never stops the printed referral (it is logged)."""
    try:
        return pacs.refer_to_pacs(queue, settings, study_uid, requested_by=username)
    except PacsError as exc:
        log.warning("referral of %s not queued to PACS: %s", study_uid, exc)
        return []


def export_lines(states: list[ExportState], t: Catalog) -> list[ExportLine]:
    """One line per destination: where, what state, how many objects went."""
    out = []
    for s in states:
        state = s.state if s.state in EXPORT_STATES else "queued"
        words = t(f"pacs.state.{state}")
        text = (t("pacs.line", destination=s.destination, state=words, sent=s.objects_sent, total=s.objects_total) if s.objects_total
                else t("pacs.line_waiting", destination=s.destination, state=words))  # counts once the export worker has built the study
        out.append(ExportLine(s.destination, state, text))
    return out


@dataclass(frozen=True)
class ScheduleForm:
    patient_id: str = ""
    surname: str = ""
    given: str = ""
    birth_date: str = ""  # YYYY-MM-DD, as <input type=date> sends it
    accession: str = ""
    scheduled: str = ""  # YYYY-MM-DDTHH:MM, as <input type=datetime-local> sends it; empty: now

    @property
    def name(self) -> str:
        """DICOM PN, family name first, in Turkish capitals (what the unit prints)."""
        return f"{tr_upper(self.surname.strip())}^{tr_upper(self.given.strip())}"

    def dicom_birth_date(self) -> str:
        return self.birth_date.replace("-", "").strip()

    def dicom_scheduled(self) -> str | None:
        text = self.scheduled.strip()
        if not text:
            return None
        try:
            return dt.datetime.fromisoformat(text).strftime("%Y%m%d%H%M")
        except ValueError:
            return text  # worklist.check_entry refuses it, with its field named


def problem_keys(form: ScheduleForm, exc: PacsError) -> list[str]:
    """Catalog keys for what the box refused; a name needs both parts even when the box only sees 'X^'."""
    text = str(exc)
    if "already on the worklist" in text:
        return ["schedule.duplicate"]
    keys = [key for marker, key in _FIELD_PROBLEMS if marker in text]
    return keys or ["schedule.refused"]


def missing_name_part(form: ScheduleForm) -> bool:
    return not form.surname.strip() or not form.given.strip()


def schedule(book: WorklistBook, form: ScheduleForm, username: str) -> list[str]:
    """Put the woman on the worklist; [] when done, else the catalog keys of what to fix."""
    if missing_name_part(form):  # "ÇELİK^" passes the box's check; the kiosk asks for both, and names every other problem too
        try:
            check_entry(form.patient_id.strip(), "X^X", form.dicom_birth_date(), form.accession.strip(), form.dicom_scheduled() or "200001010000")
        except PacsError as exc:
            return ["schedule.bad_name", *problem_keys(form, exc)]
        return ["schedule.bad_name"]
    try:
        pacs.schedule_screening(book, patient_id=form.patient_id, name=form.name, birth_date=form.dicom_birth_date(),
                                accession=form.accession, scheduled=form.dicom_scheduled(), requested_by=username)
    except PacsError as exc:
        return problem_keys(form, exc)
    return []
