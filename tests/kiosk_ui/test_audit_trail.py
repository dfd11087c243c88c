"""What the kiosk writes to the audit trail is part of the box's hash chain: it verifies, and an edit is named."""

from __future__ import annotations

import sqlite3

from litestar.testing import TestClient

from edge_agent import audit
from tests.kiosk_ui.conftest import Kiosk, sign_in


def test_a_doctors_session_is_chained_verifies_and_shows_on_the_audit_page(client: TestClient, kiosk: Kiosk):
    r = sign_in(client, "doktor")
    assert r.status_code == 303
    uid = kiosk.studies["priority"]
    client.get("/worklist?q=şahin")
    client.get(f"/studies/{uid}")
    client.get(f"/studies/{uid}/referral.pdf?print=1")
    entries = list(audit.entries(kiosk.box.db))
    session = [(e.actor, e.action, e.object) for e in entries if e.actor == "doktor"]
    assert session == [("doktor", "login", None), ("doktor", "search_worklist", None), ("doktor", "view_study", uid),
                       ("doktor", "print_referral", uid)]
    report = audit.verify(kiosk.box.db, kiosk.box.keystore)
    assert report.ok and report.entries == len(entries) and report.checkpoints == 1

    assert sign_in(client, "yonetici").status_code == 303
    page = client.get("/audit?user=doktor&action=print_referral").text
    assert "print_referral" in page and uid[:24] in page

    seq = next(e.seq for e in entries if e.action == "view_study")
    conn = sqlite3.connect(kiosk.settings.db_path)  # the edit an attacker with the file would make
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET actor = 'yonetici' WHERE seq = ?", [seq])
    conn.commit()
    conn.close()
    report = audit.verify(kiosk.box.db, kiosk.box.keystore)
    assert not report.ok and report.first_bad == seq
