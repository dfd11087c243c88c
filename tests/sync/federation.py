"""Not a test module: a real federation in temporary folders for the sync tests.

An authority (CA, model-signing key, CKKS material), boxes with a real keystore,
database and installed startup kit, and updates shaped like the shipped
trainable part.  Argon2 runs at its cheapest so the fixtures stay fast.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

from edge_agent.store import open_database
from provisioning import enrolment
from provisioning.authority import Authority
from provisioning.keystore import FileKeystore, KdfParams
from sync.update import LocalUpdate, TrainableSpec

FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)
PASSPHRASE = "box-passphrase"
#: The shipped trainable part of release 0.1.0 (fuse block + head): 20,258 values.
SPEC = TrainableSpec(
    ("fuse.1.body.0.0.weight", "fuse.1.body.1.0.weight", "fuse.1.body.2.0.weight", "head.weight", "head.bias"),
    ((192, 48, 1, 1), (192, 1, 3, 3), (48, 192, 1, 1), (2, 48, 1, 1), (2,)),
)


@dataclass
class TestBox:
    """A box home as the daemon lays it out: keystore.json, box.sqlite3, provisioning/."""

    __test__ = False
    home: Path
    keystore: FileKeystore
    db: sqlite_utils.Database

    @classmethod
    def create(cls, home: Path) -> TestBox:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        keystore = FileKeystore.create(home / "keystore.json", PASSPHRASE, FAST)
        return cls(home, keystore, open_database(home / "box.sqlite3"))

    @property
    def folder(self) -> Path:
        return enrolment.folder_of(self)

    def enrol(self, authority: Authority) -> None:
        kit = authority.issue_kit(enrolment.make_request(self.keystore, self.folder))
        enrolment.install(kit, keystore=self.keystore, folder=self.folder)

    def he_secret(self) -> bytes:
        return enrolment.he_secret_context(self.keystore, self.folder)


def new_authority(folder: Path) -> Authority:
    return Authority.init(folder, "federation-passphrase", kdf=FAST, now=dt.datetime.now(dt.UTC))


def make_update(seed: int = 0, *, base: str = "0.1.0", examples: int = 40, epsilon: float = 0.3, update_id: str | None = None,
                spec: TrainableSpec = SPEC) -> LocalUpdate:
    delta = np.random.default_rng(seed).normal(0, 1e-3, spec.size).astype(np.float32)
    return LocalUpdate(update_id=update_id or str(uuid.uuid4()), base_model_version=base, spec=spec, delta=delta,
                       example_count=examples, epsilon=epsilon, delta_dp=1e-5, noise_multiplier=1.1, local_metrics={"auc": 0.7})
