"""Sending a study to a PACS: the ``pacs`` queue's job handler, and the C-STORE SCU it drives.

One job = one study to one destination. Per attempt: build this
destination's copies (``transform``), open one association, C-ECHO, then
C-STORE each object not yet acknowledged, in order: for each view its image
and its heatmap (``capture``), then the study's SR (``sr``). Each
acknowledgement is recorded at once (``outbox.record_sent``), so an attempt
that breaks off (the PACS stopped, the network went) resumes where it
stopped, and the job is retried with the queue's backoff. The ack effect
marks the export sent. The objects' UIDs are derived from the study, the
destination's keys and the model's manifest, never drawn at random: an
object resent is the same object.

The images must have an AI result first: while the study waits for
inference, the attempt fails with "waiting" and is retried. A study whose
inference ended incomplete or failed goes without SR and heatmaps.
"""

from __future__ import annotations

import io
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
import sqlite_utils
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from edge_agent import audit, export_keys
from edge_agent.errors import MammoError, PacsError, PacsUnavailable
from edge_agent.ingest.deid import DeidKeys
from edge_agent.ingest.service import IngestService
from edge_agent.pacs import capture, iod, outbox, sr, transform
from edge_agent.pacs.destinations import Destination, find, parse_destinations
from edge_agent.queue import Effect, Job
from edge_agent.settings import Settings
from edge_agent.store import transaction

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
#: Statuses after which the PACS holds the object: success, and the coercion/elements-discarded warnings (PS3.4 B.2.3).
STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class Outgoing:
    """One object of an export, as this destination gets it."""

    kind: str  # image | heatmap | sr
    dataset: Dataset


