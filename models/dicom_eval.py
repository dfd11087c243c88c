"""``mammo eval --dicom DIR --labels CSV``: a clinic's own studies through the box's real path.

A clinic (or the coordinator) should see how a release does on its own
mammograms before trusting it. Nothing here re-implements the box: a box is
opened in a temporary home (its own database, keystore and encrypted image
store, deleted afterwards), every file goes through the real ingest
(validation, fixes, quarantine, de-identification), the release is activated
with its self-test, and the real inference handler triages each study at the
shipped operating points. The labels are then matched to the box's results.

Labels CSV (UTF-8, header row), one row per study::

    study_instance_uid,label        (or accession_number / patient_id instead of study_instance_uid)
    1.2.826.0.1.3680043.8.498.1,1
    1.2.826.0.1.3680043.8.498.2,0

``label`` is 1 for a study with a finding that needs work-up (the reference
standard the clinic trusts: biopsy, follow-up, the radiologist's BI-RADS 0/3-5
read), 0 otherwise. The key column is matched against the ORIGINAL files'
header (before de-identification); the first of ``study_instance_uid``,
``accession_number``, ``patient_id`` present in the header row is used. One
study is one woman-study.
"""

from __future__ import annotations

import csv
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from models.errors import DatasetError

__all__ = ["KEY_COLUMNS", "StudyOutcome", "read_labels", "evaluate_dicom"]

KEY_COLUMNS = {"study_instance_uid": "StudyInstanceUID", "accession_number": "AccessionNumber", "patient_id": "PatientID"}


@dataclass(frozen=True)
class StudyOutcome:
    """One labelled study as the box finished it."""

    key: str
    label: int
    status: str  # done | incomplete | not_received
    triage: str | None
    study_score: float | None
    reasons: tuple[str, ...]


def read_labels(path: Path) -> tuple[str, dict[str, int]]:
    """(key column, {key: 0/1}) from the labels CSV; a malformed file is a usage error saying how to fix it."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            key = next((k for k in KEY_COLUMNS if k in header), None)
            if key is None or "label" not in header:
                raise DatasetError(f"{path}: the header must have 'label' and one of {', '.join(KEY_COLUMNS)} "
                                   f"(found: {', '.join(header) or 'nothing'})")
            out: dict[str, int] = {}
            for n, row in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                if not row.get(key):
                    continue
                if row.get("label") not in ("0", "1"):
                    raise DatasetError(f"{path} line {n}: label {row.get('label')!r} is not 0 or 1")
                out[row[key]] = int(row["label"])
    except OSError as exc:
        raise DatasetError(f"cannot read the labels file {path}: {exc.strerror}") from None
    if not out:
        raise DatasetError(f"{path} holds no labelled study")
    return key, out


def _files(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder of DICOM files")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{root} holds no files")
    return files


def _original_key(path: Path, attr: str) -> str | None:
    """The key as the modality wrote it (de-identification remaps UIDs and IDs on the way in)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[attr])
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        return None
    value = str(ds.get(attr, "") or "").strip()
    return value or None


def _summary(outcomes: Iterable[StudyOutcome], n_boot: int) -> dict:
    from models.operating_points import summarize_women

    done = [o for o in outcomes if o.status == "done" and o.triage is not None and o.study_score is not None]
    if not done:
        return {"n": 0}
    return summarize_women([o.label for o in done], [float(o.study_score or 0.0) for o in done],
                           [str(o.triage) for o in done], [o.key for o in done], n_boot=n_boot)


