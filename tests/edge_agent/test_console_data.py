"""What the technician's console reads and does, without drawing it: real boxes, real files, the real queue and releases."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from pathlib import Path

import pytest

from edge_agent.box import open_box
from edge_agent.console import data
from edge_agent.inference.activation import SHIPPED_DIR
from edge_agent.settings import Settings
from provisioning import enrolment as enrol
from provisioning.authority import Authority
from provisioning.keystore import KdfParams

FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)

STAT = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\nintr 1\n"
STAT_LATER = "cpu  160 0 90 850 50 0 0 0 0 0\n"
MEMINFO = "MemTotal:        8000000 kB\nMemFree:          100000 kB\nMemAvailable:    6000000 kB\n"


def test_cpu_use_is_the_busy_share_between_two_samples():
    before, after = data.parse_cpu_sample(STAT), data.parse_cpu_sample(STAT_LATER)
    assert before == data.CpuSample(busy=150, total=1000)
    assert data.cpu_percent(before, after) == pytest.approx(100 * 100 / 150, abs=0.1)  # 100 busy ticks of 150
    assert data.cpu_percent(before, before) is None and data.cpu_percent(None, after) is None
    assert data.parse_cpu_sample("intr 1\n") is None


def test_memory_used_is_total_minus_available():
    assert data.parse_meminfo(MEMINFO) == (2_000_000 * 1024, 8_000_000 * 1024)
    assert data.parse_meminfo("MemTotal: 10 kB\n") is None  # an old kernel without MemAvailable: unreadable, not wrong


def test_temperature_is_the_hottest_sane_sensor_and_none_without_one(tmp_path: Path):
    assert data.read_temperature(tmp_path) is None
    for rel, text in (("class/thermal/thermal_zone0/temp", "41000\n"), ("class/thermal/thermal_zone1/temp", "-273000\n"),
                      ("class/hwmon/hwmon2/temp1_input", "57500\n"), ("class/hwmon/hwmon3/temp1_input", "garbage")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert data.read_temperature(tmp_path) == (57.5, "class/hwmon/hwmon2/temp1_input")


def test_health_of_a_real_box_reads_disk_and_memory_and_says_what_it_cannot(box, tmp_path: Path):
    h = data.health(box.settings, data.parse_cpu_sample(STAT), data.parse_cpu_sample(STAT_LATER), sys_root=tmp_path)
    assert h.disk_path == box.settings.home and h.disk_total and 0 < (h.disk_free or 0) <= h.disk_total
    assert h.memory_total and h.memory_used is not None and 0 < h.memory_used < h.memory_total
    assert h.cpu_percent == pytest.approx(66.7, abs=0.1)
    assert h.temperature_c is None  # no sensor under this sys root


def _dead_letter(box, queue: str = "infer", error: str = "model crashed [oom]") -> int:
    job_id = box.queue.enqueue(queue, {"study": "1.2.3"}, max_attempts=1).job_id
    job = box.queue.claim(queue)
    assert job is not None and box.queue.fail(job, error) == "dead"
    return job_id


def test_requeue_puts_the_chosen_dead_letter_back_in_line_and_leaves_the_others(box):
    first, second = _dead_letter(box), _dead_letter(box, "ingest", "unreadable")
    view = data.queues(box)
    assert [d.id for d in view.dead] == [first, second] and view.dead[0].last_error == "model crashed [oom]"
    assert {s.queue: s.dead for s in view.stats} == {"infer": 1, "ingest": 1}
    assert data.requeue(box, view.dead[0]) == 1
    assert box.queue.get_state(first) == "ready" and box.queue.get_state(second) == "dead"
    assert data.requeue(box, view.dead[0]) == 0  # no longer dead: nothing moves twice
    assert box.queue.claim("infer").id == first


def test_demo_mode_is_a_passphrase_kept_on_the_disk_it_protects(tmp_path: Path):
    demo_settings = Settings.load(env={"MAMMO_HOME": str(tmp_path / "demo")})
    open_box(demo_settings, interactive=False).close()
    demo = data.keys(demo_settings)
    assert demo.demo and demo.passphrase_source == "file" and demo.passphrase_file.exists()
    assert demo.keystore_exists and demo.box_id and demo.kdf and demo.kdf.startswith("argon2id")
    clinic_settings = Settings.load(env={"MAMMO_HOME": str(tmp_path / "clinic"), "MAMMO_KEYSTORE_PASSPHRASE": "operator-pw"})
    open_box(clinic_settings, interactive=False).close()
    clinic = data.keys(clinic_settings)
    assert not clinic.demo and clinic.passphrase_source == "setting"


def test_enrolment_shows_days_left_and_the_authority_of_the_installed_kit(box, tmp_path: Path):
    assert data.enrolment(box.settings) == data.EnrolmentView(False, "not enrolled", box.keystore.box_id, None, None, None, None, None)
    authority = Authority.init(tmp_path / "authority", "federation-pw", kdf=FAST)
    folder = enrol.folder_of(box.settings)
    kit = authority.issue_kit(enrol.make_request(box.keystore, folder), coordinator="coord.example:9092", days=30, settings={})
    enrol.install(kit, keystore=box.keystore, folder=folder)
    view = data.enrolment(box.settings)
    assert view.enrolled and view.state == "enrolled" and view.days_left in (29, 30)
    assert view.authority_fingerprint == authority.meta["ca_fingerprint"] and view.coordinator == "coord.example:9092"
    later = data.enrolment(box.settings, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=31))
    assert later.state == "expired" and (later.days_left or 0) < 0


def test_benchmark_of_a_release_puts_the_profile_backend_first(tmp_path: Path):
    bench = data.read_benchmark(SHIPPED_DIR / "0.1.0", "tflite-int8")
    assert bench is not None and bench.version == "0.1.0" and bench.median_ms[0][0] == "tflite_int8"
    assert {name for name, _ in bench.median_ms} >= {"onnx_int8", "onnx_fp32"}
    assert data.read_benchmark(tmp_path, "onnx-int8") is None


def test_log_tail_gives_whole_new_lines_only(tmp_path: Path):
    settings = Settings.load(env={"MAMMO_HOME": str(tmp_path)})
    assert data.log_file(settings) is None
    settings.log_dir.mkdir()
    old, log = settings.log_dir / "old.log", settings.log_dir / "mammo.log"
    old.write_text("old\n")
    os.utime(old, (1, 1))
    log.write_text("x" * 100 + "\nfirst\nsecond\nhalf")
    assert data.log_file(settings) == log
    lines, offset = data.read_log(log, None, tail_bytes=20)
    assert lines == ["first", "second"]  # the cut first line and the unfinished last one are left out
    with log.open("a") as fh:
        fh.write(" done\nthird\n")
    more, offset = data.read_log(log, offset)
    assert more == ["half done", "third"]
    assert data.read_log(log, offset) == ([], offset)
    log.write_text("rotated\n")  # cut or replaced: start again from its beginning
    assert data.read_log(log, offset)[0] == ["rotated"]


def test_audit_lists_the_latest_entries_of_the_chained_trail_newest_first(box):
    add_audit(box, "ayse", "login", "")
    add_audit(box, "ayse", "view", "1.2.826.0.1")
    entries = data.audit_entries(box)
    assert [(e.seq, e.actor, e.action, e.object) for e in entries] == [(2, "ayse", "view", "1.2.826.0.1"), (1, "ayse", "login", "")]
    assert [e.seq for e in data.audit_entries(box, limit=1)] == [2]


def test_audit_verification_passes_a_sound_chain_and_names_the_first_edited_entry(box):
    for n in range(3):
        add_audit(box, "ayse", "view", f"1.2.{n}")
    verdict = data.verify_audit(box)
    assert verdict.ok and verdict.entries == 3 and verdict.first_bad is None and verdict.checkpoints >= 1
    edit_audit(box, 2, '{"detail":"nothing to see"}')
    broken = data.verify_audit(box)
    assert not broken.ok and broken.first_bad == 2 and broken.reason


def add_audit(box, user: str, action: str, study: str) -> None:
    """An entry as the kiosk writes it, through the box's hash-chained trail."""
    from edge_agent import audit

    audit.append(box.db, user, action, study or None)


def edit_audit(box, seq: int, details: str) -> None:
    """What someone with write access to the file could do: drop the append-only trigger and change an entry."""
    conn = sqlite3.connect(box.settings.db_path)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET details = ? WHERE seq = ?", [details, seq])
    conn.commit()
    conn.close()
