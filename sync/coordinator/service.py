"""``mammo coordinator up``: the coordinator's services around Flower's SuperLink and the federation's ServerApp.

The coordinator's home (``--home`` or ``MAMMO_COORDINATOR_HOME``, 0700)::

    coordinator.json     the authority folder it serves and the base release (generation 0)
    tls/                 ca.pem, crl.pem (copied from the authority at each admission pass), server.pem, server.key (0600)
    he-public.tenseal    the clinics' CKKS context WITHOUT its secret key: enough to add ciphertexts, not to read one
    releases/<version>/  every global model it published, signed by the federation's model-signing key
    rounds/<id>/         round.json (the plan) and mean.npy (the clinics' decryption) from the ServerApp;
                         published.json and manifest.signed once this process built and signed the release
    admitted.json        Flower node id -> box id and certificate serial, as admitted at the SuperLink
    coordinator.sqlite3  updates, rounds, clinics (sync.coordinator.store)
    flwr/                FLWR_HOME of the ``flwr`` CLI; superlink.db, logs/

Three loops run here, each thin around pure functions:

* **admission**: every ``sync_admit_every_s`` it reads the authority's issued
  certificates and CRL, and makes the SuperLink's registered SuperNode keys
  exactly the current, unrevoked boxes (:func:`admission_plan`): a revoked box
  is unregistered, so Flower refuses it at its next request, before anything
  it sends is read.
* **Flower**: the SuperLink (TLS with a certificate from the federation CA,
  SuperNode authentication) and the ServerApp run as child processes; the
  ServerApp (``sync.flower.server_app``) polls the boxes, buffers, aggregates
  and has one clinic decrypt.
* **publisher**: builds each round's release from the decrypted mean
  (``sync.coordinator.releases``) and signs it and the round manifest.  The
  private signing key stays in this process (the authority, unlocked once at
  start); the Flower processes never hold it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.errors import PeerRefused, SyncError
from provisioning.authority import Authority
from provisioning.files import private_dir, write_atomic
from provisioning.revocation import check_peer
from sync.coordinator import manifest as round_manifest
from sync.coordinator import releases, store
from sync.flower import processes
from sync.flower.protocol import RELEASE_FILES

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[1] / "flower" / "app"
STATE_FILE, ADMITTED_FILE = "coordinator.json", "admitted.json"
SERVER_CERT_RENEW_DAYS = 30


@dataclass(frozen=True)
class CoordinatorPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def ca(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def crl(self) -> Path:
        return self.tls / "crl.pem"

    @property
    def public_context(self) -> Path:
        return self.root / "he-public.tenseal"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds"

    @property
    def admitted(self) -> Path:
        return self.root / ADMITTED_FILE

    @property
    def db(self) -> Path:
        return self.root / "coordinator.sqlite3"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr"

    def read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SyncError(f"{self.root} is not a coordinator home. Fix: run `mammo coordinator up --home {self.root} --authority DIR` once.") from None
        return state


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


# --- preparing the home ----------------------------------------------------------------------------------------------


def prepare(root: Path, auth: Authority, base_release: Path, hosts: list[str], now: dt.datetime | None = None) -> CoordinatorPaths:
    """Make (or refresh) a coordinator home for ``auth``: TLS, public HE context, generation 0 signed by the federation."""
    now = now or dt.datetime.now(dt.UTC)
    paths = CoordinatorPaths(root)
    for d in (root, paths.tls, paths.releases, paths.rounds):
        private_dir(d)
    state = read_json(paths.state) or {}
    if state and Path(state["authority"]) != auth.folder.resolve():
        raise SyncError(f"{root} serves the authority in {state['authority']}, not {auth.folder}. Fix: give that authority, or another --home.")
    write_atomic(paths.ca, (auth.folder / "ca.pem").read_bytes())
    write_atomic(paths.crl, (auth.folder / "crl.pem").read_bytes())
    _server_tls(paths, auth, hosts, now)
    write_atomic(paths.public_context, auth.he_public_context())
    if not state:
        base_version = _read_version(base_release)
        target = paths.releases / base_version
        if not target.exists():
            staging = paths.releases / f".base-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            private_dir(staging)
            for name in RELEASE_FILES:  # what travels to boxes: no TFLite (see releases), no CV rows or benchmarks
                if name != "manifest.sig" and (base_release / name).exists():
                    shutil.copy2(base_release / name, staging / name)
            from models.release_files import write_manifest

            write_manifest(staging, base_version)  # without the TFLite file and CV rows the boxes never receive
            releases.sign(staging, auth.sign)
            os.replace(staging, target)
        spec = releases.trainable_spec(target)
        db = store.open_store(root)
        try:
            store.register_base_model(db, base_version, spec.digest)
        finally:
            db.conn.close()
        state = {"authority": str(auth.folder.resolve()), "base_version": base_version, "created_at": now.isoformat(timespec="seconds"),
                 "trainable_values": spec.size, "spec_digest": spec.digest}
        write_json(paths.state, state)
    return paths


def _read_version(release: Path) -> str:
    info = read_json(release / "model.json")
    if info is None or "version" not in info:
        raise SyncError(f"{release} is not a model release (no model.json). Fix: give --base-release a release folder such as models/release/0.1.0.")
    return str(info["version"])


def _server_tls(paths: CoordinatorPaths, auth: Authority, hosts: list[str], now: dt.datetime) -> None:
    cert_path, key_path = paths.tls / "server.pem", paths.tls / "server.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        named = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
        fresh = cert.not_valid_after_utc - now > dt.timedelta(days=SERVER_CERT_RENEW_DAYS)
        if fresh and set(hosts) <= named and cert.issuer == auth.ca.subject:
            return
    cert_pem, key_pem = auth.server_certificate(hosts, now=now)
    write_atomic(key_path, key_pem)
    write_atomic(cert_path, cert_pem)


# --- admission: the SuperLink's registered keys follow the authority's certificates and CRL -----------------------------


@dataclass(frozen=True)
class Admitted:
    node_id: int
    box_id: str
    serial: str
    admitted_at: str


@dataclass(frozen=True)
class AdmissionPlan:
    register: tuple[tuple[str, str, str], ...]  # (box_id, serial, certificate PEM)
    unregister: tuple[tuple[Admitted, str], ...]  # (node, reason)
    refused: tuple[tuple[str, str, str], ...]  # (box_id, serial, reason): issued but not admitted


def admission_plan(issued: Iterable[Mapping[str, Any]], ca: x509.Certificate, crl: x509.CertificateRevocationList, now: dt.datetime,
                   admitted: Mapping[str, Admitted]) -> AdmissionPlan:
    """Which box keys to register and which nodes to unregister so that exactly the current, unrevoked certificates are admitted.

    ``issued`` are the authority's records (box_id, serial, certificate); ``admitted`` maps serial -> node.
    A box renewed with a new certificate for the same key keeps its node (the key is what Flower knows).
    """
    register, refused = [], []
    keep: set[str] = set()
    keys_kept: dict[bytes, str] = {}
    for entry in sorted(issued, key=lambda e: str(e.get("issued_at", ""))):
        pem, serial, box_id = entry.get("certificate"), str(entry["serial"]), str(entry["box_id"])
        if not pem:
            refused.append((box_id, serial, "issued before the authority kept certificates: issue the box a new kit"))
            continue
        try:
            check_peer(pem.encode(), ca, crl, now)
        except PeerRefused as exc:
            refused.append((box_id, serial, str(exc)))
            continue
        key = processes.ssh_public_key(_ec_key(pem))
        if serial in admitted:
            keep.add(serial)
        elif key in keys_kept or any(_same_key(a, key, issued) for a in admitted.values()):
            keep.update(s for s, a in admitted.items() if _same_key(a, key, issued))
        else:
            register.append((box_id, serial, pem))
        keys_kept[key] = serial
    unregister = tuple((a, "certificate revoked or expired") for s, a in admitted.items() if s not in keep)
    return AdmissionPlan(tuple(register), unregister, tuple(refused))


def _ec_key(pem: str) -> ec.EllipticCurvePublicKey:
    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SyncError("A box certificate holds no P-256 key. Fix: issue the box a new kit.")
    return key


def _same_key(node: Admitted, key: bytes, issued: Iterable[Mapping[str, Any]]) -> bool:
    for e in issued:
        if str(e["serial"]) == node.serial and e.get("certificate"):
            return processes.ssh_public_key(_ec_key(str(e["certificate"]))) == key
    return False


def read_admitted(paths: CoordinatorPaths) -> dict[str, Admitted]:
    """serial -> node, as the last admission pass left it."""
    data = read_json(paths.admitted) or {}
    return {s: Admitted(int(a["node_id"]), str(a["box_id"]), s, str(a["admitted_at"])) for s, a in data.get("nodes", {}).items()}


def node_boxes(paths: CoordinatorPaths) -> dict[int, Admitted]:
    """Flower node id -> admitted box (what the ServerApp checks a reply's certificate against)."""
    return {a.node_id: a for a in read_admitted(paths).values()}


def admit(paths: CoordinatorPaths, auth: Authority, now: dt.datetime | None = None) -> AdmissionPlan:
    """One admission pass: copy the CRL, register new boxes' keys, unregister revoked ones, record the result."""
    now = now or dt.datetime.now(dt.UTC)
    auth._reload()  # another command may have issued or revoked since we opened it
    write_atomic(paths.crl, (auth.folder / "crl.pem").read_bytes())
    admitted = read_admitted(paths)
    plan = admission_plan(auth.meta["issued"], auth.ca, auth.crl(), now, admitted)
    for node, reason in plan.unregister:
        try:
            processes.unregister_node(paths.flwr_home, node.node_id)
        except SyncError as exc:
            log.warning("could not unregister node %s of box %s: %s", node.node_id, node.box_id, exc)
            continue
        admitted.pop(node.serial, None)
        log.warning("box %s refused from now on (node %s unregistered): %s", node.box_id, node.node_id, reason)
    for box_id, serial, pem in plan.register:
        try:
            node_id = processes.register_node(paths.flwr_home, _ec_key(pem), f"box-{serial}")
        except SyncError as exc:
            log.warning("could not admit box %s (certificate %s): %s", box_id, serial, exc)
            continue
        admitted[serial] = Admitted(node_id, box_id, serial, now.isoformat(timespec="seconds"))
        log.info("box %s admitted as node %s", box_id, node_id)
    write_json(paths.admitted, {"updated_at": now.isoformat(timespec="seconds"),
                                "nodes": {s: {"node_id": a.node_id, "box_id": a.box_id, "admitted_at": a.admitted_at} for s, a in admitted.items()},
                                "refused": [{"box_id": b, "serial": s, "reason": r} for b, s, r in plan.refused]})
    return plan


# --- renewal at sync: a box near the end of its certificate asks through the ServerApp; this process's authority issues -----


def renewal_paths(paths: CoordinatorPaths, box_id: str) -> tuple[Path, Path]:
    """(request, kit) files for one box under ``renewals/``: the ServerApp writes the request and hands over the kit."""
    folder = paths.root / "renewals"
    return folder / f"{box_id}.request.json", folder / f"{box_id}.kit"


def issue_renewals(paths: CoordinatorPaths, auth: Authority, now: dt.datetime | None = None) -> list[str]:
    """Issue a kit for each waiting request from a currently admitted box (the authority refuses a revoked one); returns their box ids."""
    folder = paths.root / "renewals"
    if not folder.exists():
        return []
    admitted = {a.box_id for a in read_admitted(paths).values()}
    done = []
    for request in sorted(folder.glob("*.request.json")):
        box_id = request.name.removesuffix(".request.json")
        _, kit_path = renewal_paths(paths, box_id)
        if kit_path.exists():
            continue
        data = read_json(request) or {}
        try:
            from provisioning.pki import read_request

            _, named = read_request(str(data.get("csr", "")).encode())
            if named != box_id or box_id not in admitted:
                raise SyncError(f"request names box {named}, admitted boxes do not include {box_id}")
            kit = auth.issue_kit(str(data["csr"]).encode(), coordinator=data.get("coordinator"), settings=dict(data.get("settings") or {}), now=now)
        except Exception as exc:  # a refused request must not stop the admission loop
            log.warning("renewal for box %s refused: %s", box_id, exc)
            request.unlink(missing_ok=True)
            continue
        write_atomic(kit_path, kit)
        done.append(box_id)
        log.info("renewed certificate issued for box %s", box_id)
    return done


# --- publisher: a release and a signed round manifest for each decrypted round ------------------------------------------


def mean_path(paths: CoordinatorPaths, number: int) -> Path:
    """Where the ServerApp leaves a round's decrypted weighted mean (float32) for the publisher."""
    return paths.rounds / str(number) / "mean.npy"


def write_mean(paths: CoordinatorPaths, number: int, mean: np.ndarray) -> Path:
    path = mean_path(paths, number)
    private_dir(path.parent)
    tmp = path.with_name(f".mean.{os.getpid()}.npy")
    with tmp.open("wb") as f:
        np.save(f, np.asarray(mean, dtype=np.float32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def release_dir(paths: CoordinatorPaths, version: str) -> Path:
    return paths.releases / version


def publish_round(paths: CoordinatorPaths, auth: Authority, db: sqlite_utils.Database, number: int) -> store.Model:
    """Build and sign the release of a decrypted round, sign its manifest, and record both (``store.record_release``: the commit point)."""
    mean = np.load(mean_path(paths, number))
    model = store.current_model(db)
    contributions = store.round_contributions(db, number)
    row = db.execute("SELECT total_weight, aggregate_sha256, trigger FROM fl_rounds WHERE round = ?", [number]).fetchone()
    state = paths.read_state()
    rel = releases.publish(release_dir(paths, model.version), mean, str(state["base_version"]), model.generation + 1, paths.releases,
                           {"round_id": number, "trigger": row[2], "total_weight": row[0],
                            "contributions": [{k: c[k] for k in ("sha256", "share", "staleness", "example_count", "epsilon")} for c in contributions]},
                           auth.sign)
    body = round_manifest.build(number, base_model_version=model.version, new_model_version=rel.version, spec_digest=model.spec_digest,
                                aggregate_sha256=row[1], total_weight=row[0], contributions=contributions)
    signed_body, signature = round_manifest.sign_manifest(body, auth.signing_key(rel.signing_key_version))
    new = store.record_release(db, number, rel.version, manifest=signed_body, signature=signature, release_sha256=rel.manifest_sha256)
    log.info("round %s published as release %s (generation %s)", number, rel.version, new.generation)
    return new


def _publishable(paths: CoordinatorPaths, db: sqlite_utils.Database) -> int | None:
    number = store.open_round(db)
    if number is None or not mean_path(paths, number).exists() or (mean_path(paths, number).parent / "failed.json").exists():
        return None
    return number


# --- the whole coordinator -------------------------------------------------------------------------------------------------


class Coordinator:
    """The running coordinator: SuperLink, ServerApp run, admission and publisher loops (``mammo coordinator up``)."""

    def __init__(self, paths: CoordinatorPaths, auth: Authority, *, host: str, port: int, poll_s: float, reply_timeout_s: float,
                 admit_every_s: float, run_config: Mapping[str, str] | None = None) -> None:
        self.paths, self.auth = paths, auth
        self.host, self.port = host, port or processes.free_port()
        self.poll_s, self.reply_timeout_s, self.admit_every_s = poll_s, reply_timeout_s, admit_every_s
        self.run_config = dict(run_config or {})
        self.superlink: processes.Child | None = None
        self.run_id: int | None = None
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def _run_config(self) -> dict[str, str]:
        return {"coordinator-home": str(self.paths.root), "poll-s": str(self.poll_s), "reply-timeout-s": str(self.reply_timeout_s)} | self.run_config

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        tls = processes.LinkTls(self.paths.tls / "server.pem", self.paths.tls / "server.key", self.paths.ca)
        processes.write_cli_config(self.paths.flwr_home, self.address, self.paths.ca)
        self.superlink = processes.start_superlink(self.paths.root, self.port, tls)
        try:
            admit(self.paths, self.auth)
            self.run_id = processes.submit_run(self.paths.flwr_home, APP_DIR, self._run_config)
        except BaseException:
            self.superlink.stop()
            raise
        write_json(self.paths.root / "running.json", {"address": self.address, "run_id": self.run_id, "pid": os.getpid(),
                                                      "superlink_pid": self.superlink.pid, "started_at": time.time()})
        for name, target in (("admission", self._admission_loop), ("publisher", self._publisher_loop)):
            t = threading.Thread(target=target, args=(stop,), name=f"coordinator-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("coordinator up at %s (run %s)", self.address, self.run_id)
        return self._threads

    def restart_run(self) -> int:
        """Stop the ServerApp's run and submit a new one (a coordinator restart: what the loop held in memory is gone;
        the store and the boxes' outboxes carry everything that matters)."""
        if self.run_id is not None:
            processes.stop_run(self.paths.flwr_home, self.run_id)
        self.run_id = processes.submit_run(self.paths.flwr_home, APP_DIR, self._run_config)
        return self.run_id

    def stop(self) -> None:
        if self.run_id is not None and self.superlink is not None and self.superlink.alive():
            processes.stop_run(self.paths.flwr_home, self.run_id)
        if self.superlink is not None:
            self.superlink.stop()
        (self.paths.root / "running.json").unlink(missing_ok=True)

    def _admission_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.admit_every_s):
            try:
                admit(self.paths, self.auth)
                issue_renewals(self.paths, self.auth)
            except Exception:  # the loop must outlive one bad pass (a CLI timeout, a half-written CRL)
                log.exception("admission pass failed; retrying in %.0f s", self.admit_every_s)

    def _publisher_loop(self, stop: threading.Event) -> None:
        db = store.open_store(self.paths.root)
        try:
            while not stop.wait(1.0):
                number = _publishable(self.paths, db)
                if number is None:
                    continue
                try:
                    publish_round(self.paths, self.auth, db, number)
                except Exception as exc:
                    log.exception("round %s could not be published", number)
                    write_json(mean_path(self.paths, number).parent / "failed.json", {"error": str(exc)[:1000], "at": time.time()})
        finally:
            db.conn.close()
