"""``mammo ingest``, ``mammo deid``, ``mammo quarantine`` and ``mammo bench ingest``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.cli import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, add_json_flag, emit
from edge_agent.clinic_time import local
from edge_agent.errors import MammoError
from edge_agent.ingest.records import QUARANTINED, IngestResult

if TYPE_CHECKING:
    from edge_agent.box import Box
    from edge_agent.ingest.service import IngestService


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ingest", help="ingest DICOM files or folders: accepted / fixed / quarantined, with reasons")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    add_json_flag(p)
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("deid", help="de-identify a folder of DICOM files for a research export (nothing stored on the box)")
    p.add_argument("src", type=Path, metavar="SRC")
    p.add_argument("dst", type=Path, metavar="DST")
    p.add_argument("--keep-key", type=Path, default=None, metavar="FILE", help="keep this export's key in FILE (new, private) for a later linked export")
    p.add_argument("--key", type=Path, default=None, metavar="FILE", help="de-identify with a kept export key: same pseudonyms as that export")
    add_json_flag(p)
    p.set_defaults(handler=cmd_deid)

    q = sub.add_parser("quarantine", help="files refused at ingest, kept encrypted with their reason")
    qsub = q.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    p = qsub.add_parser("list", help="quarantined files and why")
    p.add_argument("--all", action="store_true", help="also released and purged entries")
    add_json_flag(p)
    p.set_defaults(handler=cmd_quarantine_list)
    p = qsub.add_parser("show", help="one entry: reason, fixes, and the file's technical header")
    p.add_argument("id", type=int)
    add_json_flag(p)
    p.set_defaults(handler=cmd_quarantine_show)
    p = qsub.add_parser("release", help="ingest again, overriding a reason a person may override (burned-in text, non-image)")
    p.add_argument("ids", type=int, nargs="+")
    add_json_flag(p)
    p.set_defaults(handler=cmd_quarantine_release)
    p = qsub.add_parser("purge", help="delete quarantined files for good (the index row stays, for the audit trail)")
    p.add_argument("ids", type=int, nargs="*")
    p.add_argument("--all", action="store_true", help="purge every held file")
    add_json_flag(p)
    p.set_defaults(handler=cmd_quarantine_purge)

    p = bench_sub.add_parser("ingest", help="our ingest path vs dicognito and pydicom/deid on the shared DICOM corpus")
    p.add_argument("--corpus", type=Path, default=None, help="folder of DICOM files (default: shared/data/dicom beside the checkout)")
    p.add_argument("--limit", type=int, default=None, help="only the first N files")
    p.add_argument("--workers", type=int, default=None, help="ingest worker processes (default: the setting ingest_workers; 0 = one per core)")
    p.add_argument("--rounds", type=int, default=3, help="rounds in which ours and dicognito take turns; the fastest of each counts (default 3)")
    add_json_flag(p)
    p.set_defaults(handler=cmd_bench_ingest)


def _service(args: argparse.Namespace, files: int = 0) -> tuple[Box, IngestService]:
    """The box and its ingest service; with ``files``, worker processes for them (at most one per core, none idle)."""
    from edge_agent.box import open_box
    from edge_agent.ingest.pool import worker_count
    from edge_agent.ingest.service import IngestService

    box = open_box(args.settings)
    workers = min(worker_count(args.settings.ingest_workers), files) if files else None
    try:
        return box, IngestService.from_box(box, workers=workers)
    except BaseException:
        box.close()
        raise


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".") and f.name.upper() != "DICOMDIR")
        else:
            out.append(p)
    return out


def _line(r: IngestResult) -> str:
    detail = r.reason if r.outcome == QUARANTINED else "; ".join(f.message for f in r.fixes)
    extra = " (duplicate)" if r.duplicate else ""
    extra += f" -> infer job {r.infer_job_id}" if r.infer_job_id else ""
    return f"{r.outcome:<11} {r.label}{extra}" + (f"\n            {detail}" if detail else "")


def _counts(results: list[IngestResult]) -> dict[str, int]:
    counts = {"accepted": 0, "fixed": 0, "quarantined": 0}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return counts


def cmd_ingest(args: argparse.Namespace) -> int:
    files = _expand(args.paths)
    box, service = _service(args, len(files))
    try:
        results, errors = [], []
        for path, r in service.ingest_paths(files, source="cli"):
            if isinstance(r, MammoError):  # unreadable input, or the box cannot store: report it and go on with the others
                errors.append({"label": str(path), "error": str(r)})
                if not args.json:
                    print(f"{'error':<11} {path}\n            {r}")
                continue
            results.append(r)
            if not args.json:
                print(_line(r))
        service.sweep()
        counts = _counts(results)
        emit(args, {"results": [r.to_json() for r in results], "counts": counts, "errors": errors},
             f"{len(results)} file(s): {counts['accepted']} accepted, {counts['fixed']} fixed, {counts['quarantined']} quarantined"
             + (f", {len(errors)} unreadable" if errors else ""))
        if errors:
            return EXIT_FAILED
        return EXIT_REFUSED if counts["quarantined"] else EXIT_OK
    finally:
        service.close()
        box.close()


def cmd_deid(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from edge_agent import export_keys
    from edge_agent.box import open_box
    from edge_agent.ingest.pool import IngestPool, worker_count
    from edge_agent.ingest.prepare import Prepared, Refused, Request
    from edge_agent.ingest.service import options_of

    files = _expand([args.src])
    box = open_box(args.settings)
    try:
        # Never the box's own secrets: a key of this export's own (see edge_agent.export_keys).
        key = export_keys.read_key(args.key) if args.key else export_keys.new_key()
        if args.keep_key:
            export_keys.write_key(args.keep_key, key)
        options = options_of(args.settings, export_keys.deid_keys(key, args.settings.ingest_date_shift_max_days))
        from edge_agent.audit_cli import record
        record(box, "research_export", None, {"files": len(files), "dst": args.dst.name, "key_id": export_keys.key_id(key),
                                              "key": "reused" if args.key else "kept" if args.keep_key else "discarded"})
    finally:
        box.close()  # the workers need only the derived secrets, not the database
    rows: list[dict[str, Any]] = []
    with IngestPool(options, workers=max(1, min(worker_count(args.settings.ingest_workers), len(files))),
                    timeout_s=args.settings.ingest_timeout_s) as pool, \
            ThreadPoolExecutor(max_workers=2 * pool.size, thread_name_prefix="deid") as threads:
        for path, p in zip(files, threads.map(lambda f: pool.run(Request(path=str(f))), files), strict=True):
            if not isinstance(p, Prepared):
                code, reason = (p.reason_code, p.reason) if isinstance(p, Refused) else ("unreadable_file", p.message)
                rows.append({"src": str(path), "outcome": "refused", "reason_code": code, "reason": reason})
                if not args.json:
                    print(f"refused     {path}\n            {reason}")
                continue
            # Output names come from de-identified UIDs: a source file name can carry a patient's name.
            out = args.dst / p.facts.study_uid / f"{p.facts.sop_uid}.dcm"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(p.data)
            rows.append({"src": str(path), "outcome": "fixed" if p.fixes else "accepted", "dst": str(out), "fixes": [f.code for f in p.fixes]})
            if not args.json:
                print(f"{rows[-1]['outcome']:<11} {path} -> {out}")
    written = sum(1 for r in rows if r["outcome"] != "refused")
    emit(args, {"results": rows, "written": written, "refused": len(rows) - written}, f"{written} written to {args.dst}, {len(rows) - written} refused")
    return EXIT_REFUSED if written < len(rows) else EXIT_OK


def _when(ts: float, tz: str) -> str:
    """In the clinic's zone (settings.timezone): the technician compares it with the clinic's clock, not the box's UTC."""
    return local(ts, tz).strftime("%Y-%m-%d %H:%M")


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    box, service = _service(args)
    try:
        entries = service.quarantine.entries(status=None if args.all else "held")
        text = "\n".join(f"#{e.id:<5} {_when(e.received_at, box.settings.timezone)}  {e.status:<8} {e.reason_code:<28} {e.source:<14} {e.size} bytes" for e in entries) or "quarantine is empty"
        emit(args, {"entries": [e.to_json() for e in entries], "count": len(entries)}, text)
        return EXIT_OK
    finally:
        box.close()


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    import io
    import warnings

    import pydicom

    box, service = _service(args)
    try:
        e = service.quarantine.entry(args.id)
        header: dict[str, str] = {}
        if e.status == "held":
            data, _ = service.quarantine.open(args.id)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
                    meta = getattr(ds, "file_meta", None)
                    # Technical fields only: the technician sees what is wrong, not who the patient is.
                    header = {k: str(ds.get(k, "")) for k in ("Modality", "SOPClassUID", "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "PhotometricInterpretation", "BurnedInAnnotation", "Manufacturer")}
                    header["TransferSyntaxUID"] = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
                except Exception as exc:
                    header = {"unreadable": type(exc).__name__}
        payload = e.to_json() | {"header": header}
        text = "\n".join([f"#{e.id} {e.status} since {_when(e.received_at, box.settings.timezone)} from {e.source}, {e.size} bytes",
                          f"reason: {e.reason_code}: {e.reason}"] + [f"fix: {f.message}" for f in e.fixes] + [f"{k}: {v}" for k, v in header.items()])
        emit(args, payload, text)
        return EXIT_OK
    finally:
        box.close()


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    box, service = _service(args, len(args.ids))  # in workers: a file held for a timeout must not hang the CLI
    try:
        results = [service.release(i) for i in args.ids]
        from edge_agent.audit_cli import record
        record(box, "quarantine_release", None, {"ids": args.ids, "outcomes": [r.outcome for r in results]})
        service.sweep()
        still = [r for r in results if r.outcome == QUARANTINED]
        text = "\n".join(f"#{r.quarantine_id}: {r.outcome}" + (f" ({r.reason_code}: cannot be overridden)" if r.outcome == QUARANTINED else "") for r in results)
        emit(args, {"results": [r.to_json() for r in results], "released": len(results) - len(still)}, text)
        return EXIT_REFUSED if still else EXIT_OK
    finally:
        service.close()
        box.close()


def cmd_quarantine_purge(args: argparse.Namespace) -> int:
    box, service = _service(args)
    try:
        ids = args.ids or ([e.id for e in service.quarantine.entries(status="held")] if args.all else [])
        if not ids:
            emit(args, {"purged": []}, "nothing to purge: give ids or --all")
            return EXIT_FAILED
        for i in ids:
            service.purge(i)
        from edge_agent.audit_cli import record
        record(box, "quarantine_purge", None, {"ids": ids})
        emit(args, {"purged": ids}, f"purged {len(ids)} file(s)")
        return EXIT_OK
    finally:
        box.close()


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from edge_agent.ingest.bench import DEFAULT_CORPUS, run_bench

    workers = args.settings.ingest_workers if args.workers is None else args.workers
    result = run_bench(args.corpus or DEFAULT_CORPUS, args.limit, workers, args.rounds)
    lines = [f"{result['files']} files, {result['megabytes']} MB; ours in {result['workers']} worker process(es) on {result['cores']} core(s), "
             f"started in {result['pool_start_s']} s before the timing; fastest of {len(result['rounds']['ours_files_per_s'])} rounds "
             f"(ours {result['rounds']['ours_files_per_s']}, dicognito {result['rounds']['dicognito_files_per_s']} files/s)"]
    for r in [result["ours"], result["ours_deid_only"], *result["peers"]]:
        lines.append(f"{r['name']:<48} {r['files_per_s']:>8} files/s {r['mb_per_s']:>8} MB/s {r['cpu_ms_per_file']:>7} ms CPU/file  errors {r['errors']}")
    for peer, ratio in result["ratios"].items():
        lines.append(f"ours/{peer}: full path {ratio['full_ours_over_peer']}x, de-identification alone {ratio['deid_only_ours_over_peer']}x")
    lines.append("worker ms/file: " + ", ".join(f"{k} {v}" for k, v in result["worker_ms_per_file"].items()))
    lines.append("parent ms/file: " + ", ".join(f"{k} {v}" for k, v in result["parent_ms_per_file"].items()))
    emit(args, result, "\n".join(lines))
    return EXIT_OK
