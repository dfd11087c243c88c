"""The family doctor's SMS notice ("aile hekimi SMS bildirimi") for a study that needs priority review.

The text is Turkish, short, and says only that a screening study on this box
waits for a priority radiologist review, with a study reference the doctor
finds in the kiosk (the reference the kiosk shows, and the end of the study
UID). No name, no ID, no category, no diagnosis: an SMS passes through an
operator and sits on a phone.

Gateway contract (``sms_gateway_url``): POST JSON
``{"to": "+90...", "text": "...", "sender": "...", "reference": "<idempotency key>"}``
with an ``Idempotency-Key`` header carrying the same key; any 2xx answer
with a JSON object body counts as accepted. Turkish operators' own APIs
(different field names, XML) need a small gateway or a subclass of
:class:`SmsGateway`; the retries, limits and audit stay here.

Retries come from the ``notify`` queue (backoff, then failed after
``sms_max_attempts``); the rate limits (``sms_per_minute``, ``sms_per_hour``) are
counted from the deliveries recorded in ``reporting_deliveries``, so they
hold across restarts and across processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence

import httpx
import sqlite_utils

from edge_agent import audit
from edge_agent.errors import DeliveryFailed
from edge_agent.queue import Effect, Job
from edge_agent.reporting import state
from edge_agent.reporting.delivery import ACTOR, endpoint_label, mask_phone
from edge_agent.reporting.facts import gather
from edge_agent.settings import Settings
from edge_agent.store import transaction

log = logging.getLogger(__name__)


def study_reference(pseudonym: str, study_uid: str) -> str:
    """What the doctor types into the kiosk's search: the woman's box reference and the end of the study UID."""
    return f"{pseudonym} / {study_uid[-6:]}"


def message_text(reference: str, box_name: str) -> str:
    """The notice. Workflow only: a study waits for a priority review; no finding, no category, no name."""
    return (f"MammoAI-TR ({box_name}): bir tarama mamografisi öncelikli radyolog incelemesi bekliyor. "
            f"Tetkik referansı: {reference}. Ayrıntılar cihaz ekranında.")


def rate_wait(sent: Sequence[float], now: float, per_minute: int, per_hour: int) -> float:
    """Seconds to wait before the next SMS so that no 60 s window holds more than ``per_minute`` and no hour more than ``per_hour``."""
    wait = 0.0
    for window, limit in ((60.0, per_minute), (3600.0, per_hour)):
        inside = sorted(t for t in sent if t > now - window)
        if len(inside) >= limit:
            wait = max(wait, inside[len(inside) - limit] + window - now)
    return max(0.0, wait)


def idempotency_key(box_id: str, study_uid: str, to: str) -> str:
    return hashlib.sha256(f"{box_id}|{study_uid}|{to}".encode()).hexdigest()[:32]


class SmsGateway:
    """The HTTP SMS gateway client: one POST per message, with a timeout; every failure is DeliveryFailed."""

    def __init__(self, url: str, *, token: str | None, sender: str, timeout_s: float) -> None:
        self.url, self.token, self.sender, self.timeout_s = url, token, sender, timeout_s

    def endpoint(self) -> str:
        return endpoint_label(self.url)

    def send(self, to: str, text: str, key: str) -> str:
        """Send one message; returns the gateway's message id (or '' when it gives none)."""
        headers = {"Idempotency-Key": key, "User-Agent": "MammoAI-TR-Edge"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
                resp = client.post(self.url, json={"to": to, "text": text, "sender": self.sender, "reference": key}, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"SMS gateway {self.endpoint()} did not answer within {self.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"SMS gateway {self.endpoint()} unreachable: {type(exc).__name__}: {exc}") from None
        return read_gateway_answer(resp.status_code, resp.content, resp.headers.get("Retry-After"))


def read_gateway_answer(status: int, body: bytes, retry_after: str | None = None) -> str:
    text = body[:300].decode("utf-8", "replace")
    if status == 429:
        raise DeliveryFailed(f"SMS gateway is rate limiting (HTTP 429{', Retry-After ' + retry_after + ' s' if retry_after else ''})")
    if not 200 <= status < 300:
        raise DeliveryFailed(f"SMS gateway answered HTTP {status}: {text[:200] or 'no body'}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise DeliveryFailed(f"SMS gateway answered HTTP {status} with a body that is not JSON ({text[:80]!r}); not counted as sent") from None
    if not isinstance(doc, dict):
        raise DeliveryFailed(f"SMS gateway answered HTTP {status} with {type(doc).__name__}, not a JSON object; not counted as sent")
    return str(doc.get("id") or doc.get("message_id") or "")


class SmsHandler:
    """The ``notify`` queue's handler for ``{kind: sms}`` jobs."""

    def __init__(self, db: sqlite_utils.Database, settings: Settings, *, box_id: str, gateway: SmsGateway | None,
                 signer: audit.Signer | None = None, clock: Callable[[], float] = time.time) -> None:
        self.db, self.settings, self.box_id, self.gateway, self.signer, self.clock = db, settings, box_id, gateway, signer, clock

    def wait_s(self) -> float:
        """How long the rate limits ask the worker to wait before it claims the next notice."""
        now = self.clock()
        return rate_wait(state.sent_since(self.db, "sms", now - 3600), now, self.settings.sms_per_minute, self.settings.sms_per_hour)

    def __call__(self, job: Job) -> Effect | None:
        if job.payload.get("kind") != "sms":
            raise DeliveryFailed(f"notify job {job.id} is of kind {job.payload.get('kind')!r}, which this box's notifier does not send")
        study_uid, to = str(job.payload["study_uid"]), str(job.payload["to"])
        target, now = mask_phone(to), self.clock()
        current = state.get(self.db, study_uid, "sms", target)
        if current is not None and current.state == "delivered":
            return None
        if not self.settings.sms_enabled or self.gateway is None:
            return lambda db: state.record(db, study_uid, "sms", "disabled", now=now, target=target, detail="sms_enabled was switched off")
        facts = gather(self.db, study_uid, box_id=self.box_id, box_name=self.settings.box_name, box_city=self.settings.box_city, master_key=None)
        reference = study_reference(facts.pseudonym, study_uid)
        key = idempotency_key(self.box_id, study_uid, to)
        with transaction(self.db) as db:
            audit.append(db, ACTOR, "sms_send", study_uid, {"channel": "sms", "to": target, "gateway": self.gateway.endpoint(),
                                                             "reference": reference, "attempt": job.attempts}, signer=self.signer,
                         checkpoint_every=self.settings.audit_checkpoint_every)
            state.record(db, study_uid, "sms", "sending", now=now, target=target, identifier=key, attempts=job.attempts)
        try:
            message_id = self.gateway.send(to, message_text(reference, self.settings.box_name), key)
        except DeliveryFailed as exc:
            final = job.attempts >= job.max_attempts
            with transaction(self.db) as db:
                state.record(db, study_uid, "sms", "failed" if final else "retrying", now=self.clock(), target=target, attempts=job.attempts,
                             detail=str(exc))
                audit.append(db, ACTOR, "sms_send_failed", study_uid, {"channel": "sms", "to": target, "reason": str(exc)[:500],
                                                                        "attempt": job.attempts, "final": final}, signer=self.signer,
                             checkpoint_every=self.settings.audit_checkpoint_every)
            log.warning("SMS for study %s… not sent (attempt %d/%d): %s", study_uid[:16], job.attempts, job.max_attempts, exc)
            raise

        def sent(db: sqlite_utils.Database) -> None:
            state.record(db, study_uid, "sms", "delivered", now=self.clock(), target=target, attempts=job.attempts,
                         detail=f"gateway id {message_id}" if message_id else "accepted by the gateway")
            audit.append(db, ACTOR, "sms_sent", study_uid, {"channel": "sms", "to": target, "message_id": message_id},
                         signer=self.signer, checkpoint_every=self.settings.audit_checkpoint_every)
        return sent
