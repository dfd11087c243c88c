"""Real parts for ingest tests: an on-disk box database, a real keystore, the real queue, generated MG files.

(pytest runs with --import-mode=importlib, so helpers are handed out as fixtures, not imported.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.ingest import mg
from edge_agent.ingest.service import IngestService
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import open_database
from provisioning.keystore import FileKeystore, KdfParams

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
CORPUS = SHARED / "data" / "dicom"
MIAS = SHARED / "data" / "mias"
FAST_KDF = KdfParams(time_cost=1, memory_kib=8 * 1024, parallelism=1)


@dataclass
class Rig:
    settings: Settings
    db: object
    keystore: FileKeystore
    queue: JobQueue
    service: IngestService

    def infer_jobs(self) -> list[tuple]:
        return self.db.execute("SELECT id, key, payload FROM jobs WHERE queue = 'infer' ORDER BY id").fetchall()


def make_rig(home: Path, **overrides) -> Rig:
    settings = Settings.load(env={"MAMMO_HOME": str(home)}, home=home, **overrides)
    db = open_database(settings.db_path)
    keystore = FileKeystore.open_or_create(home / "keystore.json", "test passphrase", FAST_KDF)
    queue = JobQueue(db)
    return Rig(settings, db, keystore, queue, IngestService(db=db, keystore=keystore, queue=queue, settings=settings))


@pytest.fixture
def rig_factory():
    """``rig_factory(home, **settings_overrides)`` for tests that need their own settings or clock."""
    made: list[Rig] = []

    def factory(home: Path, **overrides) -> Rig:
        made.append(make_rig(home, **overrides))
        return made[-1]

    yield factory
    for r in made:
        r.db.conn.close()


@pytest.fixture
def rig(rig_factory, tmp_path: Path) -> Rig:
    return rig_factory(tmp_path / "home")


@pytest.fixture
def corpus() -> Path:
    if not (CORPUS / "INDEX.csv").exists():
        pytest.skip(f"shared DICOM corpus not found at {CORPUS} (it lives beside the checkout, not in it)")
    return CORPUS


@pytest.fixture
def study() -> list:
    """Four screening views of ÇELİK^AYŞE."""
    return mg.screening_study(mg.TURKISH_PATIENTS[0], seed=1, size=128)
