"""`mammo train status|run --json`, `mammo train --cv` untouched, and the console's privacy budget line."""

from __future__ import annotations

import json
import subprocess
import sys

from edge_agent.box import open_box
from edge_agent.cli import build_parser


def _mammo(clinic, *args: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], env=clinic.process_env(**env), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_train_subcommands_sit_beside_the_model_training_options():
    from models.cli import cmd_train

    parser = build_parser()
    cv = parser.parse_args(["train", "--cv", "--k", "3"])
    assert cv.handler is cmd_train and cv.cv and cv.k == 3 and cv.train_command is None
    st = parser.parse_args(["train", "status", "--json"])
    assert st.handler.__name__ == "cmd_status" and st.json
    run = parser.parse_args(["train", "run", "--force-window", "--json"])
    assert run.handler.__name__ == "cmd_run" and run.force_window
    assert parser.parse_args(["bench", "train", "--json", "--studies", "8"]).studies == 8


def test_status_then_a_round_then_status_again(clinic):
    before = _mammo(clinic, "train", "status", "--json")
    assert before["base_model_version"] == "0.1.0" and before["epsilon_budget"] == 1.0 and before["epsilon_spent"] == 0.0
    assert before["rounds"] == [] and before["window"] == "00:00-00:00"
    ran = _mammo(clinic, "train", "run", "--force-window", "--json", MAMMO_TRAIN_STEPS="6")
    assert ran["status"] == "done" and ran["steps_done"] == 6 and ran["update_id"]
    after = _mammo(clinic, "train", "status", "--json")
    assert after["epsilon_spent"] == ran["epsilon_spent"] > 0 and after["rounds_done"] == 1
    assert after["epsilon_left"] == 1.0 - after["epsilon_spent"]
    assert after["last_decision"]["train"] is True and after["rounds"][0]["gate"]["decision"] in ("serve", "candidate")
    assert "seed" not in after["rounds"][0]

    from edge_agent.console import data, views

    box = open_box(clinic.settings(), interactive=False)
    try:
        view = data.models(box)
    finally:
        box.close()
    text = views.models("en", view, "Europe/Istanbul")
    assert f"{after['epsilon_spent']:.2f} spent of 1.00" in text and "1 local training round" in text
    assert "Training decision" in text