class PacsLink:
    """One association to a destination (C-ECHO, then C-STOREs); every refusal becomes PacsUnavailable with the fix."""

    def __init__(self, dest: Destination, calling_ae: str, timeout_s: float) -> None:
        self.dest = dest
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        self.assoc: Association | None = None

    def reachable(self) -> None:
        """A plain TCP connect first: a PACS that is down says so clearly (and pynetdicom leaks the socket of a refused connect)."""
        try:
            with socket.create_connection((self.dest.host, self.dest.port), timeout=self.timeout_s):
                pass
        except OSError as exc:
            raise PacsUnavailable(
                f"PACS {self.dest.name} did not answer ({exc.strerror or exc}). The export stays queued and is retried; "
                "check that the PACS is running and reachable from the box.") from None

    def open(self, contexts: set[tuple[str, str]]) -> PacsLink:
        self.reachable()
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        ae.add_requested_context(VERIFICATION)
        for sop_class in sorted({c for c, _ in contexts}):
            syntaxes = [ts for c, ts in sorted(contexts) if c == sop_class]
            ae.add_requested_context(sop_class, list(dict.fromkeys([*syntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.ae_title)
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "did not answer"
            raise PacsUnavailable(
                f"PACS {self.dest.name} {why}. The export stays queued and is retried; check that the PACS is running and "
                f"lists this box's AE title {self.calling_ae} (and its address) as a known modality.")
        self.assoc = assoc
        return self

    def echo(self) -> None:
        status = self._live().send_c_echo()
        if getattr(status, "Status", None) != 0x0000:
            raise PacsUnavailable(f"PACS {self.dest.name} did not answer the C-ECHO (verification). The export stays queued and is retried.")

    def store(self, ds: Dataset) -> None:
        assoc = self._live()
        accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == ds.SOPClassUID]
        if not accepted:
            raise PacsError(f"PACS {self.dest.name} does not accept {ds.SOPClassUID.name} objects. The export is retried; "
                            "fix: ask the PACS administrator to accept that SOP class from this box's AE title.")
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        if ts is not None and ts.is_compressed and all(cx.transfer_syntax[0] != ts for cx in accepted):
            ds.decompress(generate_instance_uid=False)  # the PACS takes it only uncompressed; same object, same UID
        status = assoc.send_c_store(ds)
        code = getattr(status, "Status", None)
        if code is None:
            raise PacsUnavailable(f"PACS {self.dest.name} stopped answering during the export (association lost). "
                                  "What it acknowledged is kept; the rest is sent when it is back.")
        if code not in STORED:
            raise PacsUnavailable(f"PACS {self.dest.name} refused {ds.SOPClassUID.name} {ds.SOPInstanceUID} with status 0x{code:04X}. "
                                  "The export is retried; if it keeps failing, check the PACS's log for that status.")

    def _live(self) -> Association:
        if self.assoc is None or not self.assoc.is_established:
            raise PacsUnavailable(f"PACS {self.dest.name}: the association ended during the export; it is retried.")
        return self.assoc

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


@dataclass(frozen=True)
class _Study:
    pseudonym: str
    rows: list[tuple[str, str, str, str]]  # sop_uid, digest, laterality, view (the box's stored copies)
    result: dict[str, Any] | None
    manifest_sha256: str


class ExportHandler:
    """Handles ``pacs`` jobs; ``ingest`` gives the image store, the box's de-identification keys, identities and the worklist."""

    def __init__(self, db: sqlite_utils.Database, ingest: IngestService, settings: Settings, master_key: bytes,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.ingest = ingest
        self.settings = settings
        self._master = master_key
        self.clock = clock

    def destination(self, name: str) -> Destination:
        dest = find(parse_destinations(self.settings.pacs_destinations), name)
        if dest is None:
            raise PacsError(f"Destination {name} is no longer in pacs_destinations. Fix: add it back (env MAMMO_PACS_DESTINATIONS) "
                            "for the export to be retried, or leave it to fail.")
        return dest

    def __call__(self, job: Job) -> Effect:
        study_uid, name = str(job.payload["study_uid"]), str(job.payload["destination"])
        with transaction(self.db) as db:
            outbox.mark(db, study_uid, name, "sending", now=self.clock(), attempts=job.attempts)
        try:
            dest = self.destination(name)
            study = self._study(study_uid)
            self._send(dest, study_uid, study)
        except Exception as exc:
            text = str(exc) if isinstance(exc, MammoError) else f"{type(exc).__name__}: {exc}"
            state = "failed" if job.attempts >= job.max_attempts else "retrying"
            with transaction(self.db) as db:
                outbox.mark(db, study_uid, name, state, now=self.clock(), error=text[:2000])
            log.warning("export of study %s… to %s: attempt %d/%d failed (%s)", study_uid[:16], name, job.attempts, job.max_attempts, text)
            raise
        now = self.clock()

        def effect(db: sqlite_utils.Database) -> None:
            outbox.mark(db, study_uid, name, "sent", now=now)
            audit.append(db, outbox.ACTOR, "pacs_export_sent", study_uid, {"destination": name, "mode": dest.mode}, at=now)

        log.info("study %s… sent to %s (%s)", study_uid[:16], name, dest.mode)
        return effect

    # -- what goes ---------------------------------------------------------------------------------
    def _study(self, study_uid: str) -> _Study:
        from edge_agent.inference.worker import result_of

        row = self.db.execute("SELECT pseudonym, modality, infer_job_id FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone()
        if row is None:
            raise PacsError(f"No study {study_uid} on this box. Fix: check the study UID with `mammo studies` or the kiosk.")
        rows = [tuple(r) for r in self.db.execute(
            "SELECT sop_uid, digest, laterality, view FROM ingest_instances WHERE study_uid = ? ORDER BY laterality DESC, view, sop_uid",
            [study_uid]).fetchall()]
        result = result_of(self.db, study_uid)
        if result is None and row[1] == "MG":
            raise PacsUnavailable("The study is waiting for its AI result; the export follows once inference has run (retried).")
        manifest = ""
        if result is not None:
            got = self.db.execute("SELECT manifest_sha256 FROM model_activations WHERE version = ? ORDER BY id DESC LIMIT 1",
                                  [result["model_version"]]).fetchone()
            manifest = got[0] if got else ""
        return _Study(row[0], rows, result, manifest)

    def _keys(self, dest: Destination) -> DeidKeys:
        if dest.identified:
            return self.ingest.keys
        key = outbox.destination_key(self.db, self._master, dest.name, now=self.clock())
        return export_keys.deid_keys(key, self.settings.ingest_date_shift_max_days)

    def objects(self, dest: Destination, study_uid: str, study: _Study, skip: frozenset[str] = frozenset()) -> Iterator[Outgoing]:
        """This destination's copies, in sending order; each image's pixels live only until its heatmap is made.

        A heatmap whose UID is in ``skip`` (acknowledged before) is not made again; images are always read (the SR needs them).
        """
        keys = self._keys(dest)
        identity = accession = None
        if dest.identified:
            identity = self.ingest.identity_of(study.pseudonym)
            if identity is None:
                raise PacsError(f"Study {study_uid}: the box has no identity for it, so it cannot go to an identified destination. "
                                "Fix: send it to a deidentified destination.")
            accession = self.ingest.worklist.accession_of(study_uid)
        done = study.result is not None and study.result["status"] == "done"
        by_sop = {v["sop_uid"]: v for v in (study.result or {}).get("views", [])} if done else {}
        headers: dict[str, Dataset] = {}
        for i, (sop_uid, digest, _lat, _view) in enumerate(study.rows):
            ds = pydicom.dcmread(io.BytesIO(self.ingest.store.get(digest)))
            if identity is not None:
                transform.reidentify(ds, identity, keys, accession=accession or "")
            else:
                transform.research(ds, keys)
            yield Outgoing("image", ds)
            view = by_sop.get(sop_uid)
            heat_uid = transform.derived_uid(keys, "heatmap", sop_uid, study.manifest_sha256)
            if view is not None and heat_uid not in skip:
                yield Outgoing("heatmap", capture.heatmap_image(
                    ds, self.ingest.store.get(view["heatmap_digest"]), instance_number=i + 1, sop_uid=heat_uid,
                    series_uid=transform.derived_uid(keys, "heatmap-series", study_uid, study.manifest_sha256)))
            del ds.PixelData  # the SR needs the header only
            headers[sop_uid] = ds
        if done and study.result is not None:
            yield Outgoing("sr", self._report(keys, study_uid, study, headers))

    def _report(self, keys: DeidKeys, study_uid: str, study: _Study, headers: dict[str, Dataset]) -> Dataset:
        r = study.result
        assert r is not None
        views = tuple(
            sr.ViewResult(str(headers[v["sop_uid"]].SOPClassUID), str(headers[v["sop_uid"]].SOPInstanceUID), v["laterality"], v["view"],
                          float(v["suspicion"] if v["suspicion"] is not None else v["p_abnormal"]), int(v["peak_x"]), int(v["peak_y"]))
            for v in r["views"] if v["sop_uid"] in headers)
        breasts = {k: float(v["suspicion"] if isinstance(v, dict) else v) for k, v in r["breast_scores"].items() if v is not None}
        result = sr.AiResult(r["triage"], r["study_score"], breasts, views,
                             r["model_version"], study.manifest_sha256, r["backend"])
        uid = {n: transform.derived_uid(keys, "track", study_uid, study.manifest_sha256, n) for n in sr.uid_names(result)}
        return sr.build(result, list(headers.values()), uid=uid,
                        series_uid=transform.derived_uid(keys, "sr-series", study_uid, study.manifest_sha256),
                        sop_uid=transform.derived_uid(keys, "sr", study_uid, study.manifest_sha256),
                        device_uid=transform.derived_uid(keys, "device"))

    # -- sending -------------------------------------------------------------------------------------
    def _contexts(self, study: _Study) -> set[tuple[str, str]]:
        """Presentation contexts to propose: each stored image's SOP class and transfer syntax, the SR's and the heatmaps'."""
        out: set[tuple[str, str]] = {(iod.COMPREHENSIVE_SR, str(ExplicitVRLittleEndian)), (iod.SECONDARY_CAPTURE, str(ExplicitVRLittleEndian))}
        for _sop, digest, _l, _v in study.rows:
            head = pydicom.dcmread(io.BytesIO(self.ingest.store.get(digest)), stop_before_pixels=True)
            out.add((str(head.SOPClassUID), str(head.file_meta.TransferSyntaxUID)))
        return out

    def _send(self, dest: Destination, study_uid: str, study: _Study) -> None:
        already = outbox.sent_uids(self.db, dest.name, study_uid)
        total = len(study.rows)
        if study.result is not None and study.result["status"] == "done":
            total += 1 + len(study.result["views"])
        with transaction(self.db) as db:
            outbox.mark(db, study_uid, dest.name, "sending", now=self.clock(), total=total)
        link = PacsLink(dest, self.settings.dicom_ae_title, self.settings.pacs_timeout_s).open(self._contexts(study))
        try:
            link.echo()
            for out in self.objects(dest, study_uid, study, frozenset(already)):
                uid = str(out.dataset.SOPInstanceUID)
                if uid in already:
                    continue
                bad = iod.problems(out.dataset) if out.kind != "image" else []
                if bad:
                    raise PacsError(f"The box made an incomplete {out.kind} object ({'; '.join(bad)}); it was not sent. "
                                    "This is a defect of the box: report it with `mammo export list --json`.")
                link.store(out.dataset)
                outbox.record_sent(self.db, dest.name, study_uid, uid, out.kind, self.clock())
        finally:
            link.close()


def describe(state: outbox.ExportState) -> str:
    """One line for the console and the CLI."""
    line = f"{state.destination} [{state.mode}] {state.state} {state.objects_sent}/{state.objects_total}"
    return line + (f" ({state.last_error})" if state.last_error and state.state != "sent" else "")

