"""``create_app(settings, services) -> Litestar``: the family doctor's kiosk.

Every page but sign-in needs a live session; every POST needs the session's
anti-forgery token (sign-in uses a double-submit cookie instead). Each
refusal is a :class:`~edge_agent.errors.KioskError` whose ``message_key``
the error page shows in the reader's language; nothing is written when a
request is refused. PHI views, exports and prints go to the audit trail.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import Cookie, UploadFile
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from edge_agent import clinic_time
from edge_agent.errors import (
    AuthError,
    CsrfError,
    IntegrityError,
    KioskError,
    NotFound,
    PermissionDenied,
    StoreError,
    TooManyAttempts,
    UploadRejected,
)
from edge_agent.pacs import dicomweb
from edge_agent.pacs import service as pacs
from edge_agent.reporting import state as report_state
from edge_agent.settings import Settings
from kiosk_ui import auth, pacs_link, referral, throttle, wording
from kiosk_ui.i18n import LANGUAGES, catalog, decimal, percent, person_name, pick_language, upper
from kiosk_ui.model_info import drawn_heatmaps, performance_lines
from kiosk_ui.records import BIRADS, DENSITIES, STATUSES, TRIAGES, AuditQuery, FeedbackInput, ReportInput, Session, WorklistQuery
from kiosk_ui.services import KioskServices
from kiosk_ui.workflow import BIOPSY_RESULTS, RECOMMENDATIONS, WORKFLOW_STATES

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "kiosk_session"
PRECSRF_COOKIE = "kiosk_precsrf"
LANG_COOKIE = "kiosk_lang"
FORM_MAX_BYTES = 64 * 1024  # every form but the upload is a few fields
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; font-src 'self'; "
       "object-src 'none'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'")


# -- request helpers ---------------------------------------------------------------------------
def _services(request: Request) -> KioskServices:
    return request.app.state.services


def _q(request: Request, name: str) -> str:
    """A query parameter as text ("" when absent), capped so a huge one cannot cost anything."""
    return str(request.query_params.get(name, ""))[:512]


def _source(request: Request) -> str:
    """The client address sign-in failures are counted against."""
    return request.client.host if request.client else ""


def printable(text: str) -> str:
    """``text`` safe for one log line: every unprintable character (newline, NUL, U+2028...) percent-encoded as UTF-8."""
    return "".join(c if c.isprintable() else quote(c, safe="") for c in text)


def _lang(request: Request) -> str:
    return pick_language(request.cookies.get(LANG_COOKIE), _services(request).settings.kiosk_language)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _session(request: Request, permission: str | None = None, *, touch: bool = True) -> Session:
    s = _services(request).session(request.cookies.get(SESSION_COOKIE), touch=touch)
    if permission and not auth.may(s.user.role, permission):
        raise PermissionDenied("error.forbidden", f"role {s.user.role} may not {permission}")
    return s


async def _form(request: Request) -> dict[str, Any]:
    form = await request.form()
    out: dict[str, Any] = {}
    for key, value in form.multi_items():
        out.setdefault(key, []).append(value)
    return out


def _field(form: dict[str, Any], name: str, default: str = "") -> str:
    values = form.get(name) or [default]
    v = values[0]
    return v if isinstance(v, str) else default


def _check_csrf(session: Session, form: dict[str, Any]) -> None:
    if not auth.same_token(session.csrf_token, _field(form, "_csrf")):
        raise CsrfError("error.csrf", "missing or forged CSRF token")


def _page(request: Request, name: str, session: Session | None, status_code: int = 200, cookies: list[Cookie] | None = None,
          headers: dict[str, str] | None = None, **context: Any) -> Template:
    svc = _services(request)
    lang = _lang(request)
    ctx = {
        "t": catalog(lang), "lang": lang, "languages": LANGUAGES, "session": session, "user": session.user if session else None,
        "csrf": session.csrf_token if session else "", "bar": svc.status_bar(), "settings": svc.settings, "path": request.url.path,
        "query_string": request.url.query, "idle_s": int(svc.settings.kiosk_idle_timeout_s), "may": (lambda p: bool(session and auth.may(session.user.role, p))),
        **context,
    }
    return Template(name, context=ctx, status_code=status_code, cookies=cookies, headers={"Cache-Control": "no-store", **(headers or {})})


# -- sign-in ---------------------------------------------------------------------------------------
@get("/")
async def index(request: Request) -> Redirect:
    return Redirect("/worklist")


@get("/login")
async def login_form(request: Request) -> Template:
    m = _q(request, "m")
    token = auth.new_token()
    message = m if m in {"auth.expired", "auth.signed_out", "auth.required"} else ""
    first_start = _services(request).user_count() == 0
    cookie = Cookie(key=PRECSRF_COOKIE, value=token, httponly=True, samesite="strict", secure=_secure(request), path="/login")
    return _page(request, "login.html", None, cookies=[cookie], precsrf=token, message=message, first_start=first_start)


@post("/login", request_max_body_size=FORM_MAX_BYTES)
async def login(request: Request) -> Response:
    form = await _form(request)
    if not auth.same_token(request.cookies.get(PRECSRF_COOKIE), _field(form, "_csrf")):
        raise CsrfError("error.csrf", "sign-in form without its token")
    token, _ = _services(request).sign_in(_field(form, "username")[:64], _field(form, "password")[:1024], _source(request))
    cookie = Cookie(key=SESSION_COOKIE, value=token, httponly=True, samesite="strict", secure=_secure(request), path="/")
    return Redirect("/worklist", cookies=[cookie, Cookie(key=PRECSRF_COOKIE, value="", max_age=0, path="/login")], status_code=303)


@post("/logout", request_max_body_size=FORM_MAX_BYTES)
async def logout(request: Request) -> Response:
    form = await _form(request)
    try:
        session = _session(request)
    except AuthError:
        return Redirect("/login?m=auth.expired", status_code=303)
    _check_csrf(session, form)
    _services(request).sign_out(session)
    reason = "auth.expired" if _field(form, "reason") == "idle" else "auth.signed_out"
    return Redirect(f"/login?m={reason}", cookies=[Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/")], status_code=303)


@get("/lang/{code:str}")
async def set_language(request: Request, code: FromPath[str]) -> Redirect:
    next = _q(request, "next") or "/worklist"
    target = next if next.startswith("/") and not next.startswith("//") and "\\" not in next else "/worklist"
    if code not in LANGUAGES:
        code = "tr"
    return Redirect(target, cookies=[Cookie(key=LANG_COOKIE, value=code, samesite="strict", secure=_secure(request), max_age=365 * 86400, path="/")])


# -- worklist and study ------------------------------------------------------------------------
@get("/worklist")
async def worklist(request: Request) -> Template:
    q, status, triage, days, flow = (_q(request, k) for k in ("q", "status", "triage", "days", "flow"))
    session = _session(request, "worklist")
    svc = _services(request)
    query = WorklistQuery(q=q[:100], status=status if status in STATUSES else "", triage=triage if triage in TRIAGES else "",
                          days=int(days) if days.isdigit() and int(days) <= 36500 else None, flow=flow if flow in WORKFLOW_STATES else "")
    rows = svc.worklist(query)
    if query.q.strip():  # whom someone looked for is itself PHI access: the term goes to the trail
        svc.audit(session.user.username, "search_worklist", None, f"{query.q.strip()!r}: {len(rows)} row(s)")
    else:
        svc.audit(session.user.username, "view_worklist", None, f"{len(rows)} row(s)")
    return _page(request, "worklist.html", session, rows=rows, query=query, statuses=STATUSES, triages=TRIAGES, flows=WORKFLOW_STATES,
                 today=svc.today(), none_unseen=_q(request, "m") == "none_unseen",
                 overdue=sum(r.overdue for r in svc.recalls()) if auth.may(session.user.role, "study") else 0)


@get("/worklist/next")
async def next_unseen(request: Request) -> Redirect:
    """'Next unseen': the highest-ranked study nobody has opened yet, or back to the worklist saying there is none."""
    _session(request, "study")
    uid = _services(request).next_unseen()
    return Redirect(f"/studies/{quote(uid)}" if uid else "/worklist?m=none_unseen")


@get("/studies/{uid:str}")
async def study(request: Request, uid: FromPath[str]) -> Template:
    saved = _q(request, "saved")
    session = _session(request, "study")
    svc = _services(request)
    svc.mark_seen(session.user, uid)
    view = svc.study(uid)
    svc.audit(session.user.username, "view_study", uid, "")
    model = svc.model_info(view.model_version, _lang(request))
    return _page(request, "study.html", session, study=view, model=model, overlays=drawn_heatmaps(view, model), birads=BIRADS,
                 densities=DENSITIES, recommendations=RECOMMENDATIONS, biopsy_results=BIOPSY_RESULTS,
                 saved=saved if saved in ("feedback", "report", "closed", "reopened") else "",
                 deliveries=report_state.kiosk_lines(svc.db, uid, _lang(request)), deliveries_title=report_state.KIOSK_TITLE.get(_lang(request), ""),
                 exports=pacs_link.export_lines(pacs.export_states(svc.db, uid), catalog(_lang(request))))


@get("/studies/{uid:str}/state.json")
async def study_state(request: Request, uid: FromPath[str]) -> dict[str, str]:
    _session(request, "study", touch=False)
    return {"status": _services(request).study_state(uid)}


@get("/statusbar.json")
async def statusbar(request: Request) -> dict[str, Any]:
    _session(request, touch=False)
    bar = _services(request).status_bar()
    t = catalog(_lang(request))
    return {"online": bar.online, "label": t("bar.online") if bar.online else t("bar.offline"), "outbox": bar.outbox_waiting,
            "free": clinic_time.fmt_bytes(bar.free_disk_bytes, t.lang)}


@get("/studies/{uid:str}/views/{sop:str}/image.png")
async def view_image(request: Request, uid: FromPath[str], sop: FromPath[str]) -> Response:
    session = _session(request, "study")
    png = _services(request).view_png(uid, sop, 1536 if _q(request, "size") == "1536" else 768)  # 1536: the full-screen viewer
    _services(request).audit(session.user.username, "view_image", uid, f"{sop} image")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@get("/studies/{uid:str}/views/{sop:str}/heatmap.png")
async def view_heatmap(request: Request, uid: FromPath[str], sop: FromPath[str]) -> Response:
    session = _session(request, "study")
    png = _services(request).heatmap_png(uid, sop)
    _services(request).audit(session.user.username, "view_image", uid, f"{sop} heatmap")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@post("/studies/{uid:str}/feedback", request_max_body_size=FORM_MAX_BYTES)
async def feedback(request: Request, uid: FromPath[str]) -> Response:
    session = _session(request, "feedback")
    form = await _form(request)
    _check_csrf(session, form)
    agrees, birads, density = _field(form, "agrees"), _field(form, "birads"), _field(form, "density")
    if agrees not in ("yes", "no"):
        raise KioskError("error.feedback_choose", "neither agreement nor disagreement was chosen")
    source = None
    if birads or density:
        if not (birads.isdigit() and int(birads) in BIRADS) or density not in DENSITIES:
            raise KioskError("error.feedback_invalid", "BI-RADS 0-6 and density A-D go together")
        # A radiologist's account enters its own reading; anyone else only copies a radiology report, and says so.
        source = "radiologist" if session.user.role == "radiologist" else ("radiology_report" if _field(form, "from_report") == "yes" else None)
        if source is None:
            raise KioskError("error.categories_source", "BI-RADS and density from a non-radiologist without 'from the radiology report'")
    fb = FeedbackInput(agrees=agrees == "yes", notes=_field(form, "notes")[:2000], birads=int(birads) if source else None,
                       density=density if source else None, category_source=source)
    _services(request).record_feedback(session.user, uid, fb)
    return Redirect(f"/studies/{quote(uid)}?saved=feedback#feedback", status_code=303)


@post("/studies/{uid:str}/report", request_max_body_size=FORM_MAX_BYTES)
async def radiology_report(request: Request, uid: FromPath[str]) -> Response:
    """The radiologist's report: typed by a radiologist, or copied from the paper report (stored as such, with who)."""
    session = _session(request, "report")
    form = await _form(request)
    _check_csrf(session, form)
    birads, density, rec, biopsy = (_field(form, k) for k in ("birads", "density", "recommendation", "biopsy_result"))
    if not (birads.isdigit() and int(birads) in BIRADS) or density not in DENSITIES or rec not in RECOMMENDATIONS:
        raise KioskError("error.report_invalid", "report without BI-RADS, density or recommendation")
    if session.user.role != "radiologist" and _field(form, "from_report") != "yes":
        raise KioskError("error.report_source", "a non-radiologist entered a report without saying it is copied from the paper report")
    rep = ReportInput(int(birads), density, rec, biopsy if biopsy in BIOPSY_RESULTS else None, _field(form, "follow_up_day")[:10],
                      _field(form, "notes")[:2000])
    _services(request).record_report(session.user, uid, rep)
    return Redirect(f"/studies/{quote(uid)}?saved=report#report", status_code=303)


