"""A real box home with confirmed studies, built once per session and copied per test.

The studies are synthetic four-view MG studies sent through the real ingest
(de-identification, encrypted store), triaged by the real inference handler
(so the infer queue is empty, as on an idle box), and assessed in the kiosk's
table by a radiologist (BI-RADS 1 or 4) -- plus rows that must never become
labels (a family doctor's agreement, BI-RADS 0 and 3, legacy rows).
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.box import open_box
from edge_agent.inference.activation import ModelRegistry
from edge_agent.inference.worker import InferenceHandler
from edge_agent.ingest import mg
from edge_agent.ingest.image_store import ImageStore
from edge_agent.ingest.service import IngestPaths, IngestService
from edge_agent.settings import Settings
from models.runtime import Screener

PASSPHRASE = "test-passphrase"
N_STUDIES = 14  # labelled; women held back by hash: about a quarter
TRAIN_ENV = {
    "MAMMO_TRAIN_MIN_EXAMPLES": "4",
    "MAMMO_TRAIN_MIN_NEW_EXAMPLES": "1",
    "MAMMO_TRAIN_STEPS": "8",
    "MAMMO_TRAIN_BATCH_SIZE": "4",
    "MAMMO_TRAIN_WINDOW": "00:00-00:00",  # all day
    "MAMMO_TRAIN_RESUME_IDLE_S": "0.5",
    "MAMMO_TRAIN_MAX_LOAD": "1000",  # the test machine is busy by design
    "MAMMO_TRAIN_MAX_TEMP_C": "1000",
    "MAMMO_TRAIN_REQUIRE_MAINS": "false",
    "MAMMO_TRAIN_GATE_MIN_CASES": "1",
    "MAMMO_TRAIN_UPDATE_SINK": "learning_test_sink:place",
}

SINK = '''
"""A sink for tests: keeps each update as a .npz beside the box, idempotent by update_id."""
import json
from pathlib import Path

import numpy as np


def place(box_db, home, update):
    out = Path(home) / "test-outbox"
    out.mkdir(exist_ok=True)
    path = out / f"{update.update_id}.npz"
    if not path.exists():
        np.savez(path, delta=update.delta)
        (out / f"{update.update_id}.json").write_text(json.dumps({
            "base_model_version": update.base_model_version, "example_count": update.example_count, "epsilon": update.epsilon,
            "delta_dp": update.delta_dp, "noise_multiplier": update.noise_multiplier, "names": list(update.spec.names),
            "size": update.spec.size, "local_metrics": update.local_metrics}))
    return update.update_id
'''


def box_env(home: Path, sink_dir: Path, **extra: str) -> dict[str, str]:
    env = {"MAMMO_HOME": str(home), "MAMMO_KEYSTORE_PASSPHRASE": PASSPHRASE, **TRAIN_ENV, **extra}
    return env


@dataclass
class Clinic:
    home: Path
    sink_dir: Path
    studies: list[tuple[str, int]]  # (study_uid, label) of the radiologist-labelled studies

    def env(self, **extra: str) -> dict[str, str]:
        return box_env(self.home, self.sink_dir, **extra)

    def settings(self, **extra: str) -> Settings:
        return Settings.load(env=self.env(**extra))

    def process_env(self, **extra: str) -> dict[str, str]:
        """Environment of a real training process: the box's, with the test sink importable."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_")}
        path = os.pathsep.join([str(self.sink_dir), str(Path(__file__).resolve().parents[3]), base.get("PYTHONPATH", "")])
        return {**base, **self.env(**extra), "PYTHONPATH": path}

    def write_toml(self, **train: object) -> None:
        """$MAMMO_HOME/mammo.toml as a technician writes it (what the scheduled job reloads): the test [train] settings."""
        values = {k.removeprefix("MAMMO_TRAIN_").lower(): v for k, v in TRAIN_ENV.items()}
        values.update({k: str(v) for k, v in train.items()})

        def lit(v: str) -> str:
            return v if v.replace(".", "", 1).isdigit() or v in ("true", "false") else f'"{v}"'

        lines = [f'keystore_passphrase = "{PASSPHRASE}"', "[train]", *(f"{k} = {lit(str(v))}" for k, v in values.items())]
        (self.home / "mammo.toml").write_text("\n".join(lines) + "\n")

    def runner_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "edge_agent.learning.runner", *args]