def evaluate_dicom(dicom_dir: Path, labels: Path, release: Path, backend: str = "onnx-int8", threads: int = 2,
                   n_boot: int = 2000) -> dict:
    """Ingest, de-identify, infer and triage every study in ``dicom_dir`` in a throwaway box; score against ``labels``.

    An integration tool above the box, not a part beneath it: it drives a whole
    box, so it imports ``edge_agent`` here, lazily, never at module import (the
    rest of ``models`` does not import the daemon).  It is the one declared
    exception in pyproject.toml's import contract, which cannot tell a lazy
    import from an eager one.
    """
    from edge_agent.box import open_box
    from edge_agent.errors import MammoError
    from edge_agent.inference.activation import ModelRegistry
    from edge_agent.inference.worker import InferenceHandler, result_of
    from edge_agent.ingest.image_store import ImageStore
    from edge_agent.ingest.service import IngestPaths, IngestService
    from edge_agent.settings import Settings
    from edge_agent.worker import Worker
    from models.runtime import Screener

    key_col, truth = read_labels(labels)
    files = _files(dicom_dir)
    attr = KEY_COLUMNS[key_col]
    with tempfile.TemporaryDirectory(prefix="mammo-eval-") as home:
        settings = Settings.load(env={"MAMMO_HOME": str(Path(home) / "box"), "MAMMO_KEYSTORE_PASSPHRASE": secrets.token_hex(16)})
        box = open_box(settings, interactive=False)
        ingest = IngestService.from_box(box)
        try:
            registry = ModelRegistry(box.db, box.settings, shipped_dir=Path(release).resolve().parent)
            registry.activate(str(Path(release).resolve()), by="mammo eval", reason="evaluation on local studies",
                              backend=backend, threads=threads)  # verified and self-tested as on a box
            box_uid: dict[str, str] = {}  # the original key -> the box's (remapped) study UID
            quarantined: dict[str, int] = {}
            unreadable = 0
            for path, got in ingest.ingest_paths(files, source="eval"):
                if isinstance(got, MammoError):
                    unreadable += 1
                    continue
                if got.quarantine_id is not None:
                    quarantined[got.reason_code] = quarantined.get(got.reason_code, 0) + 1
                    continue
                key = _original_key(path, attr)
                if key is not None and got.study_uid:
                    box_uid.setdefault(key, got.study_uid)
            # a study missing a view is closed as the box closes it after its quiet period
            ingest.sweep(now=ingest.clock() + settings.ingest_study_complete_timeout_s + 1)
            store = ImageStore(IngestPaths.of(box.settings).images, box.keystore.master_key())
            handler = InferenceHandler(box.queue, store, registry, lambda rel: Screener(rel, backend=backend, threads=threads),
                                       profile=f"eval:{backend}")
            Worker(box.queue, "infer", handler, name="eval").run(drain=True)
            version = handler.screener()[0].release.version
            outcomes = []
            for key, label in sorted(truth.items()):
                uid = box_uid.get(key)
                r = result_of(box.db, uid) if uid else None
                if r is None:
                    outcomes.append(StudyOutcome(key, label, "not_received", None, None, ()))
                else:
                    outcomes.append(StudyOutcome(key, label, r["status"], r["triage"], r["study_score"], tuple(r["reasons"])))
        finally:
            ingest.close()
            box.close()
    women = _summary(outcomes, n_boot)
    incomplete = [o for o in outcomes if o.status == "incomplete"]
    return {
        "model_version": version,
        "backend": backend,
        "dicom": str(dicom_dir),
        "labels": str(labels),
        "label_key": key_col,
        "files": len(files),
        "files_quarantined": quarantined,
        "files_unreadable": unreadable,
        "studies_received": len(box_uid),
        "studies_labelled": len(truth),
        "studies_unlabelled": len(set(box_uid) - set(truth)),
        "studies_not_received": sorted(o.key for o in outcomes if o.status == "not_received"),
        "studies_incomplete": {o.key: list(o.reasons) for o in incomplete},
        "score": "study score: each view's p_abnormal minus beta x the same view of the other breast; max over views and breasts",
        "women": women,
        "studies": [{"key": o.key, "label": o.label, "status": o.status, "triage": o.triage, "study_score": o.study_score}
                    for o in outcomes],
    }