@post("/studies/{uid:str}/close", request_max_body_size=FORM_MAX_BYTES)
async def close_study(request: Request, uid: FromPath[str]) -> Response:
    session = _session(request, "feedback")
    form = await _form(request)
    _check_csrf(session, form)
    closed = _field(form, "closed") != "no"
    _services(request).close_study(session.user, uid, closed)
    return Redirect(f"/studies/{quote(uid)}?saved={'closed' if closed else 'reopened'}#workflow", status_code=303)


@get("/recalls")
async def recalls_page(request: Request) -> Template:
    """Who must come back when, and who is overdue: from each woman's latest radiology report."""
    session = _session(request, "study")
    svc = _services(request)
    rows = svc.recalls()
    svc.audit(session.user.username, "view_recalls", None, f"{len(rows)} row(s)")
    return _page(request, "recalls.html", session, rows=rows, overdue=sum(r.overdue for r in rows))


@get("/studies/{uid:str}/referral.pdf")
async def referral_pdf(request: Request, uid: FromPath[str]) -> Response:
    print = _q(request, "print")  # noqa: A001
    session = _session(request, "referral")
    svc = _services(request)
    view = svc.study(uid)
    t = catalog(_lang(request))
    ctx = referral.ReferralContext(svc.settings.box_name, svc.settings.box_city, session.user.full_name, svc.clock(), svc.settings.timezone)
    model = svc.model_info(view.model_version, t.lang)

    def thumb(sop: str, heatmap: bool) -> bytes | None:
        try:
            return svc.composite_png(uid, sop, heatmap=heatmap)
        except (NotFound, StoreError, IntegrityError):
            return None

    pdf = referral.build(view, model, t, ctx, thumb)
    svc.audit(session.user.username, "print_referral" if print else "export_referral", uid, f"{len(pdf)} bytes")
    svc.mark_referred(session.user, uid)
    pacs_link.refer(svc.ingest.queue, svc.settings, uid, session.user.username)  # the care team's PACS gets the images (once)
    disposition = "inline" if print else "attachment"
    name = f"sevk-{view.pseudonym[:12]}.pdf"
    return Response(pdf, media_type="application/pdf", headers={"Content-Disposition": f'{disposition}; filename="{name}"', "Cache-Control": "no-store"})


