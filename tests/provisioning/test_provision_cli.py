"""`mammo provision` end to end through the real CLI: a federation, a box enrolled by kit, a tampered kit refused."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from edge_agent.store import open_database

REPO = Path(__file__).resolve().parents[2]


def mammo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_box_is_enrolled_by_kit_through_the_cli_and_a_tampered_kit_is_refused(tmp_path: Path):
    env = {**os.environ, "MAMMO_HOME": str(tmp_path / "box"), "MAMMO_KEYSTORE_PASSPHRASE": "box-passphrase",
           "MAMMO_AUTHORITY_PASSPHRASE": "federation-passphrase"}
    auth, req, kit = tmp_path / "authority", tmp_path / "usb" / "box.req", tmp_path / "usb" / "box.kit"
    req.parent.mkdir()

    r = mammo(env, "provision", "init", "--authority", str(auth), "--json")
    assert r.returncode == 0, r.stderr
    fingerprint = json.loads(r.stdout.splitlines()[-1])["ca_fingerprint"]
    assert oct(auth.stat().st_mode & 0o777) == "0o700"

    r = mammo(env, "provision", "request", "--out", str(req), "--json")
    assert r.returncode == 0, r.stderr
    box_id = json.loads(r.stdout.splitlines()[-1])["box_id"]
    assert req.read_bytes().startswith(b"-----BEGIN CERTIFICATE REQUEST-----")

    r = mammo(env, "provision", "issue", "--authority", str(auth), "--request", str(req), "--out", str(kit),
              "--coordinator", "coord.example.org:9092", "--days", "14", "--set", "box_name=Talas ASM", "--json")
    assert r.returncode == 0, r.stderr

    # A kit whose coordinator was changed on the stick: refused, exit 1, the box untouched.
    outer = json.loads(kit.read_bytes())
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["coordinator"] = "evil.example.org:9092"
    outer["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    tampered = tmp_path / "usb" / "tampered.kit"
    tampered.write_text(json.dumps(outer))
    before = snapshot(tmp_path / "box")
    r = mammo(env, "provision", "install", str(tampered))
    assert r.returncode == 1
    assert "signature does not verify" in r.stderr and "Nothing on the box was changed" in r.stderr
    assert snapshot(tmp_path / "box") == before

    r = mammo({**env, "MAMMO_PROVISION_AUTHORITY_FINGERPRINT": fingerprint}, "provision", "install", str(kit), "--json")
    assert r.returncode == 0, r.stderr
    r = mammo(env, "provision", "status", "--json")
    st = json.loads(r.stdout.splitlines()[-1])
    assert st["enrolled"] is True and st["box_id"] == box_id
    assert st["days_left"] == 13 and st["coordinator"] == "coord.example.org:9092"
    assert st["authority_fingerprint"] == fingerprint
    assert len(st["he_context_sha256"]) == 64 and len(st["model_signing_key_fingerprint"]) == 64
    assert set(st) >= {"certificate_expires", "he_version", "model_signing_version"}
    assert st["settings"] == {"box_name": "Talas ASM"}
    r = mammo(env, "audit", "verify", "--json")  # the enrolment is in the box's audit trail, which holds
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["entries"] == 1
    db = open_database(tmp_path / "box" / "box.sqlite3")
    assert db.execute("SELECT action, object FROM audit_log").fetchall() == [("provision_install", box_id)]
    db.conn.close()
