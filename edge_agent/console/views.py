"""Records from ``console.data`` as the console's text, in one language.

Pure functions of a record and a language, returning Rich markup, so a test
can check the words without a terminal.  Anything that came from outside
(error text, file names, audit details) is escaped: a ``[`` in a job's last
error must not be read as markup.
"""

from __future__ import annotations

from rich.markup import escape

from edge_agent.clinic_time import local
from edge_agent.console.data import AuditVerdict, EnrolmentView, HardwareView, Health, KeysView, ModelsView, ProfileRun, SyncView
from edge_agent.console.i18n import t


def size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def when(ts: float | None, tz: str) -> str:
    """'2026-11-30 13:12:05' in the clinic's zone (settings.timezone), not the box's clock zone (often UTC); '-' for none."""
    return local(ts, tz).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


LABEL = 20


def _row(label: str, value: str, width: int = LABEL) -> str:
    return f"[b]{label:<{width}}[/b] {value}"


def health(lang: str, h: Health, cpu_readable: bool) -> str:
    na = f"[i]{t(lang, 'unreadable')}[/i]"
    cpu = f"{h.cpu_percent:.1f}%" if h.cpu_percent is not None else ("…" if cpu_readable else na)
    load = " / ".join(f"{x:.2f}" for x in h.load) if h.load else na
    mem = (t(lang, "health.used_of", used=size(h.memory_used), total=size(h.memory_total), pct=round(100 * h.memory_used / h.memory_total))
           if h.memory_used is not None and h.memory_total else na)
    disk = (t(lang, "health.free_of", free=size(h.disk_free), total=size(h.disk_total), pct=round(100 * (1 - h.disk_free / h.disk_total)))
            if h.disk_free is not None and h.disk_total else na)
    temp = f"{h.temperature_c:.1f} °C  [dim]({escape(h.temperature_source or '')})[/dim]" if h.temperature_c is not None else na
    return "\n".join([
        _row(t(lang, "health.cpu"), cpu),
        _row(t(lang, "health.load"), load),
        _row(t(lang, "health.memory"), mem),
        _row(t(lang, "health.disk"), disk) + f"\n{'':{LABEL + 1}}[dim]{escape(str(h.disk_path))}[/dim]",
        _row(t(lang, "health.temperature"), temp),
    ])


def hardware(lang: str, v: HardwareView, measured: tuple[ProfileRun, ...] | None = None, measuring: bool = False) -> str:
    p, m = v.profile, v.machine
    lines = [_row(t(lang, "hardware.profile"), f"[b]{escape(p.name)}[/b]" + (f"  {t(lang, 'hardware.forced', name=escape(v.forced))}" if v.forced else "")),
             f"{'':{LABEL + 1}}[dim]{escape(p.description)}[/dim]",
             _row(t(lang, "hardware.runtime"), f"{p.runtime} / {p.backend} / {p.precision}, {p.threads} thr, {p.workers} worker"),
             _row(t(lang, "hardware.budget"), f"{p.latency_budget_ms_per_study} ms/study, {p.memory_cap_mb} MB"),
             _row(t(lang, "hardware.machine"), f"{m.arch}, {m.cores} cores, {m.memory_gb} GB, GPU {escape(m.gpu_name or ('yes' if m.gpu_visible else '-'))}"),
             ""]
    b = v.benchmark
    if b is None:
        lines.append(t(lang, "hardware.bench_none"))
    else:
        lines.append(f"[b]{t(lang, 'hardware.bench', version=escape(b.version), threads=b.threads or '?', images=b.images or '?')}[/b]")
        key = p.backend.replace("-", "_")
        lines += [f"  {'>' if name == key else ' '} {escape(name):<28} {ms:8.2f} ms" for name, ms in b.median_ms]
    lines.append("")
    if measuring:
        lines.append(f"[yellow]{t(lang, 'hardware.measuring')}[/yellow]")
    elif measured is None:
        lines.append(f"[dim]{t(lang, 'hardware.bench_hint')}[/dim]")
    else:
        lines.append(f"[b]{t(lang, 'hardware.measured')}[/b]")
        for r in measured:
            if r.median_ms is None:
                lines.append(f"  {escape(r.profile):<22} [dim]{t(lang, 'hardware.unavailable')}[/dim]")
            else:
                lines.append(f"  {escape(r.profile):<22} {r.median_ms:8.2f} ms  Δp {r.max_prob_diff}" + (f"  [yellow]{escape(r.status)}[/yellow]" if r.status != "ran" else ""))
    lines += ["", f"[b]{t(lang, 'hardware.reasons')}[/b]"]
    for name, why in v.reasons:
        lines += [f"  {'[b]' if name == p.name else ''}{escape(name)}{'[/b]' if name == p.name else ''}", f"    [dim]{escape(why)}[/dim]"]
    return "\n".join(lines)