# -- schedule screening (modality worklist) ----------------------------------------------------------
SCHEDULE_FIELDS = ("patient_id", "surname", "given", "birth_date", "accession", "scheduled")


def _schedule_page(request: Request, session: Session, form: pacs_link.ScheduleForm, problems: list[str], status_code: int = 200,
                   done: bool = False) -> Template:
    svc = _services(request)
    entries = pacs.worklist_today(svc.ingest.worklist)
    svc.audit(session.user.username, "view_schedule", None, f"{len(entries)} entr(ies)")
    return _page(request, "schedule.html", session, status_code=status_code, form=form, problems=problems, entries=entries, done=done,
                 today=svc.ingest.worklist.today())


@get("/schedule")
async def schedule_form(request: Request) -> Template:
    session = _session(request, "schedule")
    return _schedule_page(request, session, pacs_link.ScheduleForm(), [], done=_q(request, "done") == "1")


@post("/schedule", request_max_body_size=FORM_MAX_BYTES)
async def schedule(request: Request) -> Response:
    session = _session(request, "schedule")
    form = await _form(request)
    _check_csrf(session, form)
    entry = pacs_link.ScheduleForm(**{k: _field(form, k)[:64] for k in SCHEDULE_FIELDS})
    problems = pacs_link.schedule(_services(request).ingest.worklist, entry, session.user.username)
    if problems:
        return _schedule_page(request, session, entry, problems, status_code=400)
    return Redirect("/schedule?done=1", status_code=303)


