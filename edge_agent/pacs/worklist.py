"""The modality worklist: today's scheduled screenings, served to the mammography unit by C-FIND.

A technician (or the kiosk's "schedule screening" form) enters the woman
once; the unit asks the box for the day's list (Modality Worklist
Information Model - FIND, on the receiver's port, known peers only) and
puts her Patient ID and Accession Number into the images it sends back, so
nobody retypes an ID at the unit. When those images arrive, ingest calls
:meth:`WorklistBook.link_arrival` inside its own transaction: the entry is
marked done and remembers the (de-identified) study it became.

Worklist rows are identified data and are kept like ``ingest_reid``: the
name, ID, birth date and accession number are sealed with the box master
key. ``match_key``, an HMAC of patient ID and accession under a secret
derived from that key, is what ingest looks up; it names no one.

The query matching (:func:`matches`, :func:`answer`) is pure: the receiver's
C-FIND handler feeds it the stored entries and the unit's identifier.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from edge_agent.errors import PacsError
from edge_agent.store import transaction
from provisioning.envelope import open_sealed, seal

MODALITY = "MG"
PROCEDURE = "Screening mammography"
STEP_DESCRIPTION = "MAMOGRAFİ TARAMA"
_AAD = b"mammo-worklist:"


@dataclass(frozen=True)
class WorklistEntry:
    """One scheduled screening, opened (identified: for the box's own screens, the CLI and the unit only)."""

    id: int
    patient_id: str
    name: str
    birth_date: str
    accession: str
    scheduled: str  # YYYYMMDDHHMM, clinic time
    state: str  # scheduled | done
    study_uid: str | None  # the de-identified study its images became

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- pure parts ---------------------------------------------------------------------------------
def match_secret(master_key: bytes) -> bytes:
    return hmac.new(master_key, b"mammo-worklist-match", hashlib.sha256).digest()


def match_key(secret: bytes, patient_id: str, accession: str) -> str:
    """What finds an entry from an arriving image's Patient ID and Accession Number (both trimmed, as DICOM pads them)."""
    return hmac.new(secret, f"{patient_id.strip()}\x1f{accession.strip()}".encode(), hashlib.sha256).hexdigest()


def study_uid_for(secret: bytes, key: str) -> str:
    """The Study Instance UID the worklist hands the unit for an entry (stable: asked twice, the same UID)."""
    return "2.25." + str(int.from_bytes(hmac.new(secret, b"study:" + key.encode(), hashlib.sha256).digest()[:16], "big"))


def check_entry(patient_id: str, name: str, birth_date: str, accession: str, scheduled: str) -> None:
    """Refuse what a mammography unit would choke on, with the fix (CLI and kiosk show it)."""
    problems = []
    if not patient_id.strip() or len(patient_id) > 64 or "\\" in patient_id:
        problems.append("--patient-id must be 1-64 characters without backslash")
    if not name.strip() or "^" not in name or len(name) > 64 or "\\" in name or "=" in name:
        problems.append('--name must be written SURNAME^GIVEN (e.g. "ÇELİK^AYŞE"), at most 64 characters')
    if not _is_date(birth_date, "%Y%m%d"):
        problems.append("--birth-date must be a real date as YYYYMMDD")
    if not accession.strip() or len(accession) > 16 or "\\" in accession:
        problems.append("--accession must be 1-16 characters without backslash")
    if not _is_date(scheduled, "%Y%m%d%H%M"):
        problems.append("--scheduled must be YYYYMMDDHHMM")
    if problems:
        raise PacsError("Worklist entry refused: " + "; ".join(problems) + ".")


def _is_date(text: str, fmt: str) -> bool:
    try:
        dt.datetime.strptime(text, fmt)
    except ValueError:
        return False
    return len(text) == len(dt.datetime(2000, 1, 1).strftime(fmt))


def _dicom_match(pattern: Any, value: str) -> bool:
    """DICOM single-value and wildcard matching (``*``, ``?``); an empty key matches everything. PN case-insensitive."""
    text = str(pattern or "").strip()
    if not text or text == "*":
        return True
    return fnmatch.fnmatchcase(value.strip().upper(), text.upper().replace("[", "[[]"))


def _date_range(value: Any) -> tuple[str, str] | None:
    """A DA key (YYYYMMDD, a range, or open-ended) as inclusive bounds; None: no constraint."""
    text = str(value or "").strip()
    if not text:
        return None
    if "-" not in text:
        return text, text
    lo, _, hi = text.partition("-")
    return lo.strip() or "00000000", hi.strip() or "99999999"


def matches(entry: WorklistEntry, identifier: Dataset, today: str) -> bool:
    """Does a scheduled entry answer the unit's query? With no date asked, today's entries do."""
    if entry.state != "scheduled":
        return False
    step = _step(identifier)
    modality = str(step.get("Modality", "") or "").strip()
    if modality and modality not in (MODALITY, "*"):
        return False
    bounds = _date_range(step.get("ScheduledProcedureStepStartDate", "")) or (today, today)
    if not bounds[0] <= entry.scheduled[:8] <= bounds[1]:
        return False
    return (_dicom_match(identifier.get("PatientID", ""), entry.patient_id)
            and _dicom_match(identifier.get("PatientName", ""), entry.name)
            and _dicom_match(identifier.get("AccessionNumber", ""), entry.accession))


def _step(identifier: Dataset) -> Dataset:
    seq = identifier.get("ScheduledProcedureStepSequence")
    return seq[0] if seq else Dataset()


def charset_for(*texts: str) -> str:
    """Latin-5 (ISO_IR 148, the Turkish set units know best) when it holds every character, else UTF-8."""
    try:
        for t in texts:
            t.encode("iso8859_9")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return "ISO_IR 148"


def answer(entry: WorklistEntry, identifier: Dataset, study_uid: str, station_ae: str) -> Dataset:
    """The C-FIND response for one entry: the return keys the unit asked for, filled where the box knows them."""
    step = Dataset()
    step.Modality = MODALITY
    step.ScheduledStationAETitle = station_ae
    step.ScheduledProcedureStepStartDate = entry.scheduled[:8]
    step.ScheduledProcedureStepStartTime = entry.scheduled[8:12] + "00"
    step.ScheduledProcedureStepDescription = STEP_DESCRIPTION
    step.ScheduledProcedureStepID = entry.accession
    step.ScheduledPerformingPhysicianName = ""
    full = Dataset()
    full.SpecificCharacterSet = charset_for(entry.name, entry.patient_id)
    full.PatientName = entry.name
    full.PatientID = entry.patient_id
    full.PatientBirthDate = entry.birth_date
    full.PatientSex = "F"
    full.AccessionNumber = entry.accession
    full.StudyInstanceUID = study_uid
    full.RequestedProcedureID = entry.accession
    full.RequestedProcedureDescription = PROCEDURE
    full.ReferringPhysicianName = ""
    full.ScheduledProcedureStepSequence = Sequence([step])
    out = Dataset()
    out.SpecificCharacterSet = full.SpecificCharacterSet
    for elem in identifier:
        if elem.keyword == "SpecificCharacterSet":
            continue
        if elem.keyword == "ScheduledProcedureStepSequence":
            asked = elem.value[0] if elem.value else None
            item = Dataset()
            for sub in (asked if asked is not None and len(asked) else step):
                item[sub.tag] = step[sub.tag] if sub.tag in step else sub
            out.ScheduledProcedureStepSequence = Sequence([item])
        elif elem.tag in full:
            out[elem.tag] = full[elem.tag]
        else:
            out[elem.tag] = elem  # asked for, not known here: returned empty (as asked)
    return out


# -- the table ----------------------------------------------------------------------------------
class WorklistBook:
    """The worklist over the box database; ``zone`` is the clinic's time zone (what 'today' means)."""

    def __init__(self, db: sqlite_utils.Database, master_key: bytes, *, zone: str = "Europe/Istanbul",
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._master = master_key
        self._secret = match_secret(master_key)
        self.zone = ZoneInfo(zone)
        self.clock = clock

    def today(self) -> str:
        return dt.datetime.fromtimestamp(self.clock(), self.zone).strftime("%Y%m%d")

    def add(self, *, patient_id: str, name: str, birth_date: str, accession: str, scheduled: str | None = None) -> WorklistEntry:
        """Schedule a screening (now, clinic time, unless ``scheduled`` says when); one entry per patient ID + accession."""
        patient_id, name, accession = patient_id.strip(), name.strip(), accession.strip()
        when = scheduled or dt.datetime.fromtimestamp(self.clock(), self.zone).strftime("%Y%m%d%H%M")
        check_entry(patient_id, name, birth_date, accession, when)
        key = match_key(self._secret, patient_id, accession)
        plain = json.dumps({"patient_id": patient_id, "name": name, "birth_date": birth_date, "accession": accession},
                           ensure_ascii=False).encode("utf-8")
        at = dt.datetime.strptime(when, "%Y%m%d%H%M").replace(tzinfo=self.zone).timestamp()
        now = self.clock()
        with transaction(self.db) as db:
            if db.execute("SELECT 1 FROM pacs_worklist WHERE match_key = ?", [key]).fetchone():
                raise PacsError(f"Accession {accession} is already on the worklist for this patient. Fix: use a new accession number.")
            cur = db.execute(
                "INSERT INTO pacs_worklist (match_key, scheduled_day, scheduled_at, sealed, state, created_at) VALUES (?, ?, ?, ?, 'scheduled', ?)",
                [key, when[:8], at, seal(self._master, plain, _AAD + key.encode()), now],
            )
            entry_id = int(cur.lastrowid or 0)
        return WorklistEntry(entry_id, patient_id, name, birth_date, accession, when, "scheduled", None)

    def _open(self, row: tuple[Any, ...]) -> WorklistEntry:
        entry_id, key, sealed, state, study_uid, scheduled_at = row
        data = json.loads(open_sealed(self._master, sealed, _AAD + key.encode()).decode("utf-8"))
        when = dt.datetime.fromtimestamp(scheduled_at, self.zone).strftime("%Y%m%d%H%M")
        return WorklistEntry(entry_id, data["patient_id"], data["name"], data["birth_date"], data["accession"], when, state, study_uid)

    def entries(self, *, day: str | None = None, days: tuple[str, str] | None = None) -> list[WorklistEntry]:
        """Entries of one day (default today) or of a range of days, in scheduled order."""
        lo, hi = days or ((day or self.today()),) * 2
        rows = self.db.execute(
            "SELECT id, match_key, sealed, state, study_uid, scheduled_at FROM pacs_worklist WHERE scheduled_day BETWEEN ? AND ?"
            " ORDER BY scheduled_at, id", [lo, hi]).fetchall()
        return [self._open(tuple(r)) for r in rows]

    def find(self, identifier: Dataset, station_ae: str) -> Iterator[Dataset]:
        """The C-FIND answers to a unit's query (the receiver checked the peer before this is called)."""
        today = self.today()
        bounds = _date_range(_step(identifier).get("ScheduledProcedureStepStartDate", "")) or (today, today)
        for entry in self.entries(days=bounds):
            if matches(entry, identifier, today):
                yield answer(entry, identifier, study_uid_for(self._secret, match_key(self._secret, entry.patient_id, entry.accession)),
                             station_ae)

    def link_arrival(self, db: sqlite_utils.Database, patient_id: str, accession: str, study_uid: str, now: float) -> bool:
        """Inside ingest's transaction: the scheduled entry these images answer is done, and knows its study."""
        if not patient_id.strip() or not accession.strip():
            return False
        cur = db.execute(
            "UPDATE pacs_worklist SET state = 'done', study_uid = ?, done_at = ? WHERE match_key = ? AND state = 'scheduled'",
            [study_uid, now, match_key(self._secret, patient_id, accession)],
        )
        return cur.rowcount == 1

    def accession_of(self, study_uid: str) -> str:
        """The accession number the unit put in a study's images ('' when it came without a worklist entry)."""
        row = self.db.execute("SELECT id, match_key, sealed, state, study_uid, scheduled_at FROM pacs_worklist WHERE study_uid = ?"
                              " ORDER BY id LIMIT 1", [study_uid]).fetchone()
        return self._open(tuple(row)).accession if row else ""
