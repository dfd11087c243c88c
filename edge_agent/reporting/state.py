"""The reporting component's table: what happened last to each report and notice (``reporting_deliveries``).

The queue holds the work (``report`` and ``notify`` jobs, with their retries);
this table holds what a person reads: state, the last reason, attempts, when
delivered. The kiosk, the console and the CLI read it through these
functions only.

States::

    disabled ─ the channel was off when the study was reported (nothing left the box)
    awaiting_confirmation ─► queued ─► sending ─► delivered
                                ▲         │
                                └─ retrying (reason kept) ◄┘ ─► failed (attempts spent; requeue to try again)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlite_utils

STATES = ("disabled", "awaiting_confirmation", "queued", "sending", "retrying", "delivered", "failed")
CHANNELS = ("fhir", "sms")


@dataclass(frozen=True)
class Delivery:
    study_uid: str
    channel: str
    target: str
    state: str
    detail: str
    identifier: str | None
    attempts: int
    updated_at: float
    delivered_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLS = "study_uid, channel, target, state, detail, identifier, attempts, updated_at, delivered_at"


def record(db: sqlite_utils.Database, study_uid: str, channel: str, state: str, *, now: float, target: str = "", detail: str = "",
           identifier: str | None = None, attempts: int | None = None) -> None:
    """Set the row's state (inside the caller's transaction, or as its own statement). A delivered row stays delivered."""
    assert state in STATES and channel in CHANNELS
    db.execute(
        "INSERT INTO reporting_deliveries (study_uid, channel, target, state, detail, identifier, attempts, created_at, updated_at, delivered_at)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, coalesce(?7, 0), ?8, ?8, CASE WHEN ?4 = 'delivered' THEN ?8 END)"
        " ON CONFLICT (study_uid, channel, target) DO UPDATE SET state = ?4, detail = ?5, identifier = coalesce(?6, identifier),"
        " attempts = coalesce(?7, attempts), updated_at = ?8, delivered_at = CASE WHEN ?4 = 'delivered' THEN ?8 ELSE delivered_at END"
        " WHERE state != 'delivered' OR ?4 = 'delivered'",
        [study_uid, channel, target, state, detail[:1000], identifier, attempts, now],
    )


def of_study(db: sqlite_utils.Database, study_uid: str) -> list[Delivery]:
    return [Delivery(*r) for r in db.execute(f"SELECT {_COLS} FROM reporting_deliveries WHERE study_uid = ? ORDER BY channel, target",
                                             [study_uid])]


def get(db: sqlite_utils.Database, study_uid: str, channel: str, target: str = "") -> Delivery | None:
    r = db.execute(f"SELECT {_COLS} FROM reporting_deliveries WHERE study_uid = ? AND channel = ? AND target = ?",
                   [study_uid, channel, target]).fetchone()
    return Delivery(*r) if r else None


def latest(db: sqlite_utils.Database, limit: int = 50, state: str | None = None) -> list[Delivery]:
    sql = f"SELECT {_COLS} FROM reporting_deliveries"
    args: list[Any] = []
    if state:
        sql += " WHERE state = ?"
        args.append(state)
    return [Delivery(*r) for r in db.execute(sql + " ORDER BY updated_at DESC LIMIT ?", [*args, limit])]


def counts(db: sqlite_utils.Database) -> dict[tuple[str, str], int]:
    """(channel, state) -> how many, every pair present (0 when none): for the console and the metrics."""
    out = {(c, s): 0 for c in CHANNELS for s in STATES}
    for channel, st, n in db.execute("SELECT channel, state, count(*) FROM reporting_deliveries GROUP BY channel, state"):
        out[(channel, st)] = n
    return out


def sent_since(db: sqlite_utils.Database, channel: str, since: float) -> list[float]:
    """When each delivery of ``channel`` after ``since`` was made (the SMS rate limit counts them)."""
    return [float(r[0]) for r in db.execute("SELECT delivered_at FROM reporting_deliveries WHERE channel = ? AND delivered_at > ?"
                                            " ORDER BY delivered_at", [channel, since])]


# -- what the kiosk shows (the doctor reads Turkish; the technician's English reasons stay in the console and CLI) --------

KIOSK_TITLE = {"tr": "Gönderimler", "en": "Sent out"}
KIOSK_CHANNEL = {"tr": {"fhir": "Ulusal kayıt raporu", "sms": "Aile hekimi SMS"},
                 "en": {"fhir": "Report to the national record", "sms": "Family doctor SMS"}}
KIOSK_STATE = {
    "tr": {"disabled": "kapalı, gönderilmiyor", "awaiting_confirmation": "radyolog değerlendirmesi bekleniyor", "queued": "sırada",
           "sending": "gönderiliyor", "retrying": "gönderilemedi, yeniden denenecek", "delivered": "iletildi",
           "failed": "gönderilemedi: teknisyene bildirin"},
    "en": {"disabled": "switched off, not sent", "awaiting_confirmation": "waiting for the radiologist's reading", "queued": "queued",
           "sending": "sending", "retrying": "not delivered yet, will retry", "delivered": "delivered",
           "failed": "not delivered: tell the technician"},
}


@dataclass(frozen=True)
class KioskLine:
    channel: str
    state: str
    text: str


def kiosk_lines(db: sqlite_utils.Database, study_uid: str, lang: str) -> list[KioskLine]:
    """One line per channel for the study page, in the reader's language (several SMS recipients: the least advanced state)."""
    lang = lang if lang in KIOSK_STATE else "tr"
    order = {s: i for i, s in enumerate(("failed", "retrying", "sending", "queued", "awaiting_confirmation", "disabled", "delivered"))}
    worst: dict[str, str] = {}
    for d in of_study(db, study_uid):
        if d.channel not in worst or order[d.state] < order[worst[d.channel]]:
            worst[d.channel] = d.state
    return [KioskLine(c, s, f"{KIOSK_CHANNEL[lang][c]}: {KIOSK_STATE[lang][s]}") for c, s in sorted(worst.items())]