def _dicomweb_user(request: Request) -> str:
    """DICOMweb's ``authorize``: the kiosk's own session cookie and the 'study' permission; 401/403 otherwise (never a redirect)."""
    return _session(request, "study").user.username


# -- upload and audit ------------------------------------------------------------------------------
@get("/upload")
async def upload_form(request: Request) -> Template:
    return _page(request, "upload.html", _session(request, "upload"), outcomes=None)


@post("/upload")
async def upload(request: Request) -> Template:
    session = _session(request, "upload")
    svc = _services(request)
    form = await _form(request)
    _check_csrf(session, form)
    files: list[tuple[str, bytes]] = []
    for item in form.get("files", []):
        if isinstance(item, UploadFile):
            files.append((item.filename or "", await item.read()))
            await item.close()
    files = [f for f in files if f[0] or f[1]]
    if not files:
        raise UploadRejected("upload.none", "no files in the upload")
    if len(files) > svc.settings.kiosk_upload_max_files:
        raise UploadRejected("upload.too_many", f"more than {svc.settings.kiosk_upload_max_files} files")
    outcomes = svc.upload(session.user, files)
    return _page(request, "upload.html", session, outcomes=outcomes)


@get("/audit")
async def audit_page(request: Request) -> Template:
    session = _session(request, "audit")
    query = AuditQuery.parse({k: _q(request, k) for k in ("user", "action", "study", "from", "to", "page")})
    return _page(request, "audit.html", session, audit=_services(request).audit_page(query))


