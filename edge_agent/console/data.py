"""What the console shows, read from a box into frozen records, and the actions it may take.

No Textual here: every function takes the box (or its settings) and returns
a record, so the console's content is tested without drawing it.  Reading is
read-only; the three actions (requeue a dead letter, activate a release,
roll back) call the very functions ``mammo queue requeue`` and ``mammo model
activate|rollback`` call.  Parsers of ``/proc`` and ``/sys`` text are pure
functions; the readers around them return None where the machine does not
offer the value, and the screen says "okunamıyor".
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.box import Box
from edge_agent.queue import DeadJob, QueueStats
from edge_agent.settings import Settings
from edge_agent.sync_view import SyncSummary
from edge_agent.sync_view import summary as sync_summary

if TYPE_CHECKING:
    from edge_agent.inference.activation import Activation, ModelVersion
    from hardware_profiles.detect import MachineFacts
    from hardware_profiles.profiles import Profile

PROC = Path("/proc")
SYS = Path("/sys")


# --- device health ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    busy: int
    total: int


@dataclass(frozen=True)
class Health:
    cpu_percent: float | None
    load: tuple[float, float, float] | None
    memory_used: int | None
    memory_total: int | None
    disk_path: Path
    disk_free: int | None
    disk_total: int | None
    temperature_c: float | None
    temperature_source: str | None


def parse_cpu_sample(stat_text: str) -> CpuSample | None:
    """The aggregate ``cpu`` line of ``/proc/stat``: idle and iowait count as not busy."""
    for line in stat_text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            ticks = [int(x) for x in parts[1:]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            return CpuSample(sum(ticks) - idle, sum(ticks))
    return None


def cpu_percent(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Busy share between two samples; None until there are two that differ."""
    if before is None or after is None or after.total <= before.total:
        return None
    return round(100.0 * (after.busy - before.busy) / (after.total - before.total), 1)


def parse_meminfo(text: str) -> tuple[int, int] | None:
    """(used, total) bytes from ``/proc/meminfo``; used is total minus MemAvailable (what the kernel could hand out)."""
    kib: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[name.strip()] = int(fields[0])
    if "MemTotal" not in kib or "MemAvailable" not in kib:
        return None
    return (kib["MemTotal"] - kib["MemAvailable"]) * 1024, kib["MemTotal"] * 1024


def parse_millidegrees(text: str) -> float | None:
    """A sysfs temperature (millidegrees Celsius); None for junk or an absurd value (a sensor that is not wired)."""
    try:
        value = int(text.strip()) / 1000.0
    except ValueError:
        return None
    return value if -40.0 < value < 150.0 else None


def read_temperature(sys_root: Path = SYS) -> tuple[float, str] | None:
    """The hottest readable sensor among thermal zones and hwmon inputs, with where it came from."""
    candidates = [*sorted(sys_root.glob("class/thermal/thermal_zone*/temp")), *sorted(sys_root.glob("class/hwmon/hwmon*/temp*_input"))]
    best: tuple[float, str] | None = None
    for path in candidates:
        try:
            value = parse_millidegrees(path.read_text(encoding="ascii", errors="replace"))
        except OSError:
            continue
        if value is not None and (best is None or value > best[0]):
            best = (value, str(path.relative_to(sys_root)))
    return best


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def read_cpu_sample(proc: Path = PROC) -> CpuSample | None:
    text = _read(proc / "stat")
    return parse_cpu_sample(text) if text else None


def health(settings: Settings, before: CpuSample | None, after: CpuSample | None, *, proc: Path = PROC, sys_root: Path = SYS) -> Health:
    """The box's health now; CPU use is measured between the two samples the caller took."""
    mem_text = _read(proc / "meminfo")
    mem = parse_meminfo(mem_text) if mem_text else None
    try:
        load: tuple[float, float, float] | None = os.getloadavg()
    except OSError:
        load = None
    disk_free: int | None = None
    disk_total: int | None = None
    try:
        disk = shutil.disk_usage(settings.home)
        disk_free, disk_total = disk.free, disk.total
    except OSError:
        pass
    temp = read_temperature(sys_root)
    return Health(cpu_percent(before, after), load, mem[0] if mem else None, mem[1] if mem else None, settings.home,
                  disk_free, disk_total, temp[0] if temp else None, temp[1] if temp else None)


