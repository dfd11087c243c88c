"""The console's Textual app: a list of screens on the left, one screen at a time on the right.

Made for an 80x24 terminal and the keyboard: 1-9 pick a screen, arrows move
in lists and tables, one letter per action (r requeue, a activate, b roll
back, v verify), l switches Turkish/English, q quits.  Every value comes from
``console.data``; every word from ``console.views`` and ``console.i18n``.
Slow work (hardware detection, a release's self-test) runs in a thread worker
so the screen keeps answering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, ContentSwitcher, DataTable, OptionList, RichLog, Static

from edge_agent.box import Box
from edge_agent.console import data, views
from edge_agent.console.i18n import LANGUAGES, t
from edge_agent.errors import MammoError
from edge_agent.pacs.service import console_line as pacs_console_line
from edge_agent.queue import DeadJob

PANES = ("health", "queues", "hardware", "enrolment", "keys", "sync", "models", "audit", "log")


class Confirm(ModalScreen[bool]):
    """A yes/no question; y or Enter on Yes answers yes, n or Escape answers no."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", show=False), Binding("n,escape", "answer(False)", show=False)]
    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical { width: 60; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    Confirm Horizontal { height: auto; margin-top: 1; }
    Confirm Button { margin-right: 2; }
    """

    def __init__(self, question: str, lang: str) -> None:
        super().__init__()
        self.question, self.lang = question, lang

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question")
            with Horizontal():
                yield Button(t(self.lang, "confirm.yes"), id="yes", variant="warning")
                yield Button(t(self.lang, "confirm.no"), id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class Console(App[None]):
    """The technician's console over one open box."""

    TITLE = "MammoAI-TR"
    CSS = """
    #top { height: auto; background: $primary-darken-2; color: $text; padding: 0 1; }
    #demo { height: auto; background: red; color: white; text-style: bold; padding: 0 1; }
    #main { height: 1fr; }
    #nav { width: 16; height: 1fr; }
    #panes { width: 1fr; height: 1fr; padding: 0 1; }
    #panes > * { height: 1fr; }
    #status { height: auto; max-height: 4; padding: 0 1; }
    #status.error { background: $error; color: $text; }
    #help { height: 1; background: $primary-darken-2; color: $text; padding: 0 1; }
    DataTable { height: auto; max-height: 8; margin-bottom: 1; }
    #dead-table { max-height: 10; }
    #audit-table { height: 1fr; max-height: 100%; }
    #log { height: 1fr; }
    #sync-now { margin: 1 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(str(i + 1), f"show('{name}')", show=False) for i, name in enumerate(PANES)),
        Binding("r", "requeue", show=False),
        Binding("a", "activate", show=False),
        Binding("b", "rollback", show=False),
        Binding("v", "verify", show=False),
        Binding("m", "measure", show=False),
        Binding("l", "language", show=False),
        Binding("f5,ctrl+r", "reload", show=False),
        Binding("escape", "focus_nav", show=False),
        Binding("q", "quit", show=False),
    ]

    def __init__(self, box: Box, lang: str = "tr", *, health_every_s: float = 2.0, log_every_s: float = 1.0) -> None:
        super().__init__()
        self.box = box
        self.lang = lang if lang in LANGUAGES else "tr"
        self.health_every_s, self.log_every_s = health_every_s, log_every_s
        self._cpu: data.CpuSample | None = None
        self._dead: tuple[DeadJob, ...] = ()
        self._models: data.ModelsView | None = None
        self._hardware: data.HardwareView | None = None
        self._measured: tuple[data.ProfileRun, ...] | None = None
        self._measuring = False
        self._verdict: data.AuditVerdict | None = None
        self._log_path: Path | None = None
        self._log_offset: int | None = None

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="top")
        yield Static(id="demo")
        with Horizontal(id="main"):
            yield OptionList(*(t(self.lang, f"nav.{p}") for p in PANES), id="nav")
            with ContentSwitcher(id="panes", initial="health"):
                yield VerticalScroll(Static(id="health-body"), id="health")
                with Vertical(id="queues"):
                    yield Static(id="queues-title")
                    yield DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
                    yield Static(id="dead-title")
                    yield DataTable(id="dead-table", cursor_type="row", zebra_stripes=True)
                    yield Static(id="reports-line")
                    yield Static(id="pacs-line")
                yield VerticalScroll(Static(id="hardware-body"), id="hardware")
                yield VerticalScroll(Static(id="enrolment-body"), id="enrolment")
                yield VerticalScroll(Static(id="keys-body"), id="keys")
                with Vertical(id="sync"):
                    yield Static(id="sync-body")
                    yield Button(id="sync-now", disabled=True)
                    yield Static(id="sync-note")
                with Vertical(id="models"):
                    yield Static(id="models-title")
                    yield DataTable(id="model-table", cursor_type="row", zebra_stripes=True)
                    yield Static(id="models-body")
                with Vertical(id="audit"):
                    yield Static(id="audit-title")
                    yield DataTable(id="audit-table", cursor_type="row", zebra_stripes=True)
                with Vertical(id="log"):
                    yield Static(id="log-path")
                    yield RichLog(id="log-view", max_lines=2000, wrap=True, markup=False, min_width=20)
        yield Static(id="status")
        yield Static(id="help")

    def on_mount(self) -> None:
        self._cpu = data.read_cpu_sample()
        self._words()
        self.query_one("#nav", OptionList).highlighted = 0
        self.set_interval(self.health_every_s, self._tick_health)
        self.set_interval(self.log_every_s, self._tick_log)
        self._load("health")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While a question is open only its own keys count: no second activation behind the first one's back."""
        return action == "quit" or not isinstance(self.screen, ModalScreen)

    def say(self, message: str, *, error: bool = False) -> None:
        """The outcome of the last action, kept on screen until the next one (a toast would be gone before it is read)."""
        status = self.query_one("#status", Static)
        status.update(escape(message))
        status.set_class(error, "error")

    # -- words ------------------------------------------------------------------------------------
    def _words(self) -> None:
        """Everything whose text depends only on the language."""
        keys = data.keys(self.box.settings)
        box_id = keys.box_id or "-"
        self.query_one("#top", Static).update(f"[b]{t(self.lang, 'title')}[/b] · {escape(self.box.settings.box_name)} · {box_id[:8]}")
        demo = self.query_one("#demo", Static)
        demo.update(t(self.lang, "demo_banner"))
        demo.display = keys.demo
        self.query_one("#help", Static).update(t(self.lang, "keys"))
        nav = self.query_one("#nav", OptionList)
        for i, p in enumerate(PANES):
            nav.replace_option_prompt_at_index(i, t(self.lang, f"nav.{p}"))
        self.query_one("#sync-now", Button).label = t(self.lang, "sync.button")
        self.query_one("#sync-note", Static).update(f"[i]{t(self.lang, 'sync.none')}[/i]")

    @property
    def current(self) -> str:
        return self.query_one("#panes", ContentSwitcher).current or "health"

    # -- navigation -------------------------------------------------------------------------------
    def action_show(self, name: str) -> None:
        self.query_one("#panes", ContentSwitcher).current = name
        nav = self.query_one("#nav", OptionList)
        if nav.highlighted != PANES.index(name):
            nav.highlighted = PANES.index(name)
        self._load(name)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        name = PANES[event.option_index]
        if name != self.current:
            self.action_show(name)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Enter on a screen's name moves into it (its table, when it has one)."""
        name = PANES[event.option_index]
        tables = self.query_one(f"#{name}").query(DataTable)
        if tables:
            tables.last().focus()

    def action_focus_nav(self) -> None:
        """Escape goes back to the list of screens from wherever the cursor is."""
        self.query_one("#nav", OptionList).focus()

    def action_language(self) -> None:
        self.lang = LANGUAGES[(LANGUAGES.index(self.lang) + 1) % len(LANGUAGES)]
        self._words()
        self._load(self.current)

    def action_reload(self) -> None:
        self._hardware = None  # detected again: a delegate or runtime may have been installed meanwhile
        self._load(self.current)

    def _load(self, name: str) -> None:
        """Read the screen's data and draw it; each screen is read when it is shown, never in the background."""
        try:
            getattr(self, f"_load_{name}")()
        except MammoError as exc:
            self.say(str(exc), error=True)

    # -- screens ----------------------------------------------------------------------------------
    def _load_health(self) -> None:
        before, self._cpu = self._cpu, data.read_cpu_sample()
        h = data.health(self.box.settings, before, self._cpu)
        self.query_one("#health-body", Static).update(views.health(self.lang, h, self._cpu is not None))

    def _tick_health(self) -> None:
        if self.current == "health":
            self._load_health()

    def _load_queues(self) -> None:
        v = data.queues(self.box)
        lang = self.lang
        self.query_one("#queues-title", Static).update(f"[b]{t(lang, 'queues.title')}[/b]" + ("" if v.stats else f"  {t(lang, 'queues.empty')}"))
        table = self.query_one("#queue-table", DataTable)
        table.clear(columns=True)
        table.add_columns(*(t(lang, f"queues.col.{c}") for c in ("queue", "ready", "leased", "done", "dead")))
        for s in v.stats:
            table.add_row(s.queue, s.ready, s.leased, s.done, f"[b red]{s.dead}[/b red]" if s.dead else "0")
        self._dead = v.dead
        self.query_one("#dead-title", Static).update(f"[b]{t(lang, 'queues.dead_title')}[/b]" + ("" if v.dead else f"\n{t(lang, 'queues.no_dead')}"))
        dead = self.query_one("#dead-table", DataTable)
        row = dead.cursor_row
        dead.clear(columns=True)
        dead.add_columns(*(t(lang, f"queues.col.{c}") for c in ("id", "queue", "attempts", "error")))
        for d in v.dead:
            dead.add_row(d.id, d.queue, d.attempts, escape((d.last_error or "")[:60]), key=str(d.id))
        dead.display = bool(v.dead)
        _keep_cursor(dead, row)
        self.query_one("#reports-line", Static).update(_reports_line(v, lang))
        self.query_one("#pacs-line", Static).update(pacs_console_line(self.box.db, lang))  # edge_agent.pacs: exports by state

    def action_requeue(self) -> None:
        if self.current != "queues":
            return
        table = self.query_one("#dead-table", DataTable)
        if not self._dead or not 0 <= table.cursor_row < len(self._dead):
            self.say(t(self.lang, "queues.nothing_selected"), error=True)
            return
        job = self._dead[table.cursor_row]
        if data.requeue(self.box, job):
            self.say(t(self.lang, "queues.requeued", id=job.id, queue=job.queue))
        self._load_queues()

    def _load_hardware(self) -> None:
        if self._hardware is None:
            self.query_one("#hardware-body", Static).update("…")
            self._detect_hardware()
        else:
            self._draw_hardware()

    def _draw_hardware(self) -> None:
        if self._hardware is not None:
            self.query_one("#hardware-body", Static).update(views.hardware(self.lang, self._hardware, self._measured, self._measuring))

    @work(thread=True, exclusive=True, group="hardware")
    def _detect_hardware(self) -> None:
        """Detection imports the runtimes and probes for delegates: off the screen's thread."""
        view = data.hardware(self.box)

        def done() -> None:
            self._hardware = view
            self._draw_hardware()

        self.call_from_thread(done)

    def action_measure(self) -> None:
        if self.current != "hardware" or self._measuring:
            return
        self._measuring = True
        self._draw_hardware()
        self._run_measure()

    @work(thread=True, exclusive=True, group="measure")
    def _run_measure(self) -> None:
        try:
            runs: tuple[data.ProfileRun, ...] | None = data.measure_hardware()
            error = None
        except MammoError as exc:
            runs, error = None, str(exc)

        def done() -> None:
            self._measuring, self._measured = False, runs
            if error:
                self.say(error, error=True)
            self._draw_hardware()

        self.call_from_thread(done)

    def _load_enrolment(self) -> None:
        self.query_one("#enrolment-body", Static).update(views.enrolment(self.lang, data.enrolment(self.box.settings)))

    def _load_keys(self) -> None:
        self.query_one("#keys-body", Static).update(views.keys(self.lang, data.keys(self.box.settings), self.box.settings.timezone))

    def _load_sync(self) -> None:
        view = data.sync(self.box)
        self.query_one("#sync-body", Static).update(views.sync(self.lang, view, self.box.settings.timezone))
        self.query_one("#sync-note", Static).update(f"[i]{t(self.lang, 'sync.none')}[/i]" if view.summary.last_sync_at is None else "")
        self.query_one("#sync-now", Button).disabled = not view.enabled

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "sync-now":
            data.sync_now(self.box)
            self.query_one("#sync-note", Static).update(f"[i]{t(self.lang, 'sync.asked')}[/i]")

    def _load_models(self) -> None:
        v = self._models = data.models(self.box)
        lang = self.lang
        self.query_one("#models-title", Static).update(f"[b]{t(lang, 'models.title')}[/b]")
        table = self.query_one("#model-table", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        table.add_columns(*(t(lang, f"models.col.{c}") for c in ("active", "version", "source", "path")))
        for r in v.releases:
            table.add_row("[b green]●[/b green]" if r.active else "", r.version, t(lang, f"models.source.{r.source}"), escape(str(r.path))[-40:])
        _keep_cursor(table, row)
        self.query_one("#models-body", Static).update(views.models(lang, v, self.box.settings.timezone))

    def action_activate(self) -> None:
        if self.current != "models" or self._models is None or not self._models.releases:
            return
        row = self.query_one("#model-table", DataTable).cursor_row
        release = self._models.releases[max(0, min(row, len(self._models.releases) - 1))]
        question = t(self.lang, "models.confirm_activate", version=escape(release.version)) + f"\n[dim]{escape(str(release.path))}[/dim]"
        self.push_screen(Confirm(question, self.lang), lambda yes: self._change_model(str(release.path)) if yes else None)

    def action_rollback(self) -> None:
        if self.current != "models" or self._models is None:
            return
        active = self._models.active.version if self._models.active else "-"
        self.push_screen(Confirm(t(self.lang, "models.confirm_rollback", version=escape(active)), self.lang),
                         lambda yes: self._change_model(None) if yes else None)

    def _change_model(self, path: str | None) -> None:
        self.say(t(self.lang, "models.working"))
        self._run_model_change(path)

    @work(thread=True, exclusive=True, group="models")
    def _run_model_change(self, path: str | None) -> None:
        """Activation verifies and self-tests the release (seconds); done here, off the screen's thread."""
        try:
            act = data.activate(self.box, path) if path is not None else data.rollback(self.box)
        except MammoError as exc:
            message = t(self.lang, "models.failed", error=str(exc))
            self.call_from_thread(lambda: self.say(message, error=True))
        else:
            self._hardware = None  # the benchmark shown is the active release's
            message = t(self.lang, "models.activated", version=act.version, diff=act.selftest.get("max_prob_diff", "?"))
            self.call_from_thread(lambda: self.say(message))
        self.call_from_thread(self._load_models)

    def _load_audit(self) -> None:
        entries = data.audit_entries(self.box)
        lang = self.lang
        self.query_one("#audit-title", Static).update(views.audit_header(lang, len(entries), self._verdict))
        table = self.query_one("#audit-table", DataTable)
        table.clear(columns=True)
        table.add_columns(*(t(lang, f"audit.col.{c}") for c in ("seq", "at", "user", "action", "object")))
        for e in entries:
            table.add_row(e.seq, views.when(e.at, self.box.settings.timezone)[5:], escape(e.actor[:12]), escape(e.action[:16]), escape(" ".join(x for x in (e.object, e.details) if x)[:40]))
        if not entries:
            table.add_row("", "", "", t(lang, "audit.empty"), "")

    def action_verify(self) -> None:
        if self.current != "audit":
            return
        self._verdict = data.verify_audit(self.box)
        self._load_audit()

    def _load_log(self) -> None:
        path = data.log_file(self.box.settings)
        label = self.query_one("#log-path", Static)
        if path is None:
            label.update(f"[yellow]{escape(t(self.lang, 'log.none', dir=str(self.box.settings.log_dir)))}[/yellow]")
        else:
            label.update(f"[dim]{escape(t(self.lang, 'log.file', path=str(path)))}[/dim]")
        if path != self._log_path:
            self._log_path, self._log_offset = path, None
            self.query_one("#log-view", RichLog).clear()
        self._tick_log()

    def _tick_log(self) -> None:
        if self._log_path is None or self.current != "log":
            return
        lines, self._log_offset = data.read_log(self._log_path, self._log_offset)
        view = self.query_one("#log-view", RichLog)
        for line in lines:
            view.write(Text(line))


def _keep_cursor(table: DataTable[Any], row: int) -> None:
    """After a table is filled again, the cursor stays on the same row (or the last one, if fewer remain)."""
    if table.row_count:
        table.move_cursor(row=min(max(row, 0), table.row_count - 1))


def run(box: Box, lang: str) -> None:
    Console(box, lang).run()


def _reports_line(v: data.QueuesView, lang: str) -> str:
    """Reports and SMS notices sent out, by state, and why the latest stuck one is stuck (edge_agent.reporting)."""
    from edge_agent.reporting.state import KIOSK_CHANNEL, KIOSK_STATE, KIOSK_TITLE

    lang = lang if lang in KIOSK_STATE else "tr"
    if not v.reports:
        return ""
    parts = [f"{KIOSK_CHANNEL[lang][c]}: {KIOSK_STATE[lang][st]} {n}" for c, st, n in v.reports]
    line = f"[b]{KIOSK_TITLE[lang]}[/b]  " + " · ".join(parts)
    return line + (f"\n[red]{escape(v.report_problem[:160])}[/red]" if v.report_problem else "")

