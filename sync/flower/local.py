"""A whole federation on one machine: an authority, a coordinator and N enrolled boxes on loopback, for tests and ``mammo bench sync``.

Everything is real: the authority's CA and keys, each box's keystore,
database and installed startup kit, the coordinator's SuperLink with TLS and
SuperNode authentication, each box's SuperNode with its own enrolment key,
CKKS ciphertexts in the outboxes, signed releases activated through the
box's activation path.  Only the key-derivation cost is lowered (Argon2 at
its cheapest) so that a federation is made in seconds; ``passphrase`` is
passed to every SuperNode in ``MAMMO_KEYSTORE_PASSPHRASE`` as a clinic box's
service environment would.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import sqlite_utils

from edge_agent.errors import SyncError
from edge_agent.settings import Settings
from edge_agent.store import open_database
from provisioning import enrolment
from provisioning.authority import Authority
from provisioning.keystore import FileKeystore, KdfParams
from sync import box_side, outbox
from sync import service as box_service
from sync.coordinator import service, store
from sync.flower import processes
from sync.update import LocalUpdate, TrainableSpec

FAST = KdfParams(time_cost=1, memory_kib=8 * 1024)
AUTHORITY_PASSPHRASE = "federation-passphrase"
BOX_PASSPHRASE = "box-passphrase"
BASE_RELEASE = Path(__file__).resolve().parents[2] / "models" / "release" / "0.1.0"
T = TypeVar("T")


@dataclass
class LocalBox:
    index: int
    home: Path
    keystore: FileKeystore
    db: sqlite_utils.Database
    node: box_service.Supervisor | None = None

    @property
    def settings(self) -> Settings:
        return box_side.settings_for(self.home)

    @property
    def box_id(self) -> str:
        return self.keystore.box_id


@dataclass
class LocalFederation:
    root: Path
    auth: Authority
    boxes: list[LocalBox]
    port: int
    spec: TrainableSpec
    options: dict[str, Any] = field(default_factory=dict)
    coordinator: service.Coordinator | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def create(cls, root: Path, n_boxes: int = 3, **options: Any) -> LocalFederation:
        """Authority, coordinator home and ``n_boxes`` enrolled boxes under ``root`` (nothing running yet)."""
        auth = Authority.init(root / "authority", AUTHORITY_PASSPHRASE, kdf=FAST, now=dt.datetime.now(dt.UTC))
        port = processes.free_port()
        boxes = []
        for i in range(n_boxes):
            home = root / f"box{i}"
            home.mkdir(parents=True, mode=0o700)
            keystore = FileKeystore.create(home / "keystore.json", BOX_PASSPHRASE, FAST)
            folder = home / "provisioning"
            kit = auth.issue_kit(enrolment.make_request(keystore, folder), coordinator=f"127.0.0.1:{port}")
            enrolment.install(kit, keystore=keystore, folder=folder)
            boxes.append(LocalBox(i, home, keystore, open_database(home / "box.sqlite3")))
        service.prepare(root / "coordinator", auth, BASE_RELEASE, ["127.0.0.1", "localhost"])
        spec = TrainableSpec.from_dict(_spec_dict(root / "coordinator"))
        return cls(root, auth, boxes, port, spec, dict(options))

    @property
    def paths(self) -> service.CoordinatorPaths:
        return service.CoordinatorPaths(self.root / "coordinator")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_coordinator(self) -> service.Coordinator:
        o = self.options
        run_config = {k: str(o[k.replace("-", "_")]) for k in ("buffer-k", "deadline-s", "min-updates", "max-staleness") if k.replace("-", "_") in o}
        self.coordinator = service.Coordinator(self.paths, self.auth, host="127.0.0.1", port=self.port, poll_s=float(o.get("poll_s", 1.0)),
                                               reply_timeout_s=float(o.get("reply_timeout_s", 60.0)), admit_every_s=float(o.get("admit_every_s", 2.0)),
                                               run_config=run_config)
        self.coordinator.start(self.stop_event)
        return self.coordinator

    def start_box(self, i: int, superlink: str | None = None) -> box_service.Supervisor:
        """Box ``i``'s SuperNode under the same supervision as ``mammo up`` (restarted until the link accepts it)."""
        box = self.boxes[i]
        if box.node is None:
            env = {"MAMMO_KEYSTORE_PASSPHRASE": BOX_PASSPHRASE} | dict(self.options.get("box_env", {}))
            box.node = box_service.Supervisor(box.settings, box.keystore, superlink=superlink, env=env, min_delay=1.0, max_delay=5.0).start()
        return box.node

    def stop_box(self, i: int, *, kill: bool = False) -> None:
        box = self.boxes[i]
        if box.node is not None:
            box.node.stop(kill=kill)
            box.node = None

    def place(self, i: int, seed: int, *, base: str | None = None, examples: int = 40, epsilon: float = 0.3) -> str:
        """A finished local update in box ``i``'s outbox (encrypted with the kit's context); returns its ciphertext hash."""
        box = self.boxes[i]
        delta = np.random.default_rng(seed).normal(0, 1e-3, self.spec.size).astype(np.float32)
        update = LocalUpdate(update_id=str(uuid.uuid4()), base_model_version=base or self.current_version(), spec=self.spec, delta=delta,
                             example_count=examples, epsilon=epsilon, delta_dp=1e-5, noise_multiplier=1.1, local_metrics={"auc": 0.6 + 0.01 * i})
        update_id = outbox.place_update(box.db, box.home, update, keystore=box.keystore)
        entry = outbox.get(box.db, update_id)
        assert entry is not None and entry.sha256 is not None
        return entry.sha256

    def install_base(self, i: int) -> str:
        """Activate the coordinator's generation-0 release on box ``i`` (as if it had synced before), through its activation path."""
        import shutil

        from edge_agent.inference.activation import ModelRegistry

        box = self.boxes[i]
        version = str(self.paths.read_state()["base_version"])
        target = box.settings.models_dir / version
        if not target.exists():
            shutil.copytree(self.paths.releases / version, target)
        return ModelRegistry(box.db, box.settings).activate(str(target), by="sync", reason="federation base release").version

    def store_db(self) -> sqlite_utils.Database:
        return store.open_store(self.paths.root)

    def current_version(self) -> str:
        db = self.store_db()
        try:
            return store.current_model(db).version
        finally:
            db.conn.close()

    def close(self) -> None:
        for i in range(len(self.boxes)):
            self.stop_box(i)
        self.stop_event.set()
        if self.coordinator is not None:
            self.coordinator.stop()
        for box in self.boxes:
            box.db.conn.close()


def _spec_dict(coordinator_home: Path) -> dict[str, Any]:
    from sync.coordinator import releases

    state = service.CoordinatorPaths(coordinator_home).read_state()
    return releases.trainable_spec(coordinator_home / "releases" / str(state["base_version"])).as_dict()


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; SyncError naming ``what`` at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SyncError(f"Timed out after {timeout:.0f} s waiting for {what}.")
        time.sleep(every)