# --- queues -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuesView:
    stats: tuple[QueueStats, ...]
    dead: tuple[DeadJob, ...]
    reports: tuple[tuple[str, str, int], ...] = ()  # (channel, state, how many) of the reports and SMS notices sent out, non-zero only
    report_problem: str = ""  # why the latest report or notice that did not go through did not (the endpoint's answer, in English)


def queues(box: Box, dead_limit: int = 100) -> QueuesView:
    from edge_agent.reporting import state as reports

    stuck = reports.latest(box.db, 1, "retrying") or reports.latest(box.db, 1, "failed")
    return QueuesView(tuple(box.queue.stats().values()), tuple(box.queue.dead_letters(None, dead_limit)),
                      tuple((c, st, n) for (c, st), n in sorted(reports.counts(box.db).items()) if n),
                      f"{stuck[0].channel} {stuck[0].study_uid[:20]}…: {stuck[0].detail}" if stuck else "")


def requeue(box: Box, job: DeadJob) -> int:
    """Put one dead letter back in line (``mammo queue requeue QUEUE ID``); returns how many moved (0 if it is no longer dead)."""
    return box.queue.requeue_dead(job.queue, [job.id])


# --- hardware profile and its benchmark ---------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """The active release's measured latencies (its ``bench.json``), made where the release was built."""

    version: str
    threads: int | None
    images: int | None
    median_ms: tuple[tuple[str, float], ...]  # (backend, median ms), the profile's backend first


@dataclass(frozen=True)
class HardwareView:
    profile: Profile
    forced: str | None
    machine: MachineFacts
    reasons: tuple[tuple[str, str], ...]
    benchmark: Benchmark | None


