"""Delivery of screening reports: the ``report`` queue's handler and the FHIR endpoint client.

Life of a report::

    inference ack ─► report job {study_uid}          (edge_agent.inference.worker, one per study)
                        │ route (one transaction): SMS jobs if priority, and for FHIR one of
                        ├─► disabled                 report_fhir_enabled is off: nothing leaves the box
                        ├─► awaiting_confirmation    no radiologist categories yet; the sweep queues it once there are
                        └─► report job {kind: fhir}  (key fhir:<study>, report_max_attempts attempts)
                                 │ send: audit 'report_send' first, then POST the transaction Bundle
                                 ├─ 2xx transaction-response, every entry 2xx ─► delivered (+ audit, in the ack)
                                 └─ down, slow, 4xx, 5xx, garbage ─► retrying with the reason (+ audit); the queue retries
                                                                     with backoff; after the last attempt: failed

Resending is safe: every entry is a conditional create on a stable
identifier, so a Bundle whose answer was lost (timeout after the server
created it, a crash before the ack, a restart) finds its resources already
there the next time and creates nothing twice. A delivered report is never
sent again, whatever job names it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlite_utils

from edge_agent import audit
from edge_agent.errors import DeliveryFailed, ReportingError
from edge_agent.queue import PRIORITY_URGENT, Effect, Job, JobQueue
from edge_agent.reporting import fhir, state
from edge_agent.reporting.enabiz import NationalRecordAdapter, Package, Receipt
from edge_agent.reporting.facts import ScreeningFacts, gather
from edge_agent.settings import Settings
from edge_agent.store import transaction

log = logging.getLogger(__name__)

REPORT_QUEUE = "report"
NOTIFY_QUEUE = "notify"
ACTOR = "reporting"


# -- pure: what an answer means ---------------------------------------------------------------------

def read_transaction_response(status: int, body: bytes, entries: int) -> Receipt:
    """A FHIR server's answer to a transaction, or DeliveryFailed saying what was wrong with it."""
    text = body[:2000].decode("utf-8", "replace")
    if not 200 <= status < 300:
        raise DeliveryFailed(f"FHIR endpoint answered HTTP {status}: {_outcome_text(text) or text[:200] or 'no body'}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise DeliveryFailed(f"FHIR endpoint answered HTTP {status} with a body that is not JSON ({text[:80]!r}); not counted as delivered") from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle" or doc.get("type") != "transaction-response":
        kind = doc.get("resourceType") if isinstance(doc, dict) else type(doc).__name__
        raise DeliveryFailed(f"FHIR endpoint answered HTTP {status} with {kind}, not a transaction-response Bundle; not counted as delivered")
    got = doc.get("entry") or []
    if not isinstance(got, list) or len(got) != entries:
        raise DeliveryFailed(f"FHIR endpoint's transaction-response has {len(got) if isinstance(got, list) else 'no'} entries for {entries} sent")
    created = existing = 0
    for i, e in enumerate(got):
        code = str(((e or {}).get("response") or {}).get("status", "")) if isinstance(e, dict) else ""
        if code.startswith("201"):
            created += 1
        elif code.startswith("200"):
            existing += 1
        else:
            raise DeliveryFailed(f"FHIR endpoint's transaction-response entry {i} has status {code or 'missing'!r}")
    return Receipt(status, created, existing, f"HTTP {status}: {created} created, {existing} already there")


def _outcome_text(text: str) -> str:
    """The diagnostics of an OperationOutcome body, when it is one."""
    try:
        doc = json.loads(text)
    except ValueError:
        return ""
    if isinstance(doc, dict) and doc.get("resourceType") == "OperationOutcome":
        return "; ".join(str(i.get("diagnostics") or i.get("code") or "") for i in doc.get("issue") or [] if isinstance(i, dict))[:300]
    return ""


def endpoint_label(url: str) -> str:
    """Host and path of an endpoint, never credentials or a query: what the audit trail and the screens show."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"


# -- the FHIR endpoint ------------------------------------------------------------------------------

class FhirTransactionAdapter:
    """``report_adapter = fhir``: the Bundle itself, POSTed to the FHIR base URL as a transaction."""

    name = "fhir"

    def __init__(self, url: str, *, token: str | None, timeout_s: float, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.transport = transport

    def endpoint(self) -> str:
        return endpoint_label(self.url)

    def package(self, bundle: dict[str, Any], identifier: str) -> Package:
        return Package("application/fhir+json", fhir.to_json(bundle), identifier, len(bundle.get("entry") or []))

    def send(self, package: Package) -> Receipt:
        headers = {"Content-Type": package.content_type + "; charset=utf-8", "Accept": "application/fhir+json",
                   "Prefer": "return=minimal", "User-Agent": "MammoAI-TR-Edge"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with httpx.Client(timeout=self.timeout_s, transport=self.transport, follow_redirects=False) as client:
                resp = client.post(self.url, content=package.body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"FHIR endpoint {self.endpoint()} did not answer within {self.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"FHIR endpoint {self.endpoint()} unreachable: {type(exc).__name__}: {exc}") from None
        return read_transaction_response(resp.status_code, resp.content, package.entries)


# -- the report queue's handler ----------------------------------------------------------------------

class ReportHandler:
    """Handles both kinds of ``report`` job: the per-study trigger from inference and the FHIR send."""

    def __init__(self, db: sqlite_utils.Database, queue: JobQueue, settings: Settings, *, box_id: str, master_key: bytes,
                 adapter: NationalRecordAdapter | None, signer: audit.Signer | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.queue, self.settings = db, queue, settings
        self.box_id, self.master_key = box_id, master_key
        self.adapter, self.signer, self.clock = adapter, signer, clock

    def __call__(self, job: Job) -> Effect | None:
        kind = job.payload.get("kind", "study")
        if kind == "fhir":
            return self.send(job)
        return self.route(str(job.payload["study_uid"]))

    def facts(self, study_uid: str, *, identified: bool) -> ScreeningFacts:
        s = self.settings
        return gather(self.db, study_uid, box_id=self.box_id, box_name=s.box_name, box_city=s.box_city,
                      master_key=self.master_key if identified else None)

    # the trigger: decide, queue, record (one transaction: the ack's)
    def route(self, study_uid: str) -> Effect:
        facts = self.facts(study_uid, identified=False)
        s, now = self.settings, self.clock()
        recipients = [p.strip() for p in s.sms_recipients.split(",") if p.strip()]

        def effect(db: sqlite_utils.Database) -> None:
            if facts.priority:
                if s.sms_enabled and s.sms_gateway_url and recipients:
                    for to in recipients:
                        self.queue.enqueue_tx(db, NOTIFY_QUEUE, {"kind": "sms", "study_uid": study_uid, "to": to},
                                              key=f"sms:{study_uid}:{to}", priority=PRIORITY_URGENT, max_attempts=s.sms_max_attempts)
                        state.record(db, study_uid, "sms", "queued", now=now, target=mask_phone(to))
                else:
                    state.record(db, study_uid, "sms", "disabled", now=now, detail="sms_enabled is off or no sms_recipients/sms_gateway_url")
            route_fhir(db, self.queue, s, study_uid, facts.confirmation is not None, now, fhir.report_identifier(self.box_id, study_uid))
        return effect

    # the send
    def send(self, job: Job) -> Effect | None:
        study_uid = str(job.payload["study_uid"])
        now = self.clock()
        ident = fhir.report_identifier(self.box_id, study_uid)
        current = state.get(self.db, study_uid, "fhir")
        if current is not None and current.state == "delivered":
            return None  # sent and acknowledged already: never twice
        if not self.settings.report_fhir_enabled or self.adapter is None:
            return lambda db: state.record(db, study_uid, "fhir", "disabled", now=now, identifier=ident,
                                           detail="report_fhir_enabled was switched off before the send")
        facts = self.facts(study_uid, identified=True)
        if facts.confirmation is None:
            return lambda db: state.record(db, study_uid, "fhir", "awaiting_confirmation", now=now, identifier=ident)
        if facts.identity is None:
            self._failed(job, study_uid, ident, "the study's re-identification entry is missing or cannot be opened; the report cannot name the patient")
            raise ReportingError(f"Study {study_uid[:24]}…: no readable identity. Fix: check `mammo audit verify` and the keystore; requeue with `mammo report send`.")
        bundle = fhir.build_bundle(facts, patient_id_system=self.settings.report_patient_id_system)
        fhir.validate(bundle)
        package = self.adapter.package(bundle, ident)
        where = self.adapter.endpoint()
        with transaction(self.db) as db:  # in the trail before a byte leaves the box
            audit.append(db, ACTOR, "report_send", study_uid, {"channel": "fhir", "adapter": self.adapter.name, "endpoint": where,
                                                                "identifier": ident, "attempt": job.attempts, "entries": package.entries,
                                                                "sha256": _sha(package.body)}, signer=self.signer,
                         checkpoint_every=self.settings.audit_checkpoint_every)
            state.record(db, study_uid, "fhir", "sending", now=now, identifier=ident, attempts=job.attempts, detail=f"to {where}")
        try:
            receipt = self.adapter.send(package)
        except DeliveryFailed as exc:
            self._failed(job, study_uid, ident, str(exc))
            raise
        log.info("report %s… delivered to %s (%s)", study_uid[:16], where, receipt.detail)

        def delivered(db: sqlite_utils.Database) -> None:
            state.record(db, study_uid, "fhir", "delivered", now=self.clock(), identifier=ident, attempts=job.attempts, detail=receipt.detail)
            audit.append(db, ACTOR, "report_delivered", study_uid, {"channel": "fhir", "endpoint": where, "identifier": ident,
                                                                    "http_status": receipt.status, "created": receipt.created,
                                                                    "existing": receipt.existing}, signer=self.signer,
                         checkpoint_every=self.settings.audit_checkpoint_every)
        return delivered

    def _failed(self, job: Job, study_uid: str, ident: str, reason: str) -> None:
        final = job.attempts >= job.max_attempts
        where = self.adapter.endpoint() if self.adapter is not None else ""
        with transaction(self.db) as db:
            state.record(db, study_uid, "fhir", "failed" if final else "retrying", now=self.clock(), identifier=ident, attempts=job.attempts,
                         detail=reason + (" (attempts spent: `mammo report send` tries again)" if final else ""))
            audit.append(db, ACTOR, "report_send_failed", study_uid, {"channel": "fhir", "endpoint": where, "identifier": ident,
                                                                      "attempt": job.attempts, "reason": reason[:500], "final": final},
                         signer=self.signer, checkpoint_every=self.settings.audit_checkpoint_every)
        log.warning("report %s… not delivered (attempt %d/%d): %s", study_uid[:16], job.attempts, job.max_attempts, reason)


def route_fhir(db: sqlite_utils.Database, queue: JobQueue, s: Settings, study_uid: str, confirmed: bool, now: float, ident: str,
               *, key: str | None = None) -> str:
    """Inside the caller's transaction: queue the study's FHIR send, or record why not. Returns the state set."""
    current = state.get(db, study_uid, "fhir")
    if current is not None and current.state == "delivered":
        return "delivered"
    if not s.report_fhir_enabled:
        state.record(db, study_uid, "fhir", "disabled", now=now, identifier=ident, detail="report_fhir_enabled is off")
        return "disabled"
    if not confirmed:
        state.record(db, study_uid, "fhir", "awaiting_confirmation", now=now, identifier=ident,
                     detail="sent once a radiologist's BI-RADS and density are recorded")
        return "awaiting_confirmation"
    queue.enqueue_tx(db, REPORT_QUEUE, {"kind": "fhir", "study_uid": study_uid}, key=key or f"fhir:{study_uid}",
                     max_attempts=s.report_max_attempts)
    state.record(db, study_uid, "fhir", "queued", now=now, identifier=ident, detail="")
    return "queued"


def mask_phone(number: str) -> str:
    """Enough of a number for a person to tell recipients apart, not enough to dial it: +90532…67#a1b2c3."""
    import hashlib

    return f"{number[:6]}…{number[-2:]}#{hashlib.sha256(number.encode()).hexdigest()[:6]}"


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
