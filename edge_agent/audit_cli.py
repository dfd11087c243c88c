"""``mammo audit verify | export`` and ``mammo bench audit``: the audit trail from the command line.

``verify`` checks the chain and the signed checkpoints of the box database
(or of an export file an inspector was given) and exits 1 naming the first
entry that cannot be trusted.  ``export`` writes the whole trail as JSON
lines for an inspector: a header with the box's public key and the
verification report, every entry, every checkpoint; the export is itself
an entry of the trail, and a checkpoint is signed over it first.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_agent import audit
from edge_agent.box import Box, open_box
from edge_agent.cli import EXIT_FAILED, EXIT_OK, add_json_flag, emit
from edge_agent.errors import StoreError

EXPORT_FORMAT = "mammo-audit-export/1"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("audit", help="the hash-chained audit trail: verify, export for an inspector")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = asub.add_parser("verify", help="check the chain and the signed checkpoints; exit 1 naming the first bad entry")
    p.add_argument("--file", type=Path, default=None, metavar="EXPORT", help="check an export file instead of this box's database")
    add_json_flag(p)
    p.set_defaults(handler=cmd_verify)
    p = asub.add_parser("export", help="write the whole trail, its checkpoints and the box public key as JSON lines")
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    add_json_flag(p)
    p.set_defaults(handler=cmd_export)

    p = bench_sub.add_parser("audit", help="chained appends per second with fsync vs plain SQLite INSERT and logging+fsync; verify time")
    p.add_argument("--appends", type=int, default=2000, help="appends timed per writer (each its own fsync'd transaction)")
    p.add_argument("--entries", type=int, default=1_000_000, help="trail length whose verification is timed")
    add_json_flag(p)
    p.set_defaults(handler=cmd_bench_audit)


def cli_actor() -> str:
    """Who ran a CLI command, for the trail: the operating-system account."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def record(box: Box, action: str, obj: str | None = None, details: dict[str, Any] | None = None) -> audit.Entry:
    """One entry for something a CLI command did to patient data or the box, by the account that ran it."""
    return audit.append(box.db, cli_actor(), action, obj, details, signer=box.keystore, checkpoint_every=box.settings.audit_checkpoint_every)


def _text(report: audit.Report, where: str) -> str:
    if report.ok:
        return f"Audit trail of {where} holds: {report.entries} entries, {report.checkpoints} signed checkpoint(s), head {report.head_hash[:16]}."
    return (f"Audit trail of {where} is BROKEN at entry {report.first_bad}: {report.reason}.\n"
            "Keep this database and the last export as evidence; entries before that one still verify.")


def cmd_verify(args: argparse.Namespace) -> int:
    if args.file is not None:
        header, entries, checkpoints = read_export(args.file)
        pem = str(header["public_key_pem"]).encode("ascii")
        report = audit.check(entries, checkpoints, audit.signature_checker(pem))
        payload = {**report.as_dict(), "box_id": header.get("box_id"), "key_sha256": audit.key_fingerprint(pem)}
        emit(args, payload, _text(report, str(args.file)) + f"\nSigned by key {payload['key_sha256']}: compare it with the box's.")
        return EXIT_OK if report.ok else EXIT_FAILED
    box = open_box(args.settings)
    try:
        report = audit.verify(box.db, box.keystore)
    finally:
        box.close()
    emit(args, report.as_dict(), _text(report, "this box"))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_export(args: argparse.Namespace) -> int:
    out: Path = args.out
    box = open_box(args.settings)
    try:
        record(box, "audit_export", None, {"file": out.name})
        report = audit.verify(box.db, box.keystore)
        header = {"format": EXPORT_FORMAT, "box_id": box.keystore.box_id, "public_key_pem": box.keystore.public_key_pem().decode("ascii"),
                  "key_sha256": audit.key_fingerprint(box.keystore.public_key_pem()), "verify": report.as_dict()}
        written = _write_lines(out, _export_lines(box.db, header))
    finally:
        box.close()
    payload = {**report.as_dict(), "out": str(out), "lines": written}
    emit(args, payload, _text(report, "this box") + f"\nExported to {out} ({written} lines).")
    return EXIT_OK if report.ok else EXIT_FAILED


def _export_lines(db: Any, header: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield {"type": "header", **header}
    for e in audit.entries(db):
        yield {"type": "entry", **e.__dict__}
    for c in audit.checkpoints(db):
        yield {"type": "checkpoint", **c.__dict__}


def _write_lines(path: Path, lines: Iterator[dict[str, Any]]) -> int:
    """Write JSON lines to a temporary file beside ``path``, fsync, then rename: a reader never sees half an export."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"Cannot write the export {path}: {exc.strerror}. Fix: choose a writable folder with free space.") from None
    return n


def read_export(path: Path) -> tuple[dict[str, Any], list[audit.Entry], list[audit.Checkpoint]]:
    """An export file's header, entries and checkpoints."""
    header: dict[str, Any] | None = None
    entries: list[audit.Entry] = []
    checkpoints: list[audit.Checkpoint] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    line = json.loads(raw)
                    kind = line.pop("type")
                    if kind == "header":
                        header = line
                    elif kind == "entry":
                        entries.append(audit.Entry(**line))
                    elif kind == "checkpoint":
                        checkpoints.append(audit.Checkpoint(**line))
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    raise StoreError(f"{path} line {number} is not an audit export line ({exc}). Fix: ask the box for a new export.") from None
    except OSError as exc:
        raise StoreError(f"Cannot read {path}: {exc.strerror}. Fix: check the path.") from None
    if header is None or header.get("format") != EXPORT_FORMAT or "public_key_pem" not in header:
        raise StoreError(f"{path} has no {EXPORT_FORMAT} header. Fix: give a file `mammo audit export` wrote.")
    return header, entries, checkpoints


def cmd_bench_audit(args: argparse.Namespace) -> int:
    from edge_agent.bench.audit import run  # late: only the benchmark needs it

    result = run(appends=args.appends, entries=args.entries)
    lines = [f"{'writer':<48} {'appends/s':>10}"]
    for name, rate in result["appends_per_s"].items():
        lines.append(f"{name:<48} {rate:>10.0f}")
    lines.append(f"chained append / plain SQLite INSERT: {result['ratio_vs_sqlite_insert']:.2f}; "
                 f"/ logging+fsync: {result['ratio_vs_logging_fsync']:.2f} ({result['durability']})")
    v = result["verify"]
    lines.append(f"verify {v['entries']} entries: {v['verify_s']:.1f} s ({v['verify_cpu_s']:.1f} s CPU); reading them without hashing: "
                 f"{v['scan_s']:.1f} s ({v['scan_cpu_s']:.1f} s CPU); x{v['ratio_vs_scan']:.1f}")
    emit(args, result, "\n".join(lines))
    return EXIT_OK
