"""The kiosk's typed view of the box: every query and write the pages need, in one place.

Pages get frozen records (:mod:`kiosk_ui.records`); nothing here knows
about HTTP. The kiosk opens its own connection to the box database so its
transactions never interleave with another service's on a shared
connection (SQLite WAL lets them run side by side).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import sqlite_utils

from edge_agent import audit as audit_trail
from edge_agent.clinic_time import day_start, local, midnight, parse_day
from edge_agent.errors import AuthError, KioskError, NotFound, StoreError, TooManyAttempts
from edge_agent.inference.activation import SHIPPED_DIR
from edge_agent.ingest.image_store import ImageStore
from edge_agent.ingest.service import IngestService
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import open_database, transaction
from kiosk_ui import auth, clinic_loop, imaging, model_info, signin, throttle, uploads
from kiosk_ui.clinic_loop import STATUS_SQL as _STATUS_SQL
from kiosk_ui.i18n import search_fold
from kiosk_ui.records import (
    AUDIT_PAGE_SIZE,
    BIRADS,
    CATEGORY_SOURCES,
    DENSITIES,
    STATUSES,
    TRIAGES,
    AuditEntry,
    AuditPage,
    AuditQuery,
    DayCounts,
    FeedbackEntry,
    FeedbackInput,
    Identity,
    RadiologyReport,
    RecallRow,
    ReportInput,
    Session,
    StatusBar,
    StudyView,
    UploadOutcome,
    User,
    ViewResult,
    WorklistQuery,
    WorklistRow,
    study_problems,
    study_status,
)
from kiosk_ui.workflow import BIOPSY_RESULTS, RECOMMENDATIONS, REPORT_SOURCES, WORKFLOW_SQL, WORKFLOW_STATES, follow_up_due

log = logging.getLogger(__name__)

_REVIEW = ("priority_radiologist_review", "radiologist_review")  # worklist ranks 1 and 2 (after incomplete studies); the rest last


class OnlineProbe:
    """Online means: a TCP connection to ``target`` (host:port) opened within a second at the last probe."""

    def __init__(self, target: str, period_s: float = 30.0) -> None:
        self.target = target.strip()
        self.period_s = period_s
        self.online = False

    def probe_once(self) -> bool:
        if not self.target or ":" not in self.target:
            self.online = False
            return False
        host, _, port = self.target.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                self.online = True
        except (OSError, ValueError):
            self.online = False
        return self.online

    def run(self, stop: threading.Event) -> None:
        while True:
            self.probe_once()
            if stop.wait(self.period_s):
                return


class _Lru:
    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make: Callable[[], object]):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = make()
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return value


class KioskServices:
    def __init__(self, settings: Settings, db: sqlite_utils.Database, ingest: IngestService, *,
                 probe: OnlineProbe | None = None, clock: Callable[[], float] = time.time,
                 passwords: auth.Passwords | None = None) -> None:
        self.settings = settings
        self.db = db
        self.ingest = ingest
        self.images: ImageStore = ingest.store
        self.probe = probe or OnlineProbe(settings.kiosk_online_probe)
        self.clock = clock
        self.passwords = passwords or auth.Passwords()
        self.policy = auth.LockoutPolicy(settings.kiosk_lockout_failures, settings.kiosk_lockout_s)
        self.source_rate = throttle.RatePolicy(settings.kiosk_signin_source_burst, settings.kiosk_signin_source_refill_s)
        self.account_rate = throttle.RatePolicy(settings.kiosk_signin_account_burst, settings.kiosk_signin_account_refill_s)
        self._identities: dict[str, Identity] = {}
        self._folded: dict[str, str] = {}  # pseudonym -> its identity folded for search (see _haystack)
        self._png = _Lru(256)
        self._models: dict[tuple[str, str, float], model_info.ModelInfo] = {}
        self.shipped_models = SHIPPED_DIR
        self.audit_signer: audit_trail.Signer | None = None  # the box key signs the trail's checkpoints (set by from_box)

    @classmethod
    def from_box(cls, box, **kw) -> KioskServices:
        db = open_database(box.settings.db_path, max_size_mb=box.settings.db_max_size_mb)
        queue = JobQueue(db, box.queue.policy)
        # In the daemon, uploads go through the ingest workers (hard per-file time limit); alone, in process.
        ingest = IngestService(db=db, keystore=box.keystore, queue=queue, settings=box.settings, pool=box.ingest_pool)
        services = cls(box.settings, db, ingest, **kw)
        services.audit_signer = box.keystore
        return services

    def close(self) -> None:
        self.db.conn.close()

    # -- accounts -------------------------------------------------------------------------------
    def user_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM kiosk_users WHERE active = 1").fetchone()[0]

    def add_user(self, username: str, password: str, role: str, full_name: str = "", *, by: str = "system") -> User:
        username = username.strip()
        if role not in auth.ROLES:
            raise KioskError("error.bad_role", f"Unknown role {role!r}; use one of {', '.join(auth.ROLES)}.")
        if not username or len(username) > 64 or any(c.isspace() for c in username):
            raise KioskError("error.bad_username", "A user name is 1-64 characters without spaces.")
        problem = auth.password_problem(password)
        if problem:
            raise KioskError("error.weak_password", problem)
        digest = self.passwords.hash(password)
        with transaction(self.db) as db:
            if db.execute("SELECT 1 FROM kiosk_users WHERE username = ?", [username]).fetchone():
                raise KioskError("error.user_exists", f"User {username!r} already exists; choose another name or use `mammo user passwd`.")
            cur = db.execute("INSERT INTO kiosk_users (username, full_name, role, password_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                             [username, full_name or username, role, digest, self.clock()])
            self._audit(db, by, "user_add", None, f"{username} ({role})")
        return User(cur.lastrowid, username, full_name or username, role)

    def set_password(self, username: str, password: str) -> None:
        problem = auth.password_problem(password)
        if problem:
            raise KioskError("error.weak_password", problem)
        digest = self.passwords.hash(password)
        with transaction(self.db) as db:
            n = db.execute("UPDATE kiosk_users SET password_hash = ? WHERE username = ?", [digest, username]).rowcount
            if not n:
                raise NotFound("error.user_unknown", f"No user {username!r}.")
            signin.forget_failures(db, username)
            db.execute("DELETE FROM kiosk_sessions WHERE user_id = (SELECT id FROM kiosk_users WHERE username = ?)", [username])
            self._audit(db, "system", "user_passwd", None, username)

    def unlock(self, username: str, *, by: str = "system") -> None:
        with transaction(self.db) as db:
            if not db.execute("SELECT 1 FROM kiosk_users WHERE username = ?", [username]).fetchone():
                raise NotFound("error.user_unknown", f"No user {username!r}.")
            signin.forget_failures(db, username)
            self._audit(db, by, "user_unlock", None, username)

    def users(self) -> list[tuple[User, bool]]:
        now = self.clock()
        return [(User(r[0], r[1], r[2], r[3]), auth.is_locked(r[4], now)) for r in self.db.execute(
            "SELECT u.id, u.username, u.full_name, u.role, l.locked_until FROM kiosk_users u"
            " LEFT JOIN kiosk_signin_lockouts l ON l.name = u.username WHERE u.active = 1 ORDER BY u.username").fetchall()]

    def sign_in(self, username: str, password: str, source: str = "") -> tuple[str, Session]:
        """A new session token for good credentials; raises AuthError (wrong credentials or locked), counting the failure.

        An unknown name takes the same path as a real one, step for step: a token from the same buckets, the same
        lock check, a full Argon2 verify (against a dummy hash), the same failure count, the same answer. ``source``
        is the client address; with it, failures are limited per address as well as per name (TooManyAttempts).
        """
        now = self.clock()
        name = username.strip()[:64]
        buckets = self._buckets(name, source)
        with transaction(self.db) as db:
            refusal = signin.reserve(db, buckets, now, refill_all_s=self._refill_all_s())
            limits = ", ".join(k.split(":")[0] for k in refusal.noted) if refusal else ""
            if limits:  # once a minute per bucket while it refuses, never once per try
                self._audit(db, name, "login_throttled", None, f"from {source or '?'}; limit reached for {limits}")
        if refusal:
            if limits:
                log.warning("kiosk sign-ins refused for %.0f s: too many failures per %s", refusal.retry_after_s, limits)
            raise TooManyAttempts("auth.throttled", "too many failed sign-ins", retry_after_s=refusal.retry_after_s)
        if signin.locked_until(self.db, name, now) is not None:
            with transaction(self.db) as db:
                self._audit(db, name, "login_locked", None, "")
            raise AuthError("auth.locked", f"Account {name} is locked.")
        row = self.db.execute("SELECT id, username, full_name, role, password_hash FROM kiosk_users WHERE username = ? AND active = 1",
                              [name]).fetchone()
        if not self.passwords.verify(row[4] if row is not None else None, password):  # always a full verify, known name or not
            with transaction(self.db) as db:
                locked_until = signin.record_failure(db, name, now, self.policy)
                if locked_until is not None:
                    self._audit(db, name, "account_locked", None, f"{self.policy.max_failures} failures")
                self._audit(db, name, "login_failed", None, "")
            if locked_until is not None:
                raise AuthError("auth.locked_now", "Too many wrong passwords; the account is now locked.")
            raise AuthError("auth.wrong", "Wrong user name or password.")
        token, csrf = auth.new_token(), auth.new_token()
        user = User(row[0], row[1], row[2], row[3])
        with transaction(self.db) as db:
            locked = signin.locked_until(db, name, now) is not None  # another attempt locked it while this one was verifying
            if not locked:
                signin.forget_failures(db, name)
                signin.give_back(db, buckets, now)
                db.execute("UPDATE kiosk_users SET last_login_at = ? WHERE id = ?", [now, user.id])
                db.execute("INSERT INTO kiosk_sessions (token_hash, user_id, csrf_token, created_at, last_seen) VALUES (?, ?, ?, ?, ?)",
                           [auth.token_hash(token), user.id, csrf, now, now])
            self._audit(db, user.username, "login_locked" if locked else "login", None, "")
        if locked:
            raise AuthError("auth.locked", f"Account {name} is locked.")
        return token, Session(user, csrf, auth.token_hash(token), now)

    def _buckets(self, name: str, source: str) -> list[tuple[str, throttle.RatePolicy]]:
        keys = [("account:" + name.casefold(), self.account_rate)]
        if source:
            keys.append(("source:" + source[:64], self.source_rate))
        return keys

    def _refill_all_s(self) -> float:
        return max(p.burst * p.refill_s for p in (self.account_rate, self.source_rate))

    def session(self, token: str | None, *, touch: bool = True) -> Session:
        """The live session behind a cookie; raises AuthError when missing or expired.

        ``touch`` resets the inactivity clock: a person did something. Background polling passes False so an
        unattended screen still signs itself out.
        """
        if not token:
            raise AuthError("auth.required", "Not signed in.")
        th = auth.token_hash(token)
        row = self.db.execute(
            "SELECT u.id, u.username, u.full_name, u.role, s.csrf_token, s.last_seen FROM kiosk_sessions s"
            " JOIN kiosk_users u ON u.id = s.user_id WHERE s.token_hash = ? AND u.active = 1", [th]).fetchone()
        if row is None:
            raise AuthError("auth.expired", "Session unknown or ended.")
        now = self.clock()
        if auth.is_expired(row[5], now, self.settings.kiosk_idle_timeout_s):
            with transaction(self.db) as db:
                db.execute("DELETE FROM kiosk_sessions WHERE token_hash = ?", [th])
                self._audit(db, row[1], "session_expired", None, "")
            raise AuthError("auth.expired", "Session expired after inactivity.")
        if touch and now - row[5] > 15:  # one write per quarter minute is plenty for an inactivity clock
            with transaction(self.db) as db:
                db.execute("UPDATE kiosk_sessions SET last_seen = ? WHERE token_hash = ?", [now, th])
        return Session(User(row[0], row[1], row[2], row[3]), row[4], th, now)

    def sign_out(self, session: Session) -> None:
        with transaction(self.db) as db:
            db.execute("DELETE FROM kiosk_sessions WHERE token_hash = ?", [session.token_hash])
            self._audit(db, session.user.username, "logout", None, "")

    # -- audit ----------------------------------------------------------------------------------
    def _audit(self, db: sqlite_utils.Database, username: str, action: str, study_uid: str | None, detail: str) -> None:
        """One entry in the box's hash-chained trail (edge_agent.audit), inside the caller's transaction."""
        audit_trail.append(db, username, action, study_uid, {"detail": detail} if detail else {}, at=self.clock(),
                           signer=self.audit_signer, checkpoint_every=self.settings.audit_checkpoint_every)

    def audit(self, username: str, action: str, study_uid: str | None = None, detail: str = "") -> None:
        with transaction(self.db) as db:
            self._audit(db, username, action, study_uid, detail)

    def audit_page(self, query: AuditQuery | None = None, page_size: int = AUDIT_PAGE_SIZE) -> AuditPage:
        """One page of the trail, newest first, filtered by user, action, study and day range."""
        query = query or AuditQuery()
        where, params = [], []
        if query.username:
            where.append("username = ? COLLATE NOCASE")
            params.append(query.username)
        if query.action:
            where.append("action = ?")
            params.append(query.action)
        if query.study_uid:
            where.append("study_uid = ?")
            params.append(query.study_uid)
        since, until = query.bounds(self.settings.timezone)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at < ?")
            params.append(until)
        sql = "SELECT at, username, action, study_uid, detail FROM kiosk_audit" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ? OFFSET ?", [*params, page_size + 1, (query.page - 1) * page_size]).fetchall()
        return AuditPage(tuple(AuditEntry(*r) for r in rows[:page_size]), query, len(rows) > page_size)

    # -- patients -------------------------------------------------------------------------------
    def identity(self, pseudonym: str) -> Identity:
        hit = self._identities.get(pseudonym)
        if hit is not None:
            return hit
        try:
            plain = self.ingest.identity_of(pseudonym)
        except Exception:  # a damaged map entry must not hide the study; the doctor sees the pseudonym instead
            log.exception("re-identification failed for a pseudonym")
            plain = None
        ident = Identity(str(plain.get("name") or ""), str(plain.get("patient_id") or ""), str(plain.get("birth_date") or "")) if plain else Identity.unknown()
        self._identities[pseudonym] = ident
        return ident

    # -- worklist -------------------------------------------------------------------------------
    def worklist(self, query: WorklistQuery | None = None) -> list[WorklistRow]:
        """Incomplete studies first (someone must complete them), then priority review, then review, then the rest;
        newest first within each; at most kiosk_worklist_limit rows.

        One query per rank, each walking an index in arrival order, so the page costs what it shows rather than
        what the database holds (a single ORDER BY over a computed rank sorts every study in the window). The
        workflow state (two lookups per study) is read afterwards for the rows shown only, unless the page filters on
        it: inside a rank query it was computed for every study the rank sorts or a search reads.
        """
        query = query or WorklistQuery()
        days = self.settings.kiosk_worklist_days if query.days is None else query.days
        if query.q.strip() and query.days is None:
            days = 0  # a search looks everywhere
        where, params = [], []
        if days:
            where.append("s.first_seen >= ?")
            params.append(self.clock() - days * 86400)
        if query.status in STATUSES:
            where.append(f"({_STATUS_SQL}) = ?")
            params.append(query.status)
        if query.flow in WORKFLOW_STATES:
            where.append(f"({WORKFLOW_SQL}) = ?")
            params.append(query.flow)
        needle = search_fold(query.q.strip().replace("^", " "))
        limit = self.settings.kiosk_worklist_limit
        rest = f"(r.triage IS NULL OR r.triage NOT IN ({','.join('?' * len(_REVIEW))})) AND (r.status IS NULL OR r.status != 'incomplete')"
        ranks = [("r.status = 'incomplete'", [])] + [("r.triage = ? AND r.status != 'incomplete'", [t]) for t in _REVIEW] + [(rest, list(_REVIEW))]
        if query.triage in TRIAGES:
            ranks = [("r.triage = ? AND r.status != 'incomplete'", [query.triage])]
        out: list[WorklistRow] = []
        for rank_sql, rank_params in ranks:
            if len(out) >= limit:
                break
            sql = (f"SELECT s.study_uid, s.pseudonym, s.first_seen, {_STATUS_SQL}, r.triage, r.study_score, r.reasons"
                   " FROM ingest_studies s LEFT JOIN infer_results r ON r.study_uid = s.study_uid"
                   " LEFT JOIN jobs j ON j.id = s.infer_job_id"
                   + (" LEFT JOIN kiosk_workflow w ON w.study_uid = s.study_uid" if query.flow in WORKFLOW_STATES else "")
                   + " WHERE " + " AND ".join([rank_sql, *where])
                   + " ORDER BY s.first_seen DESC")
            args = [*rank_params, *params]
            if not needle:
                sql += " LIMIT ?"
                args.append(limit - len(out))
            for r in self.db.execute(sql, args):
                ident = self.identity(r[1])
                if needle and not _matches(needle, self._haystack(r[1], ident), r[0]):
                    continue
                problems = study_problems(r[3], [str(x) for x in _json(r[6], [])], self._present(r[0])) if r[3] == "incomplete" else ()
                out.append(WorklistRow(r[0], r[1], ident, r[2], r[3], r[4], r[5], 0, problems))
                if len(out) >= limit:
                    break
        if not out:
            return out
        uids = [row.study_uid for row in out]
        counts = dict(self.db.execute(
            f"SELECT study_uid, count(*) FROM ingest_instances WHERE study_uid IN ({','.join('?' * len(uids))}) GROUP BY study_uid",
            uids).fetchall())
        flows = clinic_loop.workflows_of(self.db, uids)
        return [replace(row, image_count=counts.get(row.study_uid, 0), workflow=flows.get(row.study_uid, "new")) for row in out]

    def _haystack(self, pseudonym: str, ident: Identity) -> str:
        """What a search looks through for a woman, folded once per pseudonym (a search reads every study; folding the
        same name again for each was most of its time)."""
        hay = self._folded.get(pseudonym)
        if hay is None:
            hay = self._folded[pseudonym] = _fold_identity(ident, pseudonym)
        return hay

    def next_unseen(self) -> str | None:
        """The study a doctor should open next: the first one nobody has opened yet, in worklist order, with something
        to read (a result, or an incomplete study to sort out); None when every such study has been seen."""
        return next((r.study_uid for r in self.worklist(WorklistQuery(flow="new")) if r.status in ("done", "incomplete", "failed")), None)

    def today(self) -> DayCounts:
        """Studies that arrived since the clinic's midnight (settings.timezone), priority ones, and ones nobody opened."""
        return clinic_loop.day_counts(self.db, day_start(self.clock(), self.settings.timezone))

    def _present(self, study_uid: str) -> list[tuple[str, str]]:
        return [(r[0] or "?", r[1] or "?") for r in self.db.execute(
            "SELECT laterality, view FROM ingest_instances WHERE study_uid = ? AND modality = 'MG'", [study_uid])]

    # -- one study ------------------------------------------------------------------------------
    def study(self, study_uid: str) -> StudyView:
        row = self.db.execute(
            "SELECT s.study_uid, s.pseudonym, s.first_seen, s.state, j.state, r.status, r.triage, r.study_score, r.breast_scores,"
            " r.reasons, r.model_version, r.profile FROM ingest_studies s LEFT JOIN infer_results r ON r.study_uid = s.study_uid"
            " LEFT JOIN jobs j ON j.id = s.infer_job_id WHERE s.study_uid = ?", [study_uid]).fetchone()
        if row is None:
            raise NotFound("error.study_unknown", f"No study {study_uid[:40]!r} on this box.")
        results = {r[0]: r[1:] for r in self.db.execute(
            "SELECT sop_uid, p_abnormal, p_malignant, heatmap_digest, suspicion FROM infer_views WHERE study_uid = ?", [study_uid])}
        views = []
        for sop, lat, view in self.db.execute(
                "SELECT sop_uid, laterality, view FROM ingest_instances WHERE study_uid = ? ORDER BY"
                " CASE view WHEN 'CC' THEN 0 WHEN 'MLO' THEN 1 ELSE 2 END, CASE laterality WHEN 'R' THEN 0 ELSE 1 END, received_at",
                [study_uid]):
            res = results.get(sop)
            views.append(ViewResult(sop, lat, view, res[0] if res else None, res[1] if res else None, bool(res and res[2]),
                                    res[3] if res else None))
        status = study_status(row[3], row[4], row[5])
        reasons = tuple(str(x) for x in _json(row[9], []))
        present = [(v.laterality or "?", v.view or "?") for v in views]
        return StudyView(
            study_uid=row[0], pseudonym=row[1], identity=self.identity(row[1]), arrived_at=row[2],
            status=status, triage=row[6], study_score=row[7],
            breast_scores={side: float(b["suspicion"]) for side, b in _json(row[8], {}).items()}, reasons=reasons,
            model_version=row[10], profile=row[11], views=tuple(views), feedback=tuple(self.feedback_of(study_uid)),
            problems=study_problems(status, reasons, present), workflow=clinic_loop.workflow_of(self.db, study_uid),
            reports=clinic_loop.reports_of(self.db, study_uid), priors=clinic_loop.priors_of(self.db, study_uid, row[1]),
        )

    # -- the clinic's work on a study ------------------------------------------------------------
    def mark_seen(self, user: User, study_uid: str) -> None:
        """A clinician (a role that may give feedback) opened the study: it is no longer new."""
        if auth.may(user.role, "feedback"):
            with transaction(self.db) as db:
                clinic_loop.mark_seen(db, study_uid, user.username, self.clock())

    def mark_referred(self, user: User, study_uid: str) -> None:
        with transaction(self.db) as db:
            clinic_loop.mark_referred(db, study_uid, user.username, self.clock())

    def close_study(self, user: User, study_uid: str, closed: bool = True) -> None:
        """The doctor closes the study (the loop is done) or reopens it."""
        with transaction(self.db) as db:
            if not db.execute("SELECT 1 FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone():
                raise NotFound("error.study_unknown", "No such study.")
            clinic_loop.set_closed(db, study_uid, user.username, self.clock(), closed)
            self._audit(db, user.username, "study_close" if closed else "study_reopen", study_uid, "")

    def record_report(self, user: User, study_uid: str, rep: ReportInput) -> RadiologyReport:
        """The radiologist's report: from a radiologist's own account ('radiologist'), else copied from the paper report
        ('radiology_report') by whoever holds it; either way stored with who entered it. The follow-up day is the
        report's own, else the recommendation's interval from today (clinic's day)."""
        if rep.birads not in BIRADS or rep.density not in DENSITIES or rep.recommendation not in RECOMMENDATIONS \
                or rep.biopsy_result not in (None, *BIOPSY_RESULTS) or len(rep.notes) > 2000:
            raise KioskError("error.report_invalid", "BI-RADS 0-6, density A-D and a recommendation are required.")
        chosen = parse_day(rep.follow_up_day) if rep.follow_up_day else None
        if rep.follow_up_day and chosen is None:
            raise KioskError("error.report_invalid", f"follow-up day {rep.follow_up_day!r} is not a date")
        now, tz = self.clock(), self.settings.timezone
        today = local(now, tz).date()
        due = midnight(follow_up_due(rep.recommendation, today, chosen), tz)
        source = REPORT_SOURCES[0] if user.role == "radiologist" else REPORT_SOURCES[1]
        report = RadiologyReport(study_uid, rep.birads, rep.density, rep.recommendation, rep.biopsy_result, source, user.username, now,
                                 due, rep.notes, user.full_name)
        with transaction(self.db) as db:
            if not db.execute("SELECT 1 FROM ingest_studies WHERE study_uid = ?", [study_uid]).fetchone():
                raise NotFound("error.study_unknown", "No such study.")
            clinic_loop.add_report(db, report)
            self._audit(db, user.username, "radiology_report", study_uid,
                        f"BI-RADS {rep.birads} density {rep.density} {rep.recommendation} biopsy {rep.biopsy_result or '-'} ({source})")
        return report

    def recalls(self) -> list[RecallRow]:
        return clinic_loop.recalls(self.db, self.clock(), self.identity)

    def model_info(self, version: str | None, lang: str = "tr") -> model_info.ModelInfo:
        """Thresholds and measured performance of the release that produced a result (by its version).

        Looked up where the box keeps releases: the folders it activated, then the shipped and installed ones. A
        version found nowhere (a result written by a release since removed, or the synthetic demo) gets a ModelInfo
        with nothing known, which the pages show as "no performance measurement" and without heatmaps.
        """
        if not version:
            return model_info.ModelInfo(None)
        for folder in self._release_folders(version):
            path = folder / "model.json"
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            key = (str(path), lang, mtime)
            if key not in self._models:
                try:
                    info = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    log.warning("model.json of release %s is unreadable; the kiosk shows no performance for it", version)
                    continue
                if str(info.get("version", folder.name)) != version:
                    continue
                self._models[key] = model_info.parse(version, info, lang)
            return self._models[key]
        return model_info.ModelInfo(version)

    def _release_folders(self, version: str) -> list[Path]:
        activated = [Path(r[0]) for r in self.db.execute(
            "SELECT path FROM model_activations WHERE version = ? ORDER BY id DESC", [version]).fetchall()] if self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'model_activations'").fetchone() else []
        return [*activated, self.settings.models_dir / version, self.shipped_models / version]

    def study_state(self, study_uid: str) -> str:
        """Just the status word, for the page that waits for a result."""
        row = self.db.execute(
            f"SELECT {_STATUS_SQL} FROM ingest_studies s LEFT JOIN infer_results r ON r.study_uid = s.study_uid"
            " LEFT JOIN jobs j ON j.id = s.infer_job_id WHERE s.study_uid = ?", [study_uid]).fetchone()
        if row is None:
            raise NotFound("error.study_unknown", "No such study.")
        return row[0]

    def view_png(self, study_uid: str, sop_uid: str, max_side: int = 768) -> bytes:
        digest = self._instance_digest(study_uid, sop_uid)
        return self._png.get(("v", digest, max_side), lambda: imaging.view_png(self.images.get(digest), max_side))

    def heatmap_png(self, study_uid: str, sop_uid: str, max_side: int = 768) -> bytes:
        """The view's heatmap as an overlay, whatever its score (the pages decide whether to draw it: model_info)."""
        self._instance_digest(study_uid, sop_uid)
        row = self.db.execute("SELECT heatmap_digest FROM infer_views WHERE study_uid = ? AND sop_uid = ?", [study_uid, sop_uid]).fetchone()
        if row is None:
            raise NotFound("error.heatmap_unknown", "No heatmap for this view (not analysed yet).")
        return self._png.get(("h", row[0], max_side), lambda: imaging.heatmap_overlay_png(self.images.get(row[0]), max_side))

    def composite_png(self, study_uid: str, sop_uid: str, max_side: int = 512, *, heatmap: bool = True) -> bytes:
        """The view with its heatmap laid over when ``heatmap`` (for the referral)."""
        base = self.view_png(study_uid, sop_uid, max_side)
        if not heatmap:
            return base
        try:
            heat = self.heatmap_png(study_uid, sop_uid, max_side)
        except NotFound:
            return base
        return imaging.composite(base, heat)

    def _instance_digest(self, study_uid: str, sop_uid: str) -> str:
        row = self.db.execute("SELECT digest FROM ingest_instances WHERE study_uid = ? AND sop_uid = ?", [study_uid, sop_uid]).fetchone()
        if row is None:
            raise NotFound("error.view_unknown", "No such image in this study.")
        return row[0]

    # -- feedback -------------------------------------------------------------------------------
    def feedback_of(self, study_uid: str) -> Iterable[FeedbackEntry]:
        for r in self.db.execute("SELECT f.username, f.role, f.agrees, f.birads, f.density, f.notes, f.created_at, f.category_source,"
                                 " coalesce(u.full_name, f.username) FROM kiosk_feedback f LEFT JOIN kiosk_users u ON u.username = f.username"
                                 " WHERE f.study_uid = ? ORDER BY f.id", [study_uid]):
            yield FeedbackEntry(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7], r[8])

    def record_feedback(self, user: User, study_uid: str, fb: FeedbackInput) -> None:
        """The doctor's agreement and notes; BI-RADS and density only from a radiologist or from a radiology report."""
        has_categories = fb.birads is not None or fb.density is not None
        if len(fb.notes) > 2000 or (has_categories and (fb.birads not in BIRADS or fb.density not in DENSITIES)):
            raise KioskError("error.feedback_invalid", "BI-RADS 0-6 and density A-D together, notes up to 2000 characters.")
        if has_categories != (fb.category_source is not None) or fb.category_source not in (None, *CATEGORY_SOURCES[:2]):
            raise KioskError("error.categories_source", "BI-RADS and density need their source: a radiologist's account or a radiology report.")
        if fb.category_source == "radiologist" and user.role != "radiologist":
            raise KioskError("error.categories_source", f"role {user.role} entered categories as a radiologist")
        with transaction(self.db) as db:
            res = db.execute("SELECT s.study_uid, r.model_version, r.triage, r.status FROM ingest_studies s LEFT JOIN infer_results r"
                             " ON r.study_uid = s.study_uid WHERE s.study_uid = ?", [study_uid]).fetchone()
            if res is None:
                raise NotFound("error.study_unknown", "No such study.")
            if res[3] != "done" or res[2] is None:  # agreeing with no result would be a label about nothing
                raise KioskError("error.feedback_no_result", "This study has no AI result to agree or disagree with.")
            db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, category_source, notes, model_version,"
                       " triage, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [study_uid, user.username, user.role, int(fb.agrees), fb.birads, fb.density, fb.category_source, fb.notes, res[1],
                        res[2], self.clock()])
            categories = f" BI-RADS {fb.birads} density {fb.density} ({fb.category_source})" if has_categories else ""
            self._audit(db, user.username, "feedback", study_uid, f"{'agrees' if fb.agrees else 'disagrees'}{categories}")

    # -- upload ---------------------------------------------------------------------------------
    def upload(self, user: User, files: Sequence[tuple[str, bytes]]) -> list[UploadOutcome]:
        outcomes = [uploads.ingest_one(self.ingest, name, data, self.settings.ingest_max_file_bytes) for name, data in files]
        stored = sum(1 for o in outcomes if o.ok)
        studies = sorted({o.study_uid for o in outcomes if o.study_uid})
        with transaction(self.db) as db:
            for uid in studies or [None]:
                self._audit(db, user.username, "upload", uid, f"{stored}/{len(outcomes)} file(s) stored")
        return outcomes

    # -- status bar -----------------------------------------------------------------------------
    def status_bar(self) -> StatusBar:
        from edge_agent.sync_view import summary

        sync = summary(self.db, self.settings.home)  # the outbox of finished updates and the last exchange (sync writes them)
        rt = self.db.execute("SELECT model_version, profile FROM infer_runtime WHERE id = 1").fetchone()
        try:
            free = shutil.disk_usage(self.settings.home).free
        except OSError:
            free = 0
        return StatusBar(self.probe.online, sync.pending, sync.last_sync_at, rt[0] if rt else None, rt[1] if rt else None, free, self._enrolled())

    def _enrolled(self) -> bool:
        """A startup kit is installed (whether it verifies is activation's business: a damaged one lets no model run)."""
        from provisioning.enrolment import KIT_FILE, folder_of

        return (folder_of(self.settings) / KIT_FILE).exists()


def _fold_identity(ident: Identity, pseudonym: str) -> str:
    return " ".join([search_fold(ident.name.replace("^", " ")), search_fold(ident.patient_id), search_fold(pseudonym)])


def _matches(needle: str, folded_identity: str, study_uid: str) -> bool:
    hay = f"{folded_identity} {study_uid}"
    return all(part in hay for part in needle.split())


def _json(text: str | None, default):
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


__all__ = ["KioskServices", "OnlineProbe", "StoreError"]
