"""Issue 12's whole story on a running box: `mammo up` over a clinic with radiologist-confirmed studies.

The daemon's scheduler starts a round in the training window; real-size studies
dropped into the drop folder while it trains are triaged without waiting for it
(screening first), and the same round finishes; its epsilon is in
the ledger and its update in sync's durable outbox. Real processes throughout:
the daemon, its training process, the drop-folder watcher, the inference
workers, SQLite; no test sink and no test rule.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.inference import realsize
from edge_agent.ingest import mg
from edge_agent.learning import ledger
from edge_agent.store import open_database
from kiosk_ui.server import free_port

REPO = Path(__file__).resolve().parents[3]
N_ARRIVING = 2
DEADLINE_S = 300  # a busy 2-core machine; the test asserts the order of events, never their speed


@pytest.mark.slow
def test_a_running_box_trains_when_idle_yields_to_a_new_study_resumes_and_places_its_update(clinic):
    env = clinic.process_env(
        MAMMO_TRAIN_UPDATE_SINK="sync.outbox:place_update", MAMMO_TRAIN_STEPS="500", MAMMO_TRAIN_CHECK_INTERVAL_S="1", MAMMO_TRAIN_RESUME_IDLE_S="3",
        MAMMO_INGEST_DROP_POLL_S="0.3", MAMMO_KIOSK_PORT=str(free_port()), MAMMO_DICOM_HOST="127.0.0.1",
        MAMMO_DICOM_PORT=str(free_port()), MAMMO_METRICS_PORT="0")
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "up"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = None
    dropped_at: list[float] = []
    try:
        deadline = time.monotonic() + DEADLINE_S

        def until(what: str, pred):
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"mammo up ended ({proc.returncode}) before {what}"
                got = pred()
                if got:
                    return got
                time.sleep(0.05)
            raise AssertionError(f"gave up waiting for {what}: rounds {ledger.rounds(db)}, drop {sorted(p.name for p in (clinic.home / 'drop').rglob('*'))}, "
                                 f"results {db.execute('SELECT count(*) FROM infer_results').fetchone()}, queue {db.execute('SELECT queue, state, count(*) FROM jobs GROUP BY 1, 2').fetchall()}, "
                                 f"dropped at {dropped_at[:1]}, results at {db.execute('SELECT max(created_at) FROM infer_results').fetchone()}")

        db = open_database(clinic.home / "box.sqlite3", migrate=False)

        def the_round() -> ledger.Round | None:
            rounds = ledger.rounds(db)
            return rounds[0] if rounds else None

        started = until("a scheduled round to train past its first checkpoint", lambda: (r := the_round()) and r.steps_done >= 10 and r)
        assert started.state == "running" and started.steps_done < started.steps

        dropped_at.append(time.time())
        drop = clinic.home / "drop"
        views = {(lat, view): (realsize.pixels(4242 + i, lat), b"") for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)}
        for k in range(N_ARRIVING):  # real-size studies (3328 x 4096, 14 bits): what a unit sends, and what screening costs
            study = realsize.study(views, None, patient=mg.fake_patient(4242 + k), study_uid=mg._uid("arrives-while-training", k))
            for i, ds in enumerate(study):
                mg.write(ds, drop / ".incoming" / f"S{k}-IMG{i}.dcm").rename(drop / f"S{k}-IMG{i}.dcm")

        # Screening first: the new studies are triaged while the round is still open. Whether the round also records a
        # pause depends on whether its SCHED_IDLE process got a CPU slice while a study was queued (the kernel may starve
        # it for the whole study); the pause and resume themselves are tested deterministically in test_runner.py.
        n_results = 14 + 2 + N_ARRIVING  # the clinic's triaged studies (14 labelled, 2 never labels), plus the new ones
        until("the new studies to be triaged", lambda: db.execute("SELECT count(*) FROM infer_results WHERE status = 'done'").fetchone()[0] == n_results)
        triaged_at = db.execute("SELECT max(created_at) FROM infer_results").fetchone()[0]
        states = {r.state for r in ledger.rounds(db)}
        assert states & {"running", "paused"}, f"the round ended before the new studies were screened: {states}"
        done = until("the round to resume and finish", lambda: (r := the_round()) and r.state == "done" and r)
        assert done.round_id == started.round_id and done.steps_done == done.steps and done.finished_at > triaged_at
        assert [r.round_id for r in ledger.rounds(db)] == [done.round_id]
        assert ledger.spent(db, "0.1.0") == pytest.approx(done.epsilon_total) and 0 < done.epsilon_round <= 0.25 + 1e-9

        from sync import outbox

        entry = outbox.get(db, done.update_id)
        assert entry is not None and entry.example_count == done.examples and entry.epsilon == pytest.approx(done.epsilon_round)
        assert entry.state == "awaiting_kit"  # sealed in the outbox until the box is enrolled and the link is up
    finally:
        if db is not None:
            db.conn.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