def _build(root: Path) -> Clinic:
    home = root / "home"
    sink_dir = root / "sink"
    sink_dir.mkdir(parents=True)
    (sink_dir / "learning_test_sink.py").write_text(textwrap.dedent(SINK))
    settings = Settings.load(env=box_env(home, sink_dir))
    box = open_box(settings, interactive=False)
    ingest = IngestService.from_box(box, workers=1)
    try:
        registry = ModelRegistry(box.db, settings)
        registry.ensure_active()
        labelled: list[tuple[str, int]] = []
        uids = []
        for seed in range(N_STUDIES + 2):
            patient = mg.fake_patient(seed + 100)
            uid = mg._uid("learning-study", seed)
            results = [ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(seed * 10 + i, lat, 128), patient=patient,
                                                                       laterality=lat, view=view, study_uid=uid, instance_number=i + 1,
                                                                       seed=seed)), source="test")
                       for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)]
            uids.append(results[0].study_uid)
        store = ImageStore(IngestPaths.of(settings).images, box.keystore.master_key())
        handler = InferenceHandler(box.queue, store, registry, lambda rel: Screener(rel, backend="onnx-int8", threads=1), profile="cpu-small")
        while (job := box.queue.claim("infer")) is not None:  # the box triages what arrived: the queue is empty again
            box.queue.ack(job, within=handler(job))
        now = time.time()
        for i, uid in enumerate(uids[:N_STUDIES]):
            label = i % 2
            birads = 4 if label else (1 if i % 4 else 2)
            source = "radiologist" if i % 3 else "radiology_report"
            box.db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, category_source, created_at)"
                           " VALUES (?, 'rad', 'radiologist', 1, ?, 'B', ?, ?)", [uid, birads, source, now - 3600 + i])
            labelled.append((uid, label))
        # never labels: the family doctor's agreement alone, BI-RADS 0 and 3, a legacy row
        box.db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, created_at) VALUES (?, 'dr', 'doctor', 1, ?)",
                       [uids[N_STUDIES], now])
        box.db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, category_source, created_at)"
                       " VALUES (?, 'dr', 'doctor', 1, 4, 'C', 'legacy', ?)", [uids[N_STUDIES + 1], now])
        box.db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, category_source, created_at)"
                       " VALUES (?, 'rad', 'radiologist', 1, 0, 'C', 'radiologist', ?)", [uids[N_STUDIES + 1], now])
    finally:
        ingest.close()
        box.close()
    return Clinic(home, sink_dir, labelled)


@pytest.fixture(scope="session")
def clinic_template(tmp_path_factory) -> Clinic:
    return _build(tmp_path_factory.mktemp("clinic-template"))


def copy_clinic(template: Clinic, root: Path) -> Clinic:
    shutil.copytree(template.home.parent, root, symlinks=True)
    return Clinic(root / "home", root / "sink", list(template.studies))


@pytest.fixture
def clinic(clinic_template: Clinic, tmp_path: Path) -> Clinic:
    """A private copy of the template box (database, keystore, images, test sink)."""
    return copy_clinic(clinic_template, tmp_path / "clinic")


ROUND = {"MAMMO_TRAIN_STEPS": "30"}  # long enough to be interrupted after its first checkpoint (step 10)
SEED = 11


@pytest.fixture(scope="session")
def reference_round(clinic_template: Clinic, tmp_path_factory) -> dict:
    """The uninterrupted round (seed SEED, ROUND settings) that every interrupted one must end up equal to."""
    from edge_agent.learning import runner

    c = copy_clinic(clinic_template, tmp_path_factory.mktemp("reference") / "clinic")
    placed: list = []
    out = runner.run(c.settings(**ROUND), seed=SEED, sink=lambda db, home, update: placed.append(update) or update.update_id)
    assert out.status == "done", out
    return {"outcome": out, "update": placed[0], "clinic": c}