def enrolment(lang: str, e: EnrolmentView) -> str:
    state = {"enrolled": f"[green]{t(lang, 'enrolment.enrolled')}[/green]", "expired": f"[b red]{t(lang, 'enrolment.expired')}[/b red]"}.get(
        e.state, f"[yellow]{t(lang, 'enrolment.not_enrolled')}[/yellow]")
    lines = [_row(t(lang, "enrolment.state"), state), _row(t(lang, "enrolment.box"), escape(e.box_id or "-"))]
    if e.enrolled:
        days = f"[b red]{e.days_left}[/b red]" if e.days_left is not None and e.days_left < 7 else str(e.days_left)
        fp = e.authority_fingerprint or ""
        lines += [_row(t(lang, "enrolment.expires"), escape(e.certificate_expires or "-")),
                  _row(t(lang, "enrolment.days_left"), days),
                  _row(t(lang, "enrolment.authority"), fp[:32]), f"{'':{LABEL + 1}}{fp[32:]}",
                  _row(t(lang, "enrolment.coordinator"), escape(e.coordinator or t(lang, "none"))),
                  _row(t(lang, "enrolment.signing"), escape((e.model_signing_key or "-")[:40]))]
    else:
        lines += [_row(t(lang, "models.trust"), f"[b reverse yellow] {t(lang, 'models.trust.demo')} [/b reverse yellow]"),
                  f"[dim]{t(lang, 'models.trust.demo_hint')}[/dim]", "", f"[dim]{t(lang, 'enrolment.hint')}[/dim]"]
    return "\n".join(lines)


def keys(lang: str, k: KeysView, tz: str) -> str:
    if k.demo:
        mode = f"[b reverse red] {t(lang, 'keys.demo', path=escape(str(k.passphrase_file)))} [/b reverse red]"
    else:
        mode = f"[green]{t(lang, 'keys.passphrase_setting' if k.passphrase_source == 'setting' else 'keys.passphrase_operator')}[/green]"
    lines = [f"[b]{t(lang, 'keys.mode')}[/b]", f"  {mode}", "",
             _row(t(lang, "keys.keystore"), escape(str(k.keystore_path)) if k.keystore_exists else f"[red]{t(lang, 'keys.missing')}[/red]"),
             _row(t(lang, "enrolment.box"), escape(k.box_id or "-")),
             _row(t(lang, "keys.created"), when(k.created_at, tz)),
             _row(t(lang, "keys.protectors"), escape(", ".join(k.protectors) or "-")),
             _row(t(lang, "keys.kdf"), escape(k.kdf or "-")),
             "", f"{t(lang, 'keys.generate')}: {t(lang, 'yes' if k.generate_allowed else 'no')}"]
    return "\n".join(lines)