@get("/users")
async def users_page(request: Request) -> Template:
    session = _session(request, "users")
    return _page(request, "users.html", session, users=_services(request).users(), roles=auth.ROLES, done=_q(request, "done"))


@post("/users", request_max_body_size=FORM_MAX_BYTES)
async def add_user(request: Request) -> Response:
    session = _session(request, "users")
    form = await _form(request)
    _check_csrf(session, form)
    svc = _services(request)
    user = svc.add_user(_field(form, "username")[:64], _field(form, "password")[:1024], _field(form, "role"), _field(form, "full_name")[:120],
                        by=session.user.username)
    return Redirect(f"/users?done=added&u={quote(user.username)}", status_code=303)


@post("/users/{name:str}/unlock", request_max_body_size=FORM_MAX_BYTES)
async def unlock_user(request: Request, name: FromPath[str]) -> Response:
    session = _session(request, "users")
    form = await _form(request)
    _check_csrf(session, form)
    _services(request).unlock(name, by=session.user.username)
    return Redirect("/users?done=unlocked", status_code=303)


# -- errors ------------------------------------------------------------------------------------------
def _wants_page(request: Request) -> bool:
    p = request.url.path
    return not (p.endswith(".png") or p.endswith(".json") or p.startswith("/dicomweb/"))


