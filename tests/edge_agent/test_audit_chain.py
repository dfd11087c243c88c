"""The audit trail holds against the attacks it is for: an entry edited, removed, the chain rewritten, the tail cut.

Every attack is made the way an attacker with the file would make it: a raw
``sqlite3`` connection that drops the append-only triggers first.  The checks
run through ``mammo audit verify`` in a subprocess, as an inspector would.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent import audit
from edge_agent.bench.audit import EphemeralSigner
from edge_agent.schema import MIGRATIONS
from edge_agent.settings import Settings
from edge_agent.store import _statements, open_database
from provisioning.keystore import FileKeystore, KdfParams

PASSPHRASE = "test passphrase"
FAST_KDF = KdfParams(time_cost=1, memory_kib=8 * 1024, parallelism=1)


class Box:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "MAMMO_HOME": str(home), "MAMMO_KEYSTORE_PASSPHRASE": PASSPHRASE}
        self.settings = Settings.load(env={"MAMMO_HOME": str(home)}, home=home)
        self.keystore = FileKeystore.open_or_create(self.settings.keystore_path, PASSPHRASE, FAST_KDF)
        self.db = open_database(self.settings.db_path)

    def fill(self, n: int, every: int = 10) -> None:
        for i in range(n):
            audit.append(self.db, "doktor", "view_study", f"2.25.{i}", {"detail": f"view {i}"}, signer=self.keystore, checkpoint_every=every)

    def mammo(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], env=self.env, capture_output=True, text=True, timeout=120)

    def verify_cli(self) -> tuple[int, dict]:
        r = self.mammo("audit", "verify", "--json")
        return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])

    def attack(self, *statements: str, params: tuple = ()) -> None:
        """Change the file as an attacker would: own connection, triggers dropped."""
        conn = sqlite3.connect(self.settings.db_path)
        for trigger in ("audit_log_no_update", "audit_log_no_delete", "audit_checkpoints_no_update", "audit_checkpoints_no_delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for sql in statements:
            conn.execute(sql, params if "?" in sql else ())
        conn.commit()
        conn.close()


@pytest.fixture
def box(tmp_path: Path):
    b = Box(tmp_path / "home")
    yield b
    b.db.conn.close()


def test_a_clean_trail_verifies_and_every_tenth_entry_is_signed(box: Box):
    box.fill(25)
    assert [c.seq for c in audit.checkpoints(box.db)] == [10, 20]
    rc, report = box.verify_cli()
    assert rc == 0 and report["ok"] and report["entries"] == 25 and report["first_bad"] is None
    assert report["checkpoints"] == 3  # verify signed the head it had just checked


def test_triggers_refuse_changes_to_entries_and_checkpoints(box: Box):
    box.fill(12)
    for sql in ("UPDATE audit_log SET actor = 'x' WHERE seq = 3", "DELETE FROM audit_log WHERE seq = 12",
                "UPDATE audit_checkpoints SET hash = 'x'", "DELETE FROM audit_checkpoints"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            box.db.conn.execute(sql)
    assert audit.verify(box.db, box.keystore).ok


def test_an_edited_entry_is_named_by_verify(box: Box):
    box.fill(30)
    box.attack("UPDATE audit_log SET details = '{\"detail\":\"nothing to see\"}' WHERE seq = 7")
    rc, report = box.verify_cli()
    assert rc == 1 and not report["ok"] and report["first_bad"] == 7 and "changed" in report["reason"]
    assert report["entries"] == 30


def test_an_edit_with_the_chain_rehashed_after_it_is_caught_by_the_signed_checkpoint(box: Box):
    box.fill(30)
    rows = box.db.execute("SELECT seq, at, actor, action, object, details, prev_hash FROM audit_log WHERE seq >= 7 ORDER BY seq").fetchall()
    prev = box.db.execute("SELECT hash FROM audit_log WHERE seq = 6").fetchone()[0]
    updates = []
    for seq, at, actor, action, obj, details, _ in rows:
        details = '{"detail":"forged"}' if seq == 7 else details
        h = audit.entry_hash(seq, at, actor, action, obj, details, prev)
        updates.append((details, prev, h, seq))
        prev = h
    conn = sqlite3.connect(box.settings.db_path)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.executemany("UPDATE audit_log SET details = ?, prev_hash = ?, hash = ? WHERE seq = ?", updates)
    conn.commit()
    conn.close()
    rc, report = box.verify_cli()
    assert rc == 1 and report["first_bad"] == 1 and "rewritten" in report["reason"] and "10" in report["reason"]


def test_re_signing_with_another_key_is_caught(box: Box):
    box.fill(20)
    forger = EphemeralSigner()
    forger.box_id = box.keystore.box_id
    cps = audit.checkpoints(box.db)
    box.attack("DELETE FROM audit_checkpoints")
    with audit.transaction(box.db):
        for cp in cps:
            audit.sign_checkpoint(box.db, forger, cp.seq, cp.hash)
    rc, report = box.verify_cli()
    assert rc == 1 and report["first_bad"] == 1 and "entry 10 is not signed by this box" in report["reason"]


def test_a_deleted_entry_is_named(box: Box):
    box.fill(30)
    box.attack("DELETE FROM audit_log WHERE seq = 12")
    rc, report = box.verify_cli()
    assert rc == 1 and report["first_bad"] == 12 and "missing" in report["reason"]


def test_a_cut_tail_is_caught_by_the_checkpoint_above_it(box: Box):
    box.fill(25)  # checkpoints at 10 and 20
    box.attack("DELETE FROM audit_log WHERE seq >= 15")
    rc, report = box.verify_cli()
    assert rc == 1 and report["first_bad"] == 15 and "removed" in report["reason"]


def test_parallel_processes_append_one_linear_chain(box: Box):
    script = textwrap.dedent("""
        import sys
        from edge_agent import audit
        from edge_agent.store import open_database
        db = open_database(sys.argv[1])
        for i in range(40):
            audit.append(db, sys.argv[2], "view_image", None, {"i": i})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(box.settings.db_path), f"writer{w}"]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    report = audit.verify(box.db, box.keystore)
    assert report.ok and report.entries == 160
    seqs = [e.seq for e in audit.entries(box.db)]
    assert seqs == list(range(1, 161))
    by_writer = box.db.execute("SELECT actor, count(*), count(DISTINCT json_extract(details, '$.i')) FROM audit_log GROUP BY actor").fetchall()
    assert sorted(by_writer) == [(f"writer{w}", 40, 40) for w in range(4)]


