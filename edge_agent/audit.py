"""The box's audit trail (KVKK): append-only, hash-chained, with signed checkpoints.

Every sign-in, view, search, export and print of patient data, every change
of configuration, enrolment, model activation and sync is one entry in
``audit_log``.  Entry ``n`` stores ``hash = SHA-256(canonical(n's fields,
prev_hash))`` where ``prev_hash`` is entry ``n-1``'s hash (64 zeros for the
first), so changing, removing or inserting an entry breaks every hash after
it.  Every ``audit_checkpoint_every`` entries, and at each verify and export,
the box identity key (Ed25519, :mod:`provisioning.keystore`) signs the hash
of the latest entry into ``audit_checkpoints``: rewriting the chain from an
edited entry onwards, or cutting its tail, then contradicts a signature that
only the box's key could have made.

What this does and does not stop:

* SQL triggers refuse UPDATE and DELETE of entries and checkpoints.  They
  keep honest code and a casual ``sqlite3`` session from changing history;
  anyone who can write the file (root) can drop them.
* The chain detects any change, removal or insertion below the newest entry.
* The checkpoints detect a rewritten chain and a tail cut below the newest
  checkpoint.  An attacker who also holds the unlocked box key, or who
  deletes the newest checkpoints together with the entries after the one
  before, is caught only by an earlier export kept elsewhere (an inspector's
  copy), which is why ``mammo audit export`` exists.

Several processes append (the daemon, the kiosk, each CLI command).  An
append reads the last hash and inserts the next entry inside one
``BEGIN IMMEDIATE`` transaction, and ``seq`` is the primary key, so two
writers can never both extend the same entry: the chain stays one line.

Entries copied in from the kiosk's table before the chain existed (kiosk
migration 4) arrive with no hash; the first append (or verify) chains them,
and the chain vouches for them from then on.

Details are a JSON object; they name studies by their de-identified UID and
people by their kiosk account, never by a patient's name or ID.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import sqlite_utils
from cryptography.hazmat.primitives import serialization

from edge_agent.store import transaction

GENESIS = "0" * 64
FORMAT = 1  # the first element of every hashed encoding; a new encoding gets a new number
DEFAULT_CHECKPOINT_EVERY = 1000
_COLUMNS = "seq, at, actor, action, object, details, prev_hash, hash"


class Signer(Protocol):
    """What the trail needs of a keystore: the box's identity signature."""

    box_id: str

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


@dataclass(frozen=True)
class Entry:
    seq: int
    at: float
    actor: str
    action: str
    object: str | None
    details: str  # canonical JSON text, hashed as stored
    prev_hash: str | None
    hash: str | None


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: float
    box_id: str
    key_sha256: str
    signature: str  # hex


@dataclass(frozen=True)
class Report:
    """The outcome of a verification; ``first_bad`` is the lowest entry that cannot be trusted."""

    ok: bool
    entries: int
    checkpoints: int
    first_bad: int | None
    reason: str | None
    head_seq: int
    head_hash: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- pure encoding ---------------------------------------------------------------------------------

