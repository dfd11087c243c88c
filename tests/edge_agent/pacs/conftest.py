"""Real parts for the radiology link: a box with ingest and inference wired for real, and a loopback PACS that keeps what it gets.

The PACS is a second pynetdicom Storage SCP on 127.0.0.1; it can be stopped
and started again on the same port (an outage), and told to refuse the
C-STORE after some number of objects (the moment it went down mid-export).
"""

from __future__ import annotations

import io
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from edge_agent.box import open_box
from edge_agent.inference.activation import ModelRegistry
from edge_agent.inference.worker import InferenceHandler
from edge_agent.ingest import mg
from edge_agent.ingest.service import IngestService
from edge_agent.settings import Settings
from edge_agent.worker import Worker
from models.runtime import Screener

VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class LoopbackPacs:
    """The hospital PACS: keeps each received object by SOP Instance UID, and the order of every C-STORE (resends too)."""

    port: int = 0
    ae_title: str = "HOSP_PACS"
    received: dict[str, pydicom.Dataset] = field(default_factory=dict)
    arrivals: list[str] = field(default_factory=list)
    callers: list[str] = field(default_factory=list)
    refuse_after: int | None = None  # answer 0xA700 (out of resources) to every C-STORE past this many arrivals
    only: tuple[str, ...] | None = None  # accept only these storage SOP classes (a PACS not set up for SR, say)
    syntaxes: list[str] | None = None  # accept only these transfer syntaxes (default: all)
    _server: object = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _on_store(self, event) -> int:
        with self._lock:
            if self.refuse_after is not None and len(self.arrivals) >= self.refuse_after:
                return 0xA700
            # The box's own receiver (edge_agent.ingest.scp) switches pynetdicom, process-wide, to writing each incoming
            # dataset to a file; then the event holds a path and no encoded bytes. Read whichever this process gives.
            path = getattr(event, "dataset_path", None)
            if path is not None:
                ds = pydicom.dcmread(path)
            else:
                ds = pydicom.dcmread(io.BytesIO(event.encoded_dataset(include_meta=True)))
            self.arrivals.append(str(ds.SOPInstanceUID))
            self.received[str(ds.SOPInstanceUID)] = ds
            self.callers.append(event.assoc.requestor.ae_title.strip())
        return 0x0000

    def start(self) -> LoopbackPacs:
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            if self.only is None or cx.abstract_syntax in self.only:
                ae.add_supported_context(cx.abstract_syntax, self.syntaxes or ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: 0x0000)]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def of_kind(self, modality: str) -> list[pydicom.Dataset]:
        return [ds for ds in self.received.values() if ds.Modality == modality]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pacs():
    made: list[LoopbackPacs] = []

    def factory(**kw) -> LoopbackPacs:
        made.append(LoopbackPacs(**kw).start())
        return made[-1]

    yield factory
    for p in made:
        p.stop()


@dataclass
class Clinic:
    """A box whose ingest and inference run for real; ``push_study`` sends four views through ingest, ``triage`` runs the model."""

    box: object
    ingest: IngestService
    handler: InferenceHandler

    def push_study(self, seed: int, *, patient: mg.FakePatient | None = None, accession: str = "ACC2026031501",
                   study_date: str = "20260315", size: int = 256, compress: str | None = None) -> list:
        patient = patient or mg.fake_patient(seed)
        uid = mg._uid("pacs-test-study", seed)
        out = []
        for i, (lat, view) in enumerate(mg.SCREENING_VIEWS):
            ds = mg.mammogram(mg.synthetic_pixels(seed * 10 + i, lat, size), patient=patient, laterality=lat, view=view, study_uid=uid,
                              study_date=study_date, accession=accession, instance_number=i + 1, seed=seed)
            if compress is not None:
                ds.compress(compress)
            out.append(self.ingest.ingest_bytes(mg.to_bytes(ds), source="test"))
        return out

    def triage(self) -> None:
        Worker(self.box.queue, "infer", self.handler, name="test").run(drain=True)


@pytest.fixture
def clinic_factory(tmp_path: Path, shipped_dir: Path):
    """``clinic_factory(**settings)``: a fresh box home with those settings (fast retries, so a test need not wait)."""
    boxes = []

    def factory(**overrides) -> Clinic:
        home = tmp_path / f"home{len(boxes)}"
        env = {"MAMMO_HOME": str(home), "MAMMO_KEYSTORE_PASSPHRASE": "test-passphrase"}
        overrides = {"queue_backoff_base_s": 0.001, "queue_backoff_cap_s": 0.002, **overrides}
        settings = Settings.load(env=env, **overrides)
        box = open_box(settings, interactive=False)
        boxes.append(box)
        ingest = IngestService.from_box(box)
        registry = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
        registry.ensure_active()
        handler = InferenceHandler(box.queue, ingest.store, registry, lambda rel: Screener(rel, backend="onnx-int8", threads=1),
                                   profile="cpu-small")
        return Clinic(box, ingest, handler)

    yield factory
    for b in boxes:
        b.close()