def on_kiosk_error(request: Request, exc: KioskError) -> Response:
    if isinstance(exc, AuthError) and request.method == "GET" and _wants_page(request):
        return Redirect(f"/login?m={exc.message_key if exc.message_key in {'auth.expired', 'auth.required'} else 'auth.required'}",
                        cookies=[Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/")])
    if isinstance(exc, AuthError) and request.url.path == "/login":
        token = auth.new_token()
        cookie = Cookie(key=PRECSRF_COOKIE, value=token, httponly=True, samesite="strict", secure=_secure(request), path="/login")
        wait = {"Retry-After": throttle.retry_after_header(exc.retry_after_s)} if isinstance(exc, TooManyAttempts) else None
        return _page(request, "login.html", None, status_code=exc.status_code, cookies=[cookie], headers=wait, precsrf=token,
                     message=exc.message_key, first_start=False)
    if not _wants_page(request):
        return Response({"error": catalog(_lang(request))(exc.message_key)}, status_code=exc.status_code)
    return _error_page(request, exc.message_key, exc.status_code)


def on_http_error(request: Request, exc: HTTPException) -> Response:
    key = {404: "error.not_found", 413: "error.too_large", 405: "error.method"}.get(exc.status_code, "error.bad_request")
    if exc.status_code == 413 and request.url.path == "/upload":
        key = "upload.request_too_large"
    if not _wants_page(request):
        return Response({"error": catalog(_lang(request))(key)}, status_code=exc.status_code)
    return _error_page(request, key, exc.status_code)


def on_internal_error(request: Request, exc: Exception) -> Response:
    log.exception("kiosk request %s %s failed", request.method, printable(request.url.path), exc_info=exc)
    key = "error.storage_full" if type(exc).__name__ == "StorageFull" else "error.internal"
    return _error_page(request, key, 500)


def _error_page(request: Request, key: str, status_code: int) -> Response:
    try:
        session: Session | None = _session(request)
    except Exception:
        session = None
    return _page(request, "error.html", session, status_code=status_code, message=key)


def _refuse_control_characters(request: Request) -> None:
    """No page, study or static file has a control character in its path: 404 before a handler (or the file system) sees it.

    A NUL made the static file server fail with 500, and a newline written raw to the log forged a log line.
    """
    path = request.url.path
    if not path.isprintable():
        log.info("kiosk refused a path with control characters: %s", printable(path))
        raise NotFoundException()


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    return response


# -- template helpers --------------------------------------------------------------------------------
def fmt_date(yyyymmdd: str) -> str:
    return f"{yyyymmdd[6:]}.{yyyymmdd[4:6]}.{yyyymmdd[:4]}" if len(yyyymmdd) == 8 and yyyymmdd.isdigit() else (yyyymmdd or "—")


def fmt_score(x: float | None, lang: str = "tr") -> str:
    """A suspicion score as the reader writes numbers ('0,43' in Turkish)."""
    return decimal(x, lang)


def jinja_environment(tz: str = "Europe/Istanbul") -> Environment:
    """The templates' environment; every time they show is in the clinic's zone ``tz`` (settings.timezone)."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False)
    env.globals.update(fmt_time=lambda ts: clinic_time.fmt_time(ts, tz), fmt_day=lambda ts: clinic_time.fmt_day(ts, tz),
                       fmt_date=fmt_date, fmt_bytes=clinic_time.fmt_bytes, fmt_score=fmt_score, person_name=person_name, upper=upper, quote=quote,
                       percent=percent, performance_lines=performance_lines, view_name=wording.view_name, problem_text=wording.problem_text,
                       problem_summary=wording.problem_summary, categories_text=wording.categories_text)
    return env


def create_app(settings: Settings, services: KioskServices, *, debug: bool = False) -> Litestar:
    return Litestar(
        route_handlers=[index, login_form, login, logout, set_language, worklist, study, study_state, statusbar, view_image, view_heatmap,
                        feedback, radiology_report, close_study, recalls_page, next_unseen, referral_pdf, upload_form, upload, audit_page, users_page, add_user, unlock_user,
                        schedule_form, schedule, dicomweb.router(_dicomweb_user, services.ingest),
                        create_static_files_router("/static", directories=[HERE / "static"], cache_control=None)],
        template_config=TemplateConfig(engine=JinjaTemplateEngine.from_environment(jinja_environment(settings.timezone))),
        exception_handlers={KioskError: on_kiosk_error, HTTPException: on_http_error, Exception: on_internal_error},
        before_request=_refuse_control_characters,
        after_request=_security_headers,
        openapi_config=None,  # no /schema pages: the kiosk has no public API to describe
        request_max_body_size=settings.kiosk_upload_max_bytes,
        state=_state(services),
        debug=debug,
        logging_config=None,  # the box configures logging once, in the CLI
    )


def _state(services: KioskServices):
    from litestar.datastructures import State

    return State({"services": services})