def canonical_details(details: Mapping[str, Any] | None) -> str:
    """Details as one canonical JSON text: sorted keys, no spaces, UTF-8 kept (the hash covers this text)."""
    return json.dumps(dict(details or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(seq: int, at: float, actor: str, action: str, obj: str | None, details: str, prev_hash: str) -> str:
    """SHA-256 (hex) of ``[FORMAT, seq, at, actor, action, object, details, prev_hash]`` as compact JSON, UTF-8.

    ``at`` is written as Python (and JavaScript) write a double: the shortest text that reads back to it.
    """
    text = json.dumps([FORMAT, seq, at, actor, action, obj, details, prev_hash], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def checkpoint_message(box_id: str, seq: int, hash_: str, at: float) -> bytes:
    """The bytes the box key signs for a checkpoint."""
    return json.dumps(["mammo-audit-checkpoint", FORMAT, box_id, seq, hash_, at], separators=(",", ":")).encode("utf-8")


def key_fingerprint(public_key_pem: bytes) -> str:
    """SHA-256 (hex) of the raw Ed25519 public key."""
    key = serialization.load_pem_public_key(public_key_pem)
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def check(entries: Iterable[Entry], checkpoints: Iterable[Checkpoint],
          signature_ok: Callable[[Checkpoint], bool] | None) -> Report:
    """Walk the chain and the checkpoints; the lowest entry found wrong is reported (pure: no database, no clock).

    ``signature_ok`` checks a checkpoint's signature with the box's public key; None skips signatures (no key at hand).
    """
    cps = {c.seq: c for c in checkpoints}
    findings: list[tuple[int, str]] = []
    prev_seq, prev_hash, count = 0, GENESIS, 0
    last_good_cp = 0
    for e in entries:
        count += 1
        if findings:
            continue  # only counting now: the first break is what the report names
        problem = _problem(e, prev_seq, prev_hash)
        if problem is None and e.seq in cps and cps[e.seq].hash != e.hash:
            problem = (last_good_cp + 1, f"the chain between entries {last_good_cp + 1} and {e.seq} was rewritten: "
                                         f"the checkpoint signed at entry {e.seq} names another hash")
        if problem is not None:
            findings.append(problem)
            continue
        if e.seq in cps:
            last_good_cp = e.seq
        prev_seq, prev_hash = e.seq, str(e.hash)
    signed = 0
    for cp in sorted(cps.values(), key=lambda c: c.seq):
        if signature_ok is not None and not signature_ok(cp):  # nothing after the last good signature is vouched for
            findings.append((signed + 1, f"the checkpoint at entry {cp.seq} is not signed by this box's key: "
                                         f"entries from {signed + 1} on may have been rewritten and re-signed"))
            break
        signed = cp.seq
    beyond = [c.seq for c in cps.values() if c.seq > prev_seq]
    if beyond and not findings:
        findings.append((prev_seq + 1, f"the trail ends at entry {prev_seq} but a signed checkpoint vouches for entry {max(beyond)}: "
                                       f"entries {prev_seq + 1}..{max(beyond)} were removed"))
    first = min(findings) if findings else None
    return Report(ok=first is None, entries=count, checkpoints=len(cps), first_bad=first[0] if first else None,
                  reason=first[1] if first else None, head_seq=prev_seq, head_hash=prev_hash)


# -- the database ----------------------------------------------------------------------------------

def append(db: sqlite_utils.Database, actor: str, action: str, obj: str | None = None, details: Mapping[str, Any] | None = None, *,
           at: float | None = None, signer: Signer | None = None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> Entry:
    """Append one entry, inside the caller's transaction if one is open (it must be BEGIN IMMEDIATE), else in its own.

    With a ``signer``, also signs a checkpoint once ``checkpoint_every`` entries have passed since the last one.
    """
    if db.conn.in_transaction:
        return _append(db, actor, action, obj, details, at, signer, checkpoint_every)
    with transaction(db):
        return _append(db, actor, action, obj, details, at, signer, checkpoint_every)


def _append(db: sqlite_utils.Database, actor: str, action: str, obj: str | None, details: Mapping[str, Any] | None,
            at: float | None, signer: Signer | None, checkpoint_every: int) -> Entry:
    seq, prev = _head(db)
    entry = _make(seq + 1, time.time() if at is None else float(at), actor, action, obj, canonical_details(details), prev)
    db.execute(f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               [entry.seq, entry.at, entry.actor, entry.action, entry.object, entry.details, entry.prev_hash, entry.hash])
    if signer is not None and checkpoint_every > 0 and entry.seq - _last_checkpoint_seq(db) >= checkpoint_every:
        sign_checkpoint(db, signer, entry.seq, str(entry.hash))
    return entry


def _problem(e: Entry, prev_seq: int, prev_hash: str) -> tuple[int, str] | None:
    """What is wrong with entry ``e`` coming after entry ``prev_seq`` whose hash is ``prev_hash``; None if nothing."""
    if e.seq != prev_seq + 1:
        missing = f"entry {prev_seq + 1}" if e.seq == prev_seq + 2 else f"entries {prev_seq + 1}..{e.seq - 1}"
        return prev_seq + 1, f"{missing} missing: the trail jumps from {prev_seq} to {e.seq}"
    if e.hash is None:
        return e.seq, f"entry {e.seq} was never chained (it has no hash) though entries before it are"
    if e.prev_hash != prev_hash:
        return e.seq, f"entry {e.seq} does not follow entry {prev_seq}: its prev_hash differs from that entry's hash"
    if entry_hash(e.seq, e.at, e.actor, e.action, e.object, e.details, e.prev_hash) != e.hash:
        return e.seq, f"entry {e.seq} was changed after it was written: its hash does not match its content"
    return None


def _make(seq: int, at: float, actor: str, action: str, obj: str | None, details: str, prev: str) -> Entry:
    return Entry(seq, at, actor, action, obj, details, prev, entry_hash(seq, at, actor, action, obj, details, prev))


def _head(db: sqlite_utils.Database) -> tuple[int, str]:
    """The last entry's seq and hash, chaining first any entries copied in without one (call inside a write transaction)."""
    row = db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return 0, GENESIS
    if row[1] is not None:
        return int(row[0]), str(row[1])
    return _seal_pending(db)


def _seal_pending(db: sqlite_utils.Database) -> tuple[int, str]:
    """Chain the unhashed entries after the last hashed one, in order; the update trigger allows exactly this."""
    row = db.execute("SELECT seq, hash FROM audit_log WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (int(row[0]), str(row[1])) if row else (0, GENESIS)
    pending = db.execute("SELECT seq, at, actor, action, object, details FROM audit_log WHERE seq > ? ORDER BY seq", [seq]).fetchall()
    for r in pending:
        e = _make(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], prev)
        db.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", [e.prev_hash, e.hash, e.seq])
        seq, prev = e.seq, str(e.hash)
    return seq, prev


def seal(db: sqlite_utils.Database) -> tuple[int, str]:
    """Chain any entries copied in without a hash; the head (seq, hash) after it."""
    with transaction(db):
        return _head(db)


def _last_checkpoint_seq(db: sqlite_utils.Database) -> int:
    return int(db.execute("SELECT coalesce(max(seq), 0) FROM audit_checkpoints").fetchone()[0])


def sign_checkpoint(db: sqlite_utils.Database, signer: Signer, seq: int, hash_: str) -> Checkpoint:
    """Sign and store a checkpoint at entry ``seq`` (inside the caller's write transaction; the caller vouches for the hash)."""
    at = float(int(time.time()))
    pem = signer.public_key_pem()
    cp = Checkpoint(seq, hash_, at, signer.box_id, key_fingerprint(pem), signer.sign(checkpoint_message(signer.box_id, seq, hash_, at)).hex())
    db.execute("INSERT OR IGNORE INTO audit_checkpoints (seq, hash, at, box_id, key_sha256, signature) VALUES (?, ?, ?, ?, ?, ?)",
               [cp.seq, cp.hash, cp.at, cp.box_id, cp.key_sha256, cp.signature])
    return cp


def checkpoint(db: sqlite_utils.Database, signer: Signer, seq: int, hash_: str) -> None:
    """Sign a checkpoint at entry ``seq`` if it still has ``hash_`` (a verified head); a no-op where one exists."""
    with transaction(db):
        row = db.execute("SELECT hash FROM audit_log WHERE seq = ?", [seq]).fetchone()
        if row is not None and row[0] == hash_ and seq > _last_checkpoint_seq(db):
            sign_checkpoint(db, signer, seq, hash_)


def entries(db: sqlite_utils.Database) -> Iterator[Entry]:
    for r in db.execute(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq"):
        yield Entry(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7])


def checkpoints(db: sqlite_utils.Database) -> list[Checkpoint]:
    return [Checkpoint(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5])
            for r in db.execute("SELECT seq, hash, at, box_id, key_sha256, signature FROM audit_checkpoints ORDER BY seq").fetchall()]


def signature_checker(public_key_pem: bytes) -> Callable[[Checkpoint], bool]:
    """Checks a checkpoint against one box key (the keystore's, or the one in an export)."""
    from provisioning.keystore import verify as ed25519_verify  # late: the pure part above needs no keystore

    fingerprint = key_fingerprint(public_key_pem)

    def ok(cp: Checkpoint) -> bool:
        try:
            signature = bytes.fromhex(cp.signature)
        except ValueError:
            return False
        return cp.key_sha256 == fingerprint and ed25519_verify(public_key_pem, signature, checkpoint_message(cp.box_id, cp.seq, cp.hash, cp.at))

    return ok


def verify(db: sqlite_utils.Database, signer: Signer | None = None) -> Report:
    """Chain pending entries, check the whole trail in one read snapshot, then (if it holds) sign its head.

    Without a ``signer`` the signatures are not checked and nothing is signed (the report says so only by
    its caller's choice: the CLI always opens the keystore).
    """
    seal(db)
    with transaction(db, immediate=False):  # one read snapshot: appends by other processes meanwhile are not part of it
        report = check(entries(db), checkpoints(db), signature_checker(signer.public_key_pem()) if signer else None)
    if report.ok and signer is not None and report.head_seq:
        checkpoint(db, signer, report.head_seq, report.head_hash)
        report = Report(**{**report.as_dict(), "checkpoints": len(checkpoints(db))})
    return report


# -- configuration ---------------------------------------------------------------------------------

def config_changes(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Each setting whose value differs, as ``[old, new]`` (None where a setting is new or gone); pure."""
    names = sorted(set(previous) | set(current))
    return {n: [previous.get(n), current.get(n)] for n in names if previous.get(n) != current.get(n)}


def record_config(db: sqlite_utils.Database, settings: Mapping[str, Any], actor: str, *, signer: Signer | None = None,
                  checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> Entry | None:
    """Audit the settings the box starts with when they differ from the last ones audited; None when unchanged.

    Settings come from a TOML file and the environment, edited outside the box's code, and take effect when the
    box starts: so a change is recorded at start (``mammo up``), with every changed value (secrets masked by the
    caller) and the whole set, which the next comparison starts from.
    """
    current = json.loads(json.dumps(dict(settings), default=str))  # as JSON will give it back next time
    with transaction(db):
        row = db.execute("SELECT details FROM audit_log WHERE action = 'config_changed' ORDER BY seq DESC LIMIT 1").fetchone()
        previous = json.loads(row[0]).get("settings", {}) if row else None
        changed = config_changes(previous or {}, current)
        if previous is not None and not changed:
            return None
        details = {"first": previous is None, "changed": {} if previous is None else changed, "settings": current,
                   "detail": _config_summary(previous is None, changed, len(current))}
        return _append(db, actor, "config_changed", None, details, None, signer, checkpoint_every)


def _config_summary(first: bool, changed: Mapping[str, list[Any]], count: int, limit: int = 300) -> str:
    """One line for the kiosk's audit page (which shows ``details.detail``), not the whole settings map."""
    if first:
        return f"settings recorded at first start ({count})"
    text = "; ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in changed.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"
