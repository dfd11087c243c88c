"""Draw the technician's console at 80x24 into docs/console/*.svg, from a throwaway box with something on every screen.

    .venv/bin/python scripts/console_snapshots.py [OUT_DIR]

The box is real: made by ``open_box`` in a temporary folder, enrolled with a
throwaway authority, the shipped model activated, a dead letter, audit entries
and a log file.  Nothing of it is kept but the pictures.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent import audit  # noqa: E402
from edge_agent.box import Box, open_box  # noqa: E402
from edge_agent.console import data  # noqa: E402
from edge_agent.console.app import PANES, Console  # noqa: E402
from edge_agent.inference.activation import SHIPPED_DIR  # noqa: E402
from edge_agent.settings import Settings  # noqa: E402
from provisioning import enrolment  # noqa: E402
from provisioning.authority import Authority  # noqa: E402
from provisioning.keystore import KdfParams  # noqa: E402


def furnish(box: Box, authority_dir: Path) -> None:
    authority = Authority.init(authority_dir, "federation-pw", kdf=KdfParams(time_cost=1, memory_kib=8 * 1024))
    folder = enrolment.folder_of(box.settings)
    kit = authority.issue_kit(enrolment.make_request(box.keystore, folder), coordinator="koordinator.saglik.example:9092", days=30, settings={})
    enrolment.install(kit, keystore=box.keystore, folder=folder)
    # an enrolled box runs only what its federation signed: the shipped release, signed by the authority, installed on the box
    release = box.settings.models_dir / "0.1.0"
    shutil.copytree(SHIPPED_DIR / "0.1.0", release)
    _, signature = authority.sign((release / "manifest.json").read_bytes())
    (release / "manifest.sig").write_text(base64.b64encode(signature).decode("ascii") + "\n", encoding="ascii")
    data.activate(box, "0.1.0")
    for n in range(3):
        box.queue.enqueue("ingest", {"file": f"img{n}.dcm"})
    job_id = box.queue.enqueue("infer", {"study": "2.25.1234"}, max_attempts=1).job_id
    job = box.queue.claim("infer")
    assert job is not None and job.id == job_id
    box.queue.fail(job, "ModelError: self-test of 0.1.0 on onnx-int8 failed")
    for actor, action, obj in (("admin", "login", None), ("ayse.hekim", "login", None), ("ayse.hekim", "view", "2.25.1234"),
                               ("ayse.hekim", "search", None), ("ayse.hekim", "print", "2.25.1234")):
        audit.append(box.db, actor, action, obj)
    box.settings.log_dir.mkdir(exist_ok=True)
    (box.settings.log_dir / "mammo.log").write_text(
        "2026-11-30 09:00:01 INFO edge_agent.daemon: starting services\n"
        "2026-11-30 09:00:02 INFO edge_agent.ingest.scp: DICOM receiver MAMMO_EDGE listening on 0.0.0.0:11112\n"
        "2026-11-30 09:00:02 INFO kiosk_ui.server: kiosk on http://127.0.0.1:8080/\n"
        "2026-11-30 09:14:37 INFO edge_agent.inference.service: study 2.25.1234 triaged: review recommended\n",
        encoding="utf-8")


async def draw(box: Box, out: Path, lang: str, names: dict[str, str]) -> None:
    app = Console(box, lang)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for pane, filename in names.items():
            await pilot.press(str(PANES.index(pane) + 1))
            await app.workers.wait_for_complete()
            await pilot.pause()
            app.save_screenshot(filename, path=str(out))


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "console"
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(env={"MAMMO_HOME": f"{tmp}/mammo", "MAMMO_KEYSTORE_PASSPHRASE": "operator-passphrase"})
        box = open_box(settings, interactive=False)
        furnish(box, Path(tmp) / "authority")
        asyncio.run(draw(box, out, "tr", {p: f"{n}-{p}.svg" for n, p in enumerate(PANES, 1)}))
        asyncio.run(draw(box, out, "en", {"models": "en-models.svg"}))
        box.close()
        demo = open_box(Settings.load(env={"MAMMO_HOME": f"{tmp}/demo"}), interactive=False)
        asyncio.run(draw(demo, out, "tr", {"keys": "demo-keys.svg"}))
        demo.close()
    print("\n".join(sorted(str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in out.glob("*.svg"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
