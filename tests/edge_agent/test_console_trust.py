"""Demo mode in the console: an unenrolled box says it runs only the releases shipped with the software; an enrolled one names its
federation's key. Driven headless at 80x24, read back from the screen."""

from __future__ import annotations

from edge_agent.box import Box
from edge_agent.console.app import Console
from provisioning import enrolment
from provisioning.authority import Authority
from provisioning.keystore import KdfParams
from tests.edge_agent.test_console import SIZE, show


async def test_models_and_enrolment_screens_show_demo_mode_until_the_box_is_enrolled(box: Box, tmp_path):
    app = Console(box, "tr")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "Demo modu: kayıtlı değil" in await show(app, pilot, "7")
        assert "Demo modu: kayıtlı değil" in await show(app, pilot, "4")
    authority = Authority.init(tmp_path / "authority", "federation-pw", kdf=KdfParams(time_cost=1, memory_kib=8 * 1024))
    folder = enrolment.folder_of(box.settings)
    enrolment.install(authority.issue_kit(enrolment.make_request(box.keystore, folder)), keystore=box.keystore, folder=folder)
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = await show(app, pilot, "7")
        assert "the federation's model-signing key" in text and "Demo mode" not in text
