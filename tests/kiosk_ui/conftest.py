"""Real parts for kiosk tests: an on-disk box, generated MG studies through the real ingest service, synthetic results."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from litestar.testing import TestClient

from edge_agent.box import Box
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import open_database
from kiosk_ui import synthetic
from kiosk_ui.app import create_app
from kiosk_ui.auth import Passwords
from kiosk_ui.services import KioskServices
from provisioning.keystore import FileKeystore, KdfParams

FAST_KDF = KdfParams(time_cost=1, memory_kib=8 * 1024, parallelism=1)
# Real Argon2id, cheaper parameters than the box uses (as FAST_KDF is for the keystore).
FAST_PASSWORDS = Passwords(PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
PASSWORDS = {"doktor": "doktor-parola-1", "teknisyen": "teknik-parola-1", "radyolog": "radyo-parola-12", "yonetici": "yonetici-parola1"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Kiosk:
    settings: Settings
    box: Box
    services: KioskServices
    clock: Clock
    studies: dict[str, str] = field(default_factory=dict)

    def count(self, table: str, where: str = "1", params: tuple = ()) -> int:
        return self.box.db.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()[0]

    def audit(self, action: str) -> list[tuple]:
        return self.box.db.execute("SELECT username, study_uid, detail FROM kiosk_audit WHERE action = ? ORDER BY id", [action]).fetchall()

    def sops(self, study_uid: str) -> list[str]:
        return [r[0] for r in self.box.db.execute("SELECT sop_uid FROM ingest_instances WHERE study_uid = ? ORDER BY sop_uid", [study_uid])]


def make_kiosk(home: Path, *, passwords: Passwords = FAST_PASSWORDS, **overrides) -> Kiosk:
    settings = Settings.load(env={"MAMMO_HOME": str(home)}, home=home, **overrides)
    db = open_database(settings.db_path)
    keystore = FileKeystore.open_or_create(home / "keystore.json", "test passphrase", FAST_KDF)
    box = Box(settings, db, keystore, JobQueue(db))
    clock = Clock()
    services = KioskServices.from_box(box, clock=clock, passwords=passwords)
    k = Kiosk(settings, box, services, clock)
    synthetic.write_release_info(settings.models_dir)  # thresholds for the synthetic results (heatmaps at/above 0.3)
    # Ayşe ÇELİK: four views, a priority result. Gülşen ŞAHİN: four views, no suspicious finding.
    # İpek ÖZTÜRK: two views only, still receiving (no result yet).
    k.studies["priority"] = synthetic.ingest_study(services.ingest, seed=0)
    synthetic.write_result(services.ingest, k.studies["priority"], triage="priority_radiologist_review", score=0.91)
    k.studies["normal"] = synthetic.ingest_study(services.ingest, seed=1)
    synthetic.write_result(services.ingest, k.studies["normal"], triage="no_suspicious_finding", score=0.08)
    k.studies["pending"] = synthetic.ingest_study(services.ingest, seed=2, views=2)
    services.add_user("doktor", PASSWORDS["doktor"], "doctor", "Dr. Zeynep Işık")
    services.add_user("teknisyen", PASSWORDS["teknisyen"], "technician", "Elif Arslan")
    services.add_user("radyolog", PASSWORDS["radyolog"], "radiologist", "Dr. İsmail Kaya")
    services.add_user("yonetici", PASSWORDS["yonetici"], "admin", "Yönetici")
    return k


@pytest.fixture
def kiosk(tmp_path: Path):
    k = make_kiosk(tmp_path / "home")
    yield k
    k.services.close()
    k.box.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="_csrf" value="([^"]*)"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


def sign_in(client: TestClient, username: str, password: str | None = None):
    page = client.get("/login")
    return client.post("/login", data={"_csrf": csrf_of(page.text), "username": username, "password": password or PASSWORDS[username]},
                       follow_redirects=False)


@pytest.fixture
def client(kiosk: Kiosk):
    with TestClient(create_app(kiosk.settings, kiosk.services), base_url="http://kiosk.local") as c:
        yield c


@pytest.fixture
def doctor(client: TestClient):
    r = sign_in(client, "doktor")
    assert r.status_code == 303, r.text
    return client


def message_of(html: str) -> str:
    m = re.search(r'id="(?:error|login)-message">([^<]+)<', html)
    return m.group(1) if m else ""


def run_real_model(k: Kiosk, *, views: int = 4, seed: int = 7) -> str:
    """Ingest a study of ``views`` views, close it, and triage it with the shipped release through the real inference worker."""
    from edge_agent.inference.activation import ModelRegistry
    from edge_agent.inference.worker import InferenceHandler
    from edge_agent.worker import Worker
    from models.runtime import Screener

    study = synthetic.ingest_study(k.services.ingest, seed=seed, views=views)
    k.services.ingest.sweep(now=time.time() + k.settings.ingest_study_complete_timeout_s + 60)  # a partial study closes by timeout
    registry = ModelRegistry(k.box.db, k.settings)
    registry.ensure_active()
    handler = InferenceHandler(k.box.queue, k.services.ingest.store, registry,
                               lambda rel: Screener(rel, backend="onnx-int8", threads=1), profile="cpu-small")
    Worker(k.box.queue, "infer", handler).run(drain=True)
    return study