def sync(lang: str, s: SyncView, tz: str) -> str:
    m = s.summary
    state = f"[green]{t(lang, 'sync.on')}[/green]" if s.enabled else f"[yellow]{t(lang, 'sync.off')}[/yellow] [dim]{escape(s.reason or '')}[/dim]"
    waiting = t(lang, "sync.waiting_n", n=m.pending, kb=m.pending_bytes // 1024) + (f" [dim]{when(m.oldest_pending_at, tz)[5:16]}[/dim]" if m.oldest_pending_at else "")
    lines = [_row(t(lang, "sync.state"), state), _row(t(lang, "sync.coordinator"), escape(s.coordinator or t(lang, "none"))),
             _row(t(lang, "sync.waiting"), waiting), _row(t(lang, "sync.last"), when(m.last_sync_at, tz)), _row(t(lang, "sync.last_ack"), when(m.last_ack_at, tz))]
    if m.model_version:
        lines.append(_row(t(lang, "sync.model"), escape(m.model_version)))
    if m.last_release:
        r = m.last_release
        verdict = t(lang, "sync.release_ok") if r.get("ok") else f"[red]{t(lang, 'sync.release_refused')}[/red] {escape(str(r.get('error', ''))[:60])}"
        lines.append(_row(t(lang, "sync.release"), f"{escape(str(r.get('version')))} {verdict}"))
    lines += [f"  [dim]{when(e['placed_at'], tz)[5:16]} {escape(str(e['update_id']))[:8]} {e['state']:<12} x{e['attempts']}[/dim]" for e in m.recent]
    if s.clinics:
        lines.append(f"[b]{t(lang, 'sync.clinics')}[/b]")
        lines += [f"  {escape(c['box_id'])[:8]} {when(c.get('last_contact_at'), tz)[5:16]} {escape(str(c.get('model_version') or '-'))[:14]:<14} "
                  f"{t(lang, 'sync.waiting_n', n=(c.get('outbox') or {}).get('pending', 0), kb=(c.get('outbox') or {}).get('pending_bytes', 0) // 1024)}"
                  for c in s.clinics[:6]]
    return "\n".join(lines)


def models(lang: str, v: ModelsView, tz: str) -> str:
    a = v.active
    lines = [_row(t(lang, "models.active"), f"[b]{escape(a.version)}[/b]  [dim]{escape(str(a.path))}[/dim]" if a else t(lang, "models.none_active"))]
    if v.trust == "demo":
        lines += [_row(t(lang, "models.trust"), f"[b reverse yellow] {t(lang, 'models.trust.demo')} [/b reverse yellow]"),
                  f"[dim]{t(lang, 'models.trust.demo_hint')}[/dim]"]
    elif v.trust == "federation":
        lines.append(_row(t(lang, "models.trust"), t(lang, "models.trust.federation")))
    else:
        lines.append(_row(t(lang, "models.trust"), f"[b red]{t(lang, 'models.trust.error')}[/b red] {escape(v.trust_error or '')}"))
    if v.training is not None:
        tr = v.training
        lines.append(_row(t(lang, "models.privacy"), t(lang, "models.privacy_value", spent=f"{tr['epsilon_spent']:.2f}",
                                                         budget=f"{tr['epsilon_budget']:.2f}", left=f"{tr['epsilon_left']:.2f}",
                                                         rounds=tr.get("rounds_done", 0))))
        if tr.get("last_decision"):
            lines.append(_row(t(lang, "models.privacy_last"), escape("; ".join(tr["last_decision"]["reasons"]))[:120]))
    lines.append(f"[b]{t(lang, 'models.history')}[/b]")
    lines += [f"  {when(h.activated_at, tz)[5:16]} {escape(h.version):<8} {escape(h.activated_by)[:10]:<10} [dim]{escape(h.reason)}[/dim]" for h in v.history] or ["  -"]
    return "\n".join(lines)


def audit_header(lang: str, shown: int, verdict: AuditVerdict | None) -> str:
    head = f"[b]{t(lang, 'audit.title', n=shown)}[/b]"
    if verdict is None:
        return f"{head}\n[dim]{t(lang, 'audit.verify_hint')}[/dim]"
    if verdict.ok:
        return f"{head}\n[green]{t(lang, 'audit.verify_ok', entries=verdict.entries, checkpoints=verdict.checkpoints)}[/green]"
    bad = t(lang, "audit.verify_bad", first=verdict.first_bad if verdict.first_bad is not None else "?")
    return f"{head}\n[b reverse red] {escape(bad)} [/b reverse red]" + (f" {escape(verdict.reason)}" if verdict.reason else "")
