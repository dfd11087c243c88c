"""A real box that screens studies with the shipped model, and small loopback servers standing in for the FHIR
endpoint and the SMS gateway (they cannot run here; the box talks to them over real HTTP)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from edge_agent.box import open_box
from edge_agent.inference.activation import ModelRegistry
from edge_agent.inference.worker import InferenceHandler
from edge_agent.ingest import mg
from edge_agent.ingest.image_store import ImageStore
from edge_agent.ingest.service import IngestPaths, IngestService
from edge_agent.settings import Settings
from edge_agent.store import transaction
from edge_agent.worker import Worker
from models.runtime import Screener

# -- the FHIR endpoint -------------------------------------------------------------------------------

@dataclass
class FhirStore:
    """What the fake server holds: resources by (type, identifier), and every request it saw."""

    mode: str = "ok"  # ok | 400 | 500 | garbage | slow | wrong-bundle
    slow_s: float = 3.0
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    creates: list[tuple[str, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.creates if k == kind)

    def transact(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """Conditional creates as a FHIR server does them: an entry whose ifNoneExist matches is not created again."""
        out = []
        with self.lock:
            for e in bundle["entry"]:
                kind = e["resource"]["resourceType"]
                key = unquote(e["request"]["ifNoneExist"].removeprefix("identifier="))
                if (kind, key) in self.resources:
                    out.append({"response": {"status": "200 OK", "location": f"{kind}/{len(self.resources)}"}})
                else:
                    self.resources[(kind, key)] = e["resource"]
                    self.creates.append((kind, key))
                    out.append({"response": {"status": "201 Created", "location": f"{kind}/{len(self.resources)}"}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}


class FhirServer:
    def __init__(self, store: FhirStore) -> None:
        self.store = store

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                doc = json.loads(body)
                store.requests.append({"path": self.path, "headers": dict(self.headers), "bundle": doc})
                mode = store.mode
                if mode in ("400", "500"):
                    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing", "diagnostics": f"refused ({mode})"}]}
                    return self._send(int(mode), json.dumps(outcome).encode())
                if mode == "garbage":
                    return self._send(200, b"<html>proxy login page</html>", "text/html")
                if mode == "wrong-bundle":
                    return self._send(200, json.dumps({"resourceType": "Bundle", "type": "searchset"}).encode())
                answer = store.transact(doc)
                if mode == "slow":  # created, then the answer comes too late for the client
                    time.sleep(store.slow_s)
                return self._send(200, json.dumps(answer).encode())

            def _send(self, status: int, body: bytes, ctype: str = "application/fhir+json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow mode)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fhir_server():
    server = FhirServer(FhirStore())
    yield server
    server.close()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/fhir"


# -- the SMS gateway ---------------------------------------------------------------------------------

@dataclass
class Gateway:
    mode: str = "ok"  # ok | 429 | 500 | garbage
    messages: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


class SmsServer:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                gw.headers.append(dict(self.headers))
                if gw.mode == "429":
                    return self._send(429, b'{"error": "slow down"}', retry_after="30")
                if gw.mode == "500":
                    return self._send(500, b"operator error")
                if gw.mode == "garbage":
                    return self._send(200, b"OK but not json")
                gw.messages.append(body)
                return self._send(200, json.dumps({"id": f"msg-{len(gw.messages)}"}).encode())

            def _send(self, status: int, body: bytes, retry_after: str | None = None) -> None:
                self.send_response(status)
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/send"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def sms_server():
    server = SmsServer(Gateway())
    yield server
    server.close()


# -- a box that screens ------------------------------------------------------------------------------

def box_settings(tmp_path: Path, **env: str) -> Settings:
    base = {"MAMMO_HOME": str(tmp_path / "home"), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase", "MAMMO_QUEUE_BACKOFF_BASE_S": "0.01",
            "MAMMO_QUEUE_BACKOFF_CAP_S": "0.02"}
    return Settings.load(env={**base, **{f"MAMMO_{k.upper()}": v for k, v in env.items()}})


@dataclass
class Clinic:
    """A box with ingest and inference wired for real; studies in, triaged, a report job each."""

    box: Any
    ingest: IngestService
    handler: InferenceHandler
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.ingest.close()
            self.box.close()

    def screen(self, seed: int) -> str:
        """Ingest a four-view study of a made-up woman, triage it with the shipped model; returns the study UID."""
        patient = mg.fake_patient(seed)
        uid = mg._uid("report-study", seed)
        results = [self.ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(seed * 10 + i, lat, 256), patient=patient, laterality=lat,
                                                                      view=view, study_uid=uid, instance_number=i + 1, seed=seed)), source="test")
                   for i, (lat, view) in enumerate(mg.SCREENING_VIEWS)]
        Worker(self.box.queue, "infer", self.handler, name="test").run(drain=True)
        return results[0].study_uid

    def confirm(self, study_uid: str, birads: int = 1, density: str = "B", source: str = "radiologist", username: str = "dr.rad") -> None:
        """A radiologist's categories, as the kiosk's feedback form stores them."""
        with transaction(self.box.db) as db:
            db.execute("INSERT INTO kiosk_feedback (study_uid, username, role, agrees, birads, density, category_source, notes, created_at)"
                       " VALUES (?, ?, 'radiologist', 1, ?, ?, ?, '', ?)", [study_uid, username, birads, density, source, time.time()])

    def set_result(self, study_uid: str, triage: str, score: float = 0.9) -> None:
        """Overwrite the model's triage (to make a priority study on demand), as the inference worker writes it."""
        with transaction(self.box.db) as db:
            db.execute("UPDATE infer_results SET triage = ?, study_score = ? WHERE study_uid = ?", [triage, score, study_uid])


def make_clinic(settings: Settings, shipped_dir: Path) -> Clinic:
    box = open_box(settings, interactive=False)
    ingest = IngestService.from_box(box)
    registry = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    registry.ensure_active()
    store = ImageStore(IngestPaths.of(box.settings).images, box.keystore.master_key())
    handler = InferenceHandler(box.queue, store, registry, lambda rel: Screener(rel, backend="onnx-int8", threads=1), profile="cpu-small")
    return Clinic(box, ingest, handler)


@pytest.fixture
def clinic_factory(tmp_path: Path, shipped_dir: Path):
    made: list[Clinic] = []

    def make(**env: str) -> Clinic:
        c = make_clinic(box_settings(tmp_path, **env), shipped_dir)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def report_worker(clinic: Clinic, **kw: Any) -> Worker:
    """The report queue's worker as the daemon wires it (reporting.service), on the clinic's own connection."""
    from edge_agent.reporting.delivery import ReportHandler
    from edge_agent.reporting.service import adapter_for

    box = clinic.box
    handler = ReportHandler(box.db, box.queue, box.settings, box_id=box.keystore.box_id, master_key=box.keystore.master_key(),
                            adapter=adapter_for(box.settings), signer=box.keystore, **kw)
    return Worker(box.queue, "report", handler, name="test-report")


def notify_worker(clinic: Clinic) -> Worker:
    from edge_agent.reporting.service import gateway_for
    from edge_agent.reporting.sms import SmsHandler

    box = clinic.box
    handler = SmsHandler(box.db, box.settings, box_id=box.keystore.box_id, gateway=gateway_for(box.settings), signer=box.keystore)
    return Worker(box.queue, "notify", handler, name="test-notify")


def run_until(worker: Worker, done: Any, tries: int = 200) -> bool:
    """Run the worker's jobs as they fall due (retries wait their backoff) until ``done()`` holds; False if it never did."""
    for _ in range(tries):
        worker.run_once()
        if done():
            return True
        time.sleep(0.02)
    return False
