"""The kiosk says when the box runs in demo mode (not enrolled: only the releases shipped with the software), Turkish first."""

from __future__ import annotations

from litestar.testing import TestClient

from provisioning import enrolment
from provisioning.authority import Authority
from provisioning.keystore import KdfParams


def test_an_unenrolled_box_shows_demo_mode_on_every_page_until_a_kit_is_installed(client: TestClient, doctor: TestClient, kiosk, tmp_path):
    login = client.get("/login").text
    assert 'id="demo-badge"' in login and "Demo modu: kayıtlı değil" in login  # before anyone signs in, too
    bar = doctor.get("/worklist").text
    assert "Demo modu: kayıtlı değil" in bar[bar.index('id="statusbar"'):]
    doctor.get("/lang/en?next=/worklist")
    assert "Demo mode: not enrolled" in doctor.get("/worklist").text
    authority = Authority.init(tmp_path / "authority", "federation-pw", kdf=KdfParams(time_cost=1, memory_kib=8 * 1024))
    folder = enrolment.folder_of(kiosk.settings)
    enrolment.install(authority.issue_kit(enrolment.make_request(kiosk.box.keystore, folder)), keystore=kiosk.box.keystore, folder=folder)
    assert 'id="demo-badge"' not in doctor.get("/worklist").text