def read_benchmark(release_dir: Path, backend: str) -> Benchmark | None:
    """The release's bench.json, the entry for ``backend`` (``onnx-int8`` is stored as ``onnx_int8``) first."""
    try:
        raw = json.loads((release_dir / "bench.json").read_text(encoding="utf-8"))
        latency = {str(k): float(v["median_ms"]) for k, v in raw.get("latency", {}).items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    key = backend.replace("-", "_")
    ordered = sorted(latency.items(), key=lambda kv: (kv[0] != key, kv[1]))
    return Benchmark(str(raw.get("model_version", release_dir.name)), raw.get("threads"), raw.get("n_images"), tuple(ordered))


def hardware(box: Box) -> HardwareView:
    """The profile this box runs (as ``mammo hw detect`` chooses it) and the active release's benchmark."""
    from hardware_profiles.detect import detect
    from hardware_profiles.profiles import load_profiles
    from hardware_profiles.select import choose

    profiles = load_profiles()
    facts = detect(tuple(n for p in profiles.values() for n in p.delegates), box.settings.infer_tflite_delegate)
    forced = box.settings.infer_profile
    choice = choose(profiles, facts, forced if forced in profiles else None)
    active = models(box).active
    bench = read_benchmark(active.path, choice.profile.backend) if active else None
    return HardwareView(choice.profile, forced, facts, choice.reasons, bench)


@dataclass(frozen=True)
class ProfileRun:
    """One profile in ``mammo hw bench``: whether it ran here, and how fast and how close to the fp32 reference."""

    profile: str
    status: str  # ran | fell back | unavailable
    median_ms: float | None
    max_prob_diff: float | None
    reason: str | None


def measure_hardware(n_images: int = 12) -> tuple[ProfileRun, ...]:
    """``mammo hw bench`` on this machine (seconds: every profile it can load, on the same images)."""
    from hardware_profiles.bench import hw_bench

    result = hw_bench(n_images=n_images)
    return tuple(ProfileRun(name, str(r["status"]), r.get("median_ms"), r.get("max_prob_diff_vs_reference"), r.get("reason"))
                 for name, r in result["profiles"].items())


# --- enrolment ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentView:
    enrolled: bool
    state: str  # not enrolled | enrolled | expired
    box_id: str | None
    certificate_expires: str | None
    days_left: int | None
    authority_fingerprint: str | None
    coordinator: str | None
    model_signing_key: str | None


def enrolment(settings: Settings, now: dt.datetime | None = None) -> EnrolmentView:
    """What ``mammo provision status`` reports; needs no passphrase."""
    from provisioning import enrolment as enrol
    from provisioning.keystore import peek_box_id

    st = enrol.status(enrol.folder_of(settings), peek_box_id(settings.keystore_path), now)
    signing = f"v{st['model_signing_version']} {st['model_signing_key_fingerprint']}" if st["enrolled"] else None
    return EnrolmentView(bool(st["enrolled"]), str(st["state"]), st["box_id"], st["certificate_expires"], st["days_left"],
                         st["authority_fingerprint"], st["coordinator"], signing)


# --- keys and demo mode -------------------------------------------------------------------------


@dataclass(frozen=True)
class KeysView:
    demo: bool
    passphrase_source: str  # file (demo) | setting | operator
    passphrase_file: Path
    keystore_path: Path
    keystore_exists: bool
    box_id: str | None
    created_at: float | None
    kdf: str | None
    generate_allowed: bool  # keystore_demo_mode: the box may generate (and use) a passphrase file
    protectors: tuple[str, ...] = ()  # what unlocks the keystore: "TPM 2.0", "passphrase (argon2id ...)"


def keys(settings: Settings) -> KeysView:
    """How the keystore is protected, from its clear header; demo mode is a passphrase kept on the disk it protects (or allowed to be)."""
    from provisioning.keystore import protector_records
    from provisioning.protectors import describe

    generated = settings.secrets_dir / "passphrase"
    demo = (settings.keystore_demo_mode and not settings.keystore_passphrase) or generated.exists()
    source = "setting" if settings.keystore_passphrase else "file" if demo else "operator"
    header: dict[str, Any] = {}
    try:
        loaded = json.loads(settings.keystore_path.read_text(encoding="utf-8"))
        header = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    records = protector_records(settings.keystore_path)
    k = next((r["kdf"] for r in records if r.get("kind") == "passphrase" and isinstance(r.get("kdf"), dict)), None)
    kdf = f"{k.get('name')} t={k.get('time_cost')} m={k.get('memory_kib')} KiB p={k.get('parallelism')}" if k else None
    box_id = header.get("box_id")
    created = header.get("created_at")
    return KeysView(demo, source, generated, settings.keystore_path, settings.keystore_path.exists(),
                    box_id if isinstance(box_id, str) else None, float(created) if isinstance(created, int | float) else None,
                    kdf, settings.keystore_demo_mode, tuple(describe(r) for r in records))


# --- sync ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncView:
    """The box's federated sync (``edge_agent.sync_view``: the outbox table and the last exchange), and, on a machine that
    also runs the coordinator, its clinics as its ServerApp last saw them."""

    enabled: bool
    reason: str | None
    coordinator: str | None
    summary: SyncSummary
    clinics: tuple[dict[str, Any], ...] = ()


def sync(box: Box) -> SyncView:
    s = box.settings
    coordinator = enrolment(s).coordinator
    reason = None if s.sync_enabled else "sync_enabled = false"
    if reason is None and not (s.sync_superlink or coordinator):
        reason = "no startup kit naming a coordinator"
    clinics: tuple[dict[str, Any], ...] = ()
    home = Path(os.environ.get("MAMMO_COORDINATOR_HOME") or s.home / "coordinator")
    try:
        links = json.loads((home / "links.json").read_text(encoding="utf-8"))
        clinics = tuple({"box_id": b, **v} for b, v in sorted((links.get("boxes") or {}).items()))
    except (OSError, ValueError, AttributeError):
        pass
    return SyncView(reason is None, reason, s.sync_superlink or coordinator, sync_summary(box.db, s.home, recent=4), clinics)


def sync_now(box: Box) -> None:
    """The technician asked the box to reconnect to the coordinator now (audited)."""
    from edge_agent import audit
    from edge_agent.sync_view import request_sync_now

    request_sync_now(box.settings.home)
    audit.append(box.db, "console", "sync_now_requested", None, {})


# --- model versions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelsView:
    releases: tuple[ModelVersion, ...]
    history: tuple[Activation, ...]  # newest first
    active: Activation | None
    trust: str = "demo"  # whose signature a release needs: federation (enrolled) | demo (unenrolled: shipped releases only) | error
    trust_error: str | None = None
    training: dict[str, Any] | None = None  # local training's privacy budget of the active model (edge_agent.learning.ledger.status)


def _registry(box: Box) -> Any:
    from edge_agent.inference.activation import ModelRegistry

    return ModelRegistry(box.db, box.settings, keystore=box.keystore)


def models(box: Box, history: int = 5) -> ModelsView:
    from edge_agent.errors import MammoError

    reg = _registry(box)
    hist = reg.history()
    try:
        trust, error = str(reg.trust().mode), None
    except MammoError as exc:  # a damaged kit: nothing activates until it is reinstalled
        trust, error = "error", str(exc)
    from edge_agent.learning import ledger

    active = hist[-1] if hist else None
    training = ledger.status(box.db, active.generation) if active else None
    if training is not None and training.get("epsilon_budget") is None:  # no round yet: the budget the settings give
        training.update(epsilon_budget=box.settings.train_epsilon_budget, epsilon_left=box.settings.train_epsilon_budget)
    return ModelsView(tuple(reg.releases()), tuple(reversed(hist[-history:])), active, trust, error, training)


def technician() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "technician"


def activate(box: Box, version_or_path: str) -> Activation:
    """``mammo model activate``: verify, self-test, then activate; a failure raises ModelError and changes nothing."""
    act: Activation = _registry(box).activate(version_or_path, by=technician(), reason="activated from the console")
    return act


def rollback(box: Box) -> Activation:
    """``mammo model rollback``."""
    act: Activation = _registry(box).rollback(by=technician())
    return act


# --- audit trail --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    seq: int
    at: float
    actor: str
    action: str
    object: str
    details: str


@dataclass(frozen=True)
class AuditVerdict:
    ok: bool
    entries: int
    checkpoints: int
    first_bad: int | None
    reason: str | None


def audit_entries(box: Box, limit: int = 50) -> tuple[AuditRow, ...]:
    """The newest entries of the box's hash-chained trail (``edge_agent.audit``'s ``audit_log``), newest first; read only."""
    rows = box.db.execute("SELECT seq, at, actor, action, coalesce(object, ''), details FROM audit_log ORDER BY seq DESC LIMIT ?", [limit]).fetchall()
    return tuple(AuditRow(int(r[0]), float(r[1]), r[2], r[3], r[4], "" if r[5] == "{}" else r[5]) for r in rows)


def verify_audit(box: Box) -> AuditVerdict:
    """``mammo audit verify``: the chain and its checkpoints checked with the box's key; a sound chain gets a signed checkpoint."""
    from edge_agent import audit

    report = audit.verify(box.db, box.keystore)
    return AuditVerdict(report.ok, report.entries, report.checkpoints, report.first_bad, report.reason)


# --- log tail -----------------------------------------------------------------------------------


def log_file(settings: Settings) -> Path | None:
    """The newest ``*.log`` under the box's log folder, None when there is none."""
    try:
        logs = [p for p in settings.log_dir.glob("*.log") if p.is_file()]
    except OSError:
        return None
    return max(logs, key=lambda p: p.stat().st_mtime) if logs else None


def read_log(path: Path, offset: int | None, *, tail_bytes: int = 16_384) -> tuple[list[str], int]:
    """Lines written since ``offset`` (the last ``tail_bytes`` on the first read, or after the file was cut), and the new offset."""
    try:
        size = path.stat().st_size
        start = max(0, size - tail_bytes) if offset is None or offset > size else offset
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read(size - start)
    except OSError:
        return [], offset or 0
    end = data.rfind(b"\n") + 1  # keep a half-written last line for the next read
    lines = data[:end].decode("utf-8", errors="replace").splitlines()
    if offset is None and start > 0 and lines:
        lines = lines[1:]  # the first line of a tail is cut in the middle
    return lines, start + end
