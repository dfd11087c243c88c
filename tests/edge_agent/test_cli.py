"""The ``mammo`` CLI through real subprocesses: exit codes and the JSON last line."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def mammo(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "MAMMO_HOME": str(home), "MAMMO_KEYSTORE_PASSPHRASE": "pw", **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True, env=e, cwd=REPO, timeout=300)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_up_check_creates_the_box_and_reports_where_to_look(tmp_path):
    r = mammo(tmp_path, "up", "--check", "--json")
    assert r.returncode == 0, r.stderr
    status = last_json(r.stdout)
    assert status["home"] == str(tmp_path)
    assert Path(status["database"]).exists() and Path(status["keystore"]).exists()
    again = last_json(mammo(tmp_path, "status", "--json").stdout)
    assert again["box_id"] == status["box_id"]


def test_settings_error_exits_2_naming_the_field(tmp_path):
    r = mammo(tmp_path, "status", env={"MAMMO_QUEUE_MAX_ATTEMPTS": "-1"})
    assert r.returncode == 2
    assert "queue_max_attempts" in r.stderr


def test_foreign_database_exits_1_with_the_fix(tmp_path):
    (tmp_path / "box.sqlite3").write_bytes(b"not a database at all" * 50)
    r = mammo(tmp_path, "status", "--json")
    assert r.returncode == 1
    assert "left untouched" in r.stderr


def test_queue_commands_report_json(tmp_path):
    r = mammo(tmp_path, "queue", "stats", "--json")
    assert r.returncode == 0 and last_json(r.stdout) == {"queues": {}}
    r = mammo(tmp_path, "queue", "dead", "--json")
    assert last_json(r.stdout) == {"dead": []}


def test_bench_queue_prints_ours_beside_both_peers(tmp_path):
    r = mammo(tmp_path, "bench", "queue", "--jobs", "200", "--json")
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert set(out["results"]) == {"mammo JobQueue", "persist-queue SQLiteAckQueue", "huey SqliteStorage (no ack)"}
    rounds = out["ratio_ours_to_best_peer_rounds"]  # the headline is the median of the per-round ratios
    assert len(rounds) == out["rounds"] and out["ratio_ours_to_best_peer"] == sorted(rounds)[len(rounds) // 2]
    ours = out["results"]["mammo JobQueue"]["jobs_per_s"]
    assert out["ratio_ours_to_best_peer_fastest_rounds"] == round(ours / out["results"][out["best_peer"]]["jobs_per_s"], 3)
    assert out["claim_p99_ms"] > 0


def test_bench_queue_soak_reports_lost_and_duplicated(tmp_path):
    r = mammo(tmp_path, "bench", "queue", "--soak", "--cycles", "20", "--json")
    out = last_json(r.stdout)
    assert r.returncode == 0, r.stderr
    assert (out["lost"], out["duplicated"], out["sigkill_cycles"]) == (0, 0, 20)


def test_building_the_command_list_imports_no_heavy_library():
    """Every `mammo` call builds the whole parser: torch or textual there would cost seconds per command."""
    code = ("import sys; from edge_agent.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'textual', 'onnxruntime', 'tenseal', 'flwr') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
