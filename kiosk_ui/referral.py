"""The A4 referral letter: patient, findings, the four views with their heatmaps, and a QR code of the study reference.

Built with fpdf2 and the DejaVu Sans font shipped in ``static/fonts`` (it has
every Turkish glyph: ç ğ ı İ ö ş ü). The QR code carries only the
pseudonymous reference (``MAMMO:<pseudonym>:<study UID>``), never the name
or the national ID, so a lost letter's code identifies no one by itself.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import qrcode
from fpdf import FPDF

from kiosk_ui.i18n import Catalog, person_name
from kiosk_ui.records import StudyView

FONTS = Path(__file__).resolve().parent / "static" / "fonts"


@dataclass(frozen=True)
class ReferralContext:
    box_name: str
    box_city: str
    doctor: str
    now: float


def reference(view: StudyView) -> str:
    return f"MAMMO:{view.pseudonym}:{view.study_uid}"


def qr_png(text: str) -> bytes:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=6, border=2)
    qr.add_data(text)
    qr.make(fit=True)
    buf = io.BytesIO()
    qr.make_image(fill_color="black", back_color="white").save(buf, format="PNG")
    return buf.getvalue()


def build(view: StudyView, t: Catalog, ctx: ReferralContext, thumbnail: Callable[[str], bytes | None]) -> bytes:
    """The PDF bytes. ``thumbnail(sop_uid)`` gives a PNG of a view with its heatmap (or None when it cannot be drawn)."""
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_creator("MammoAI-TR Edge")
    pdf.set_title(t("referral.title"))
    pdf.add_font("DejaVu", "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    w = pdf.w - pdf.l_margin - pdf.r_margin

    pdf.set_font("DejaVu", "B", 16)
    pdf.cell(w - 40, 9, t("referral.title"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 10)
    pdf.cell(w - 40, 6, f"{ctx.box_name}, {ctx.box_city}", new_x="LMARGIN", new_y="NEXT")
    when = dt.datetime.fromtimestamp(ctx.now).strftime("%d.%m.%Y %H:%M")
    pdf.cell(w - 40, 6, f"{t('referral.date')}: {when}", new_x="LMARGIN", new_y="NEXT")
    pdf.image(io.BytesIO(qr_png(reference(view))), x=pdf.w - pdf.r_margin - 34, y=10, w=34, h=34)
    pdf.set_y(46)

    _heading(pdf, t("referral.patient"))
    ident = view.identity
    rows = [
        (t("study.patient_name"), person_name(ident.name, t.lang) or "—"),
        (t("study.patient_id"), ident.patient_id or "—"),
        (t("study.birth_date"), _date(ident.birth_date)),
        (t("study.reference"), view.pseudonym),
    ]
    _table(pdf, rows, w)

    _heading(pdf, t("referral.findings"))
    score = "—" if view.study_score is None else f"{view.study_score:.2f}"
    _table(pdf, [
        (t("study.triage"), t(f"triage.{view.triage}") if view.triage else t(f"status.{view.status}")),
        (t("study.score"), score),
        (t("study.model"), view.model_version or "—"),
    ], w)
    if view.triage:
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(w, 5, t(f"triage.{view.triage}.explain") + " " + t(f"triage.{view.triage}.todo"), new_x="LMARGIN", new_y="NEXT", align="L")
    for reason in view.reasons:
        pdf.multi_cell(w, 5, f"• {reason}", new_x="LMARGIN", new_y="NEXT", align="L")
    if view.feedback:
        last = view.feedback[-1]
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(w, 5, t("referral.clinician", birads=str(last.birads), density=last.density, notes=last.notes or "—"),
                       new_x="LMARGIN", new_y="NEXT", align="L")

    _heading(pdf, t("referral.images"))
    _thumbnails(pdf, view, thumbnail, w, t)
    pdf.ln(4)
    pdf.set_font("DejaVu", "", 8)
    pdf.multi_cell(w, 4, t("referral.disclaimer"), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.ln(6)
    pdf.set_font("DejaVu", "", 10)
    pdf.cell(w, 6, f"{t('referral.referring')}: {ctx.doctor}", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(2)
    pdf.set_font("DejaVu", "B", 12)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")


def _table(pdf: FPDF, rows: Sequence[tuple[str, str]], w: float) -> None:
    for label, value in rows:
        pdf.set_font("DejaVu", "", 10)
        pdf.cell(50, 6, label)
        pdf.set_font("DejaVu", "B", 10)
        pdf.cell(w - 50, 6, value, new_x="LMARGIN", new_y="NEXT")


def _thumbnails(pdf: FPDF, view: StudyView, thumbnail: Callable[[str], bytes | None], w: float, t: Catalog) -> None:
    shown = view.views[:4]
    if not shown:
        pdf.set_font("DejaVu", "", 10)
        pdf.cell(w, 6, "—", new_x="LMARGIN", new_y="NEXT")
        return
    cell = (w - 3 * 4) / 4
    y0 = pdf.get_y()
    for i, v in enumerate(shown):
        x = pdf.l_margin + i * (cell + 4)
        png = thumbnail(v.sop_uid)
        if png:
            pdf.image(io.BytesIO(png), x=x, y=y0, w=cell, h=cell, keep_aspect_ratio=True)
        pdf.set_xy(x, y0 + cell + 1)
        pdf.set_font("DejaVu", "", 8)
        score = "" if v.p_abnormal is None else f" {v.p_abnormal:.2f}"
        pdf.cell(cell, 4, f"{v.label}{score}", align="C")
    pdf.set_xy(pdf.l_margin, y0 + cell + 6)


def _date(yyyymmdd: str) -> str:
    if len(yyyymmdd) == 8 and yyyymmdd.isdigit():
        return f"{yyyymmdd[6:]}.{yyyymmdd[4:6]}.{yyyymmdd[:4]}"
    return yyyymmdd or "—"
