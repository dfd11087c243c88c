"""``mammo bench ingest``: our whole ingest path beside de-identification alone through dicognito and pydicom/deid.

Same files, same run, same machine. Ours is timed twice: the full path
(parse + fix + de-identify + encrypt + store, with fsyncs) and the
de-identification part alone (parse + fix + de-identify + encode, no
storage), so the ratio against the peers can be read both ways. The peers
are given every file; a file a peer raises on counts as an error, not as
time saved. The corpus is read from ``shared/data/dicom`` and never copied.
"""

from __future__ import annotations

import gc
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from edge_agent.errors import DicomRejected

DEFAULT_CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"


def corpus_files(root: Path, limit: int | None = None) -> list[Path]:
    index = root / "INDEX.csv"
    if index.exists():
        import csv

        with index.open(newline="", encoding="utf-8") as fh:
            files = [root / row["file"] for row in csv.DictReader(fh)]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix not in (".csv", ".md", ".txt"))
    return files[:limit] if limit else files


def _timed(name: str, files: list[Path], fn: Callable[[Path], Any]) -> dict[str, Any]:
    errors = 0
    total_bytes = sum(p.stat().st_size for p in files)
    gc.collect()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                fn(path)
            except DicomRejected:
                pass  # ours: refused and quarantined, counted in the outcome figures
            except Exception:
                errors += 1
    elapsed = time.perf_counter() - start
    return {
        "name": name, "files": len(files), "errors": errors, "seconds": round(elapsed, 3),
        "files_per_s": round(len(files) / elapsed, 1), "mb_per_s": round(total_bytes / 1e6 / elapsed, 2)
    }


def _ours(files: list[Path], home: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    from edge_agent.queue import JobQueue
    from edge_agent.settings import Settings
    from edge_agent.store import open_database
    from edge_agent.ingest.service import IngestService, process
    from provisioning.keystore import FileKeystore, KdfParams

    settings = Settings.load(env={"MAMMO_HOME": str(home)}, home=home)
    db = open_database(settings.db_path)
    keystore = FileKeystore.create(home / "keystore.json", "bench-only", KdfParams(1, 8 * 1024, 1))
    service = IngestService(db=db, keystore=keystore, queue=JobQueue(db), settings=settings)
    outcomes: dict[str, int] = {}

    def full(path: Path) -> None:
        r = service.ingest_path(path, source="bench")
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1

    def deid_only(path: Path) -> None:
        process(path.read_bytes(), limits=service.limits, keys=service.keys)

    for path in files[:3]:  # warm imports and decoder plug-ins outside the timing
        try:
            deid_only(path)
        except DicomRejected:
            pass
    only = _timed("ours: parse+fix+de-identify (no store)", files, deid_only)
    result = _timed("ours: parse+fix+de-identify+encrypt+store", files, full)
    db.conn.close()
    return result, only, outcomes


def _peer_imports():
    """Import the peers; they use pydicom APIs deprecated in pydicom 3, which is theirs to fix, not a failure here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from deid.config import DeidRecipe
        from deid.dicom import replace_identifiers
        from deid.logger import bot
        from dicognito.anonymizer import Anonymizer
    return Anonymizer, DeidRecipe, replace_identifiers, bot


def _dicognito(files: list[Path]) -> dict[str, Any]:
    import pydicom

    Anonymizer = _peer_imports()[0]

    anonymizer = Anonymizer()

    def run(path: Path) -> None:
        ds = pydicom.dcmread(path, force=True)
        anonymizer.anonymize(ds)
        ds.save_as(io.BytesIO())

    return _timed("dicognito: read+anonymize+write", files, run)


def _pydicom_deid(files: list[Path]) -> dict[str, Any]:
    _, DeidRecipe, replace_identifiers, bot = _peer_imports()

    bot.level = 0  # its per-file "using default recipe" chatter would flood the output
    logging.getLogger("deid").setLevel(logging.ERROR)
    recipe = DeidRecipe()

    def run(path: Path) -> None:
        for ds in replace_identifiers(dicom_files=[str(path)], deid=recipe, save=False):
            ds.save_as(io.BytesIO())

    return _timed("pydicom/deid: read+default recipe+write", files, run)


def run_bench(corpus: Path = DEFAULT_CORPUS, limit: int | None = None) -> dict[str, Any]:
    files = corpus_files(corpus, limit)
    if not files:
        raise FileNotFoundError(f"No DICOM files under {corpus}; pass --corpus PATH (the shared data folder beside the checkout).")
    with tempfile.TemporaryDirectory(prefix="mammo-bench-ingest-") as tmp:
        ours, ours_deid, outcomes = _ours(files, Path(tmp))
    peers = [_dicognito(files), _pydicom_deid(files)]
    return {
        "corpus": str(corpus),
        "files": len(files),
        "megabytes": round(sum(p.stat().st_size for p in files) / 1e6, 2),
        "ours": ours,
        "ours_deid_only": ours_deid,
        "outcomes": outcomes,
        "peers": peers,
        "ratios": {
            p["name"].split(":")[0]: {
                "full_ours_over_peer": round(ours["files_per_s"] / p["files_per_s"], 2),
                "deid_only_ours_over_peer": round(ours_deid["files_per_s"] / p["files_per_s"], 2),
            }
            for p in peers
        },
        "note": "Peers de-identify only (no decode, fix, encryption or fsync). dicognito keeps private tags and writes no CID 7050 codes; "
        "pydicom/deid's default recipe is not Annex E.",
    }
