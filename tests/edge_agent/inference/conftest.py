"""A copy of the shipped model release per test session, and a box with ingest + inference wired for real."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.inference.activation import ModelRegistry
from edge_agent.inference.worker import InferenceHandler
from edge_agent.ingest import mg
from edge_agent.ingest.image_store import ImageStore
from edge_agent.ingest.service import IngestPaths, IngestService
from models.runtime import Screener


@pytest.fixture
def release_dir(shipped_dir: Path, tmp_path: Path) -> Path:
    """A private copy a test may tamper with."""
    src = next(shipped_dir.iterdir())
    dst = tmp_path / "models" / src.name
    shutil.copytree(src, dst)
    return dst


@dataclass
class Screening:
    box: object
    ingest: IngestService
    registry: ModelRegistry
    handler: InferenceHandler
    store: ImageStore

    def push_study(self, seed: int, views=mg.SCREENING_VIEWS, size: int = 256) -> list:
        patient = mg.fake_patient(seed)
        uid = mg._uid("test-study", seed)
        return [
            self.ingest.ingest_bytes(mg.to_bytes(mg.mammogram(mg.synthetic_pixels(seed * 10 + i, lat, size), patient=patient, laterality=lat,
                                                               view=view, study_uid=uid, instance_number=i + 1, seed=seed)), source="test")
            for i, (lat, view) in enumerate(views)
        ]


@pytest.fixture
def screening(box, shipped_dir) -> Screening:
    ingest = IngestService.from_box(box)
    registry = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    registry.ensure_active()
    store = ImageStore(IngestPaths.of(box.settings).images, box.keystore.master_key())
    handler = InferenceHandler(box.queue, store, registry, lambda rel: Screener(rel, backend="onnx-int8", threads=1), profile="cpu-small")
    return Screening(box, ingest, registry, handler, store)
