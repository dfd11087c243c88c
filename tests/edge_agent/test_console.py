"""The technician's console, driven headless with Textual's pilot at 80x24 over real boxes.

What a screen shows is read back from the screenshot's text, so a value that
is computed but cut off or hidden at 80x24 fails the test too.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from textual.widgets import Button, DataTable

from edge_agent.box import Box, open_box
from edge_agent.console import data
from edge_agent.console.app import Console
from edge_agent.errors import SettingsError
from edge_agent.inference.activation import SHIPPED_DIR
from edge_agent.settings import Settings
from tests.edge_agent.test_console_data import add_audit, edit_audit

SIZE = (80, 24)
CELL_W = 12.2  # width of one cell in Textual's SVG export


def screen_text(app: Console) -> str:
    """The terminal as text: the screenshot's spans put back on their rows and columns."""
    rows: dict[int, dict[int, str]] = defaultdict(dict)
    for x, line, text in re.findall(r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+" textLength="[\d.]+" clip-path="url\(#[\w-]+-line-(\d+)\)">([^<]*)</text>',
                                    app.export_screenshot()):
        rows[int(line)][round(float(x) / CELL_W)] = html.unescape(text).replace("\xa0", " ")
    out = []
    for n in range(max(rows) + 1):
        line = ""
        for col, text in sorted(rows[n].items()):
            line = line.ljust(col) + text
        out.append(line.rstrip())
    return "\n".join(out)


async def show(app: Console, pilot, key: str) -> str:
    await pilot.press(key)
    await app.workers.wait_for_complete()
    await pilot.pause()
    return screen_text(app)


async def test_every_screen_fits_80x24_and_shows_the_box_s_real_values(box: Box):
    dead_id = _dead_letter(box)
    add_audit(box, "ayse.hekim", "login", "")
    box.settings.log_dir.mkdir()
    (box.settings.log_dir / "mammo.log").write_text("2026-11-30 10:00:00 INFO edge_agent.daemon: receiver listening on 11112\n")
    data.activate(box, "0.1.0")
    app = Console(box, "tr")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert len(text.splitlines()) == 24 and max(map(len, text.splitlines())) <= 80
        assert "Teknisyen Konsolu" in text and box.keystore.box_id[:8] in text
        assert "DEMO" not in text  # the passphrase comes from the environment here
        assert "İşlemci" in text and "Bellek" in text and "boş" in text and str(box.settings.home)[-20:] in text
        assert "q çık" in text.splitlines()[-1]  # the key help is not cut at 80 columns

        text = await show(app, pilot, "2")
        assert re.search(r"infer\s+0\s+0\s+0\s+1", text) and str(dead_id) in text and "model crashed [oom]" in text

        text = await show(app, pilot, "3")
        assert "Etkin profil" in text and "cpu-" in text and "Model 0.1.0" in text and "onnx_int8" in text
        assert "m: bu makinede ölç" in text

        text = await show(app, pilot, "4")
        assert "kayıtlı değil" in text and box.keystore.box_id in text and "mammo provision request" in text

        text = await show(app, pilot, "5")
        assert "keystore.json" in text and "argon2id" in text and "MAMMO_KEYSTORE_PASSPHRASE" in text

        text = await show(app, pilot, "6")
        assert "senkronizasyon henüz yok" in text and "Şimdi senkronize et" in text
        assert app.query_one("#sync-now", Button).disabled

        text = await show(app, pilot, "7")
        assert "0.1.0" in text and "yazılımla" in text and re.search(r"Etkin model\s+0\.1\.0", text)

        text = await show(app, pilot, "8")
        assert "ayse.hekim" in text and "login" in text

        text = await show(app, pilot, "9")
        assert "edge_agent.daemon: receiver" in text and "listening on 11112" in text and "mammo.log" in text


async def test_r_requeues_the_selected_dead_letter_and_the_list_follows(box: Box):
    first, second = _dead_letter(box), _dead_letter(box)
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        await show(app, pilot, "2")
        table = app.query_one("#dead-table", DataTable)
        table.focus()
        await pilot.press("down")
        text = await show(app, pilot, "r")
        assert box.queue.get_state(second) == "ready" and box.queue.get_state(first) == "dead"
        assert table.row_count == 1 and f"Requeued #{second} in infer" in text
        await show(app, pilot, "r")
        assert box.queue.get_state(first) == "ready"
        assert "No dead letters." in screen_text(app)
        assert {s.queue: (s.ready, s.dead) for s in data.queues(box).stats} == {"infer": (2, 0)}


async def test_l_switches_between_turkish_and_english_everywhere(box: Box):
    app = Console(box, "tr")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = await show(app, pilot, "6")
        assert "2 Kuyruklar" in text and "senkronizasyon henüz yok" in text
        text = await show(app, pilot, "l")
        assert "2 Queues" in text and "no sync yet" in text and "Sync now" in text and "Technician Console" in text
        assert text.splitlines()[-1].rstrip().endswith("q quit")  # the key help is not cut at 80 columns
        assert "Kuyruklar" not in text
        text = await show(app, pilot, "l")
        assert "2 Kuyruklar" in text


async def test_demo_mode_is_shown_on_every_screen(tmp_path: Path):
    settings = Settings.load(env={"MAMMO_HOME": str(tmp_path / "home")})  # no passphrase: a generated one, on disk
    box = open_box(settings, interactive=False)
    app = Console(box, "en")
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            for key in "159":
                assert "DEMO MODE" in await show(app, pilot, key)
            assert "the passphrase is in" in await show(app, pilot, "5")
    finally:
        box.close()


async def test_activate_and_rollback_ask_first_then_really_switch_the_model(box: Box):
    installed = box.settings.models_dir / "0.1.0"
    shutil.copytree(SHIPPED_DIR / "0.1.0", installed)  # a second, valid release folder: the one received from the coordinator
    shipped = data.activate(box, str(SHIPPED_DIR / "0.1.0"))
    assert shipped.path == SHIPPED_DIR / "0.1.0"
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        await show(app, pilot, "7")
        table = app.query_one("#model-table", DataTable)
        table.focus()
        await pilot.press("down")  # the installed copy
        await show(app, pilot, "a")
        assert "Verify, self-test and activate release 0.1.0?" in screen_text(app)
        await show(app, pilot, "n")
        assert data.models(box).active.path == shipped.path  # said no: nothing changed

        await show(app, pilot, "a")
        await show(app, pilot, "b")  # the other action's key does nothing while a question is open
        assert "Roll back" not in screen_text(app)
        text = await show(app, pilot, "y")
        assert data.models(box).active.path == installed
        assert table.cursor_row == 1  # the list was read again; the cursor stayed on the release just activated
        assert re.search(r"Active model\s+0\.1\.0", text) and "activated from the console" in text

        await show(app, pilot, "b")
        assert "Roll back to the previous model?" in screen_text(app)
        text = await show(app, pilot, "y")
        history = data.models(box).history
        assert history[0].path == shipped.path and history[0].reason == "rollback from 0.1.0" and len(history) == 3


async def test_a_refused_activation_says_why_and_keeps_the_model(box: Box):
    broken = box.settings.models_dir / "0.1.0"
    shutil.copytree(SHIPPED_DIR / "0.1.0", broken)
    (broken / "model_int8.onnx").write_bytes(b"tampered")
    shipped = data.activate(box, str(SHIPPED_DIR / "0.1.0"))
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        await show(app, pilot, "7")
        app.query_one("#model-table", DataTable).focus()
        await pilot.press("down")
        await show(app, pilot, "a")
        text = await show(app, pilot, "y")
        assert "Failed:" in text and "refused" in text
        assert data.models(box).active.path == shipped.path


async def test_v_verifies_the_audit_chain_and_shows_a_broken_one(box: Box):
    for n in range(3):
        add_audit(box, "ayse.hekim", "view", f"1.2.{n}")
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        text = await show(app, pilot, "8")
        assert "v: verify the chain" in text and re.search(r"3\s+\S+ \S+\s+ayse.hekim\s+view\s+1\.2\.2", text)
        assert "Chain intact: 3 entries" in await show(app, pilot, "v")
        edit_audit(box, 2, '{"detail":"nothing to see"}')
        assert "CHAIN BROKEN: first bad entry 2." in await show(app, pilot, "v")


def _dead_letter(box: Box) -> int:
    job_id = box.queue.enqueue("infer", {"study": "1.2.3"}, max_attempts=1).job_id
    job = box.queue.claim("infer")
    assert job is not None and box.queue.fail(job, "model crashed [oom]") == "dead"
    return job_id


async def test_m_measures_every_profile_on_this_machine(box: Box):
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        await show(app, pilot, "3")
        text = await show(app, pilot, "m")
        assert "Measured on this machine" in text and re.search(r"cpu-small\s+\d+\.\d+ ms", text)
        assert re.search(r"gpu-cuda\s+not available here", text)


async def test_enter_goes_into_a_screen_s_table_and_escape_back_to_the_list(box: Box):
    _dead_letter(box)
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("down")  # the list of screens has the focus at start: down moves to Queues
        await pilot.press("enter")
        await pilot.pause()
        assert app.current == "queues" and app.focused is app.query_one("#dead-table", DataTable)
        await pilot.press("escape")
        assert app.focused is app.query_one("#nav")


def test_the_mammo_command_does_not_load_textual_until_the_console_starts():
    code = "import sys; from edge_agent.cli import build_parser; build_parser(); print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_console_language_is_a_checked_setting(tmp_path: Path):
    assert Settings.load(env={"MAMMO_HOME": str(tmp_path)}).console_language == "tr"
    assert Settings.load(env={"MAMMO_HOME": str(tmp_path), "MAMMO_CONSOLE_LANGUAGE": "en"}).console_language == "en"
    with pytest.raises(SettingsError, match="console_language"):
        Settings.load(env={"MAMMO_HOME": str(tmp_path), "MAMMO_CONSOLE_LANGUAGE": "de"})


async def test_sync_screen_shows_what_waits_and_when_the_box_last_synced(box: Box):
    """The outbox rows and the last exchange the box's sync left behind, read without importing sync."""
    import json
    import time

    now = time.time()
    for n, state in (("u-waiting", "queued"), ("u-done", "acknowledged")):
        box.db.execute(
            "INSERT INTO sync_outbox (update_id, sha256, base_model_version, spec, spec_digest, value_count, example_count, epsilon, delta_dp, "
            "noise_multiplier, local_metrics, he_version, state, bytes, created_at, placed_at, closed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [n, n * 8, "0.1.0", "{}", "d", 2, 10, 0.3, 1e-5, 1.1, "{}", 1, state, 1_200_000, now, now, now if state == "acknowledged" else None])
    box.db.conn.commit()
    (box.settings.home / "sync").mkdir()
    (box.settings.home / "sync" / "link.json").write_text(json.dumps({"last_contact_at": now - 60, "model_version": "0.1.0+fl.3",
                                                                      "last_release": {"version": "0.1.0+fl.3", "ok": True}}))
    import dataclasses

    box.settings = dataclasses.replace(box.settings, sync_superlink="127.0.0.1:9092")  # a coordinator to reach: sync is on
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = await show(app, pilot, "6")
        assert re.search(r"Waiting to sync\s+1 update\(s\), 1171 KB", text)
        assert "0.1.0+fl.3" in text and "verified, active" in text and "no sync yet" not in text
        assert re.search(r"Last sync\s+\d{4}-\d\d-\d\d", text)
        # "Sync now" asks the box's sync service (through a file it watches) to reconnect at once, and is audited.
        assert not app.query_one("#sync-now", Button).disabled
        await pilot.click("#sync-now")
        await pilot.pause()
        assert (box.settings.home / "sync" / "now").exists()
        assert "reconnects now" in screen_text(app)
        assert box.db.execute("SELECT count(*) FROM audit_log WHERE action = 'sync_now_requested'").fetchone()[0] == 1


async def test_times_on_the_console_are_the_clinic_s_not_the_box_clock_s(box: Box):
    import datetime as dt
    from zoneinfo import ZoneInfo

    act = data.activate(box, str(SHIPPED_DIR / "0.1.0"))
    app = Console(box, "en")
    async with app.run_test(size=SIZE) as pilot:
        text = await show(app, pilot, "7")
    clinic = dt.datetime.fromtimestamp(act.activated_at, ZoneInfo(box.settings.timezone)).strftime("%m-%d %H:%M")
    machine = dt.datetime.fromtimestamp(act.activated_at).strftime("%m-%d %H:%M")
    assert box.settings.timezone == "Europe/Istanbul" and clinic in text
    assert machine == clinic or machine not in text  # where the machine's zone differs (CI runs on UTC), its time is not shown