def test_export_is_audited_and_an_inspector_can_check_it(box: Box, tmp_path: Path):
    box.fill(15)
    out = tmp_path / "audit.jsonl"
    r = box.mammo("audit", "export", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    header, entries = lines[0], [x for x in lines if x["type"] == "entry"]
    assert header["box_id"] == box.keystore.box_id and header["public_key_pem"] == box.keystore.public_key_pem().decode()
    assert len(entries) == 16 and entries[-1]["action"] == "audit_export" and entries[-1]["details"] == '{"file":"audit.jsonl"}'
    assert [x["seq"] for x in lines if x["type"] == "checkpoint"] == [10, 16]  # the export's own entry is signed
    r = box.mammo("audit", "verify", "--file", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["entries"] == 16
    entries[4]["actor"] = "someone else"
    out.write_text("".join(json.dumps(x) + "\n" for x in [header, *entries, *(x for x in lines if x["type"] == "checkpoint")]), encoding="utf-8")
    r = box.mammo("audit", "verify", "--file", str(out), "--json")
    assert r.returncode == 1 and json.loads(r.stdout.splitlines()[-1])["first_bad"] == 5


def test_kiosk_rows_from_before_the_chain_move_into_it_and_verify(tmp_path: Path):
    path = tmp_path / "old.db"
    old = open_database(path, migrate=False)  # the database as the kiosk left it before the audit component existed
    old.execute("CREATE TABLE schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL, PRIMARY KEY (component, version))")
    for component, scripts in MIGRATIONS.items():
        for version, script in enumerate(scripts, start=1):
            if component == "audit" or (component == "kiosk" and version >= 4):
                continue
            for statement in _statements(script):
                old.execute(statement)
            old.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", [component, version])
    rows = [(1.7e9 + i, "doktor" if i % 2 else "yonetici", ["login", "view_study", "print_referral"][i % 3], f"2.25.{i}" if i % 3 else None,
             "" if i % 4 else f"'şahin': {i} row(s)") for i in range(50)]
    old.conn.executemany("INSERT INTO kiosk_audit (at, username, action, study_uid, detail) VALUES (?, ?, ?, ?, ?)", rows)
    old.conn.close()

    db = open_database(path)
    assert db.execute("SELECT count(*) FROM audit_log WHERE hash IS NULL").fetchone()[0] == 50
    assert db.execute("SELECT at, username, action, study_uid, detail FROM kiosk_audit ORDER BY id").fetchall() == rows
    signer = EphemeralSigner()
    entry = audit.append(db, "cli:root", "audit_export", None, {}, signer=signer)
    assert entry.seq == 51
    report = audit.verify(db, signer)
    assert report.ok and report.entries == 51 and db.execute("SELECT count(*) FROM audit_log WHERE hash IS NULL").fetchone()[0] == 0
    db.conn.close()


def test_a_changed_setting_is_audited_when_the_box_starts(box: Box):
    for env in ({}, {}, {"MAMMO_BOX_NAME": "Talas ASM"}):
        r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "up", "--check", "--json"], env={**box.env, **env},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    rows = [json.loads(e.details) for e in audit.entries(box.db) if e.action == "config_changed"]
    assert len(rows) == 2  # the first start, then the change; the unchanged restart wrote nothing
    assert rows[0]["first"] and rows[1]["changed"] == {"box_name": [box.settings.box_name, "Talas ASM"]}
    assert rows[1]["settings"]["keystore_passphrase"] == "***"  # secrets never reach the trail
    shown = box.db.execute("SELECT detail FROM kiosk_audit WHERE action = 'config_changed' ORDER BY id").fetchall()
    assert shown[1][0] == f"box_name: {box.settings.box_name!r} -> 'Talas ASM'"  # the audit page shows the change, not the map
    assert audit.verify(box.db, box.keystore).ok


def test_bench_audit_prints_ours_beside_both_peers_and_a_verified_trail(box: Box):
    r = box.mammo("bench", "audit", "--appends", "20", "--entries", "2500", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert len(result["appends_per_s"]) == 3 and all(v > 0 for v in result["appends_per_s"].values())
    assert "synchronous=FULL" in result["durability"] and result["chain_valid_after"]
    assert result["verify"]["entries"] == 2500 and result["verify"]["ok"] and result["verify"]["checkpoints"] == 3  # 1000, 2000, the head


def test_a_forged_later_checkpoint_leaves_only_the_entries_under_the_last_good_one_trusted():
    box_key, forger = EphemeralSigner(), EphemeralSigner()
    entries, prev = [], audit.GENESIS
    for seq in range(1, 31):
        h = audit.entry_hash(seq, 1.7e9 + seq, "doktor", "view_study", None, "{}", prev)
        entries.append(audit.Entry(seq, 1.7e9 + seq, "doktor", "view_study", None, "{}", prev, h))
        prev = h

    def checkpoint(signer: EphemeralSigner, seq: int) -> audit.Checkpoint:
        e = entries[seq - 1]
        sig = signer.sign(audit.checkpoint_message("bench", seq, str(e.hash), 1.7e9))
        return audit.Checkpoint(seq, str(e.hash), 1.7e9, "bench", audit.key_fingerprint(signer.public_key_pem()), sig.hex())

    ok = audit.signature_checker(box_key.public_key_pem())
    assert audit.check(entries, [checkpoint(box_key, 10), checkpoint(box_key, 20)], ok).ok
    report = audit.check(entries, [checkpoint(box_key, 10), checkpoint(forger, 20)], ok)
    assert not report.ok and report.first_bad == 11 and report.entries == 30
