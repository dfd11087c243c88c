"""The A4 referral letter to the radiologist: patient, the AI pre-assessment with its limits, the referring doctor's notes, the views.

Addressed to the radiologist who reads the images; instructions meant for the
family doctor stay on the kiosk's screen. The AI section is headed as a
pre-assessment, never as findings, and the disclaimer stands beside the
result at body size (10 pt). An incomplete study says so at the top, with no
category or score. BI-RADS and density are printed only when a radiologist
entered them or they were copied from a radiology report, labelled with who.

Built with fpdf2 and the DejaVu Sans font shipped in ``static/fonts`` (it has
every Turkish glyph: ç ğ ı İ ö ş ü). The QR code carries only the
pseudonymous reference (``MAMMO:<pseudonym>:<study UID>``), never the name
or the national ID, so a lost letter's code identifies no one by itself.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import qrcode
from fpdf import FPDF

from edge_agent.clinic_time import fmt_time
from kiosk_ui.i18n import Catalog, decimal, person_name
from kiosk_ui.model_info import ModelInfo, drawn_heatmaps, performance_lines
from kiosk_ui.records import StudyView
from kiosk_ui.wording import categories_text, problem_text, report_categories_text, view_name

FONTS = Path(__file__).resolve().parent / "static" / "fonts"
BODY_PT = 10  # nothing the radiologist must read is printed smaller
INCOMPLETE_RGB = (106, 61, 154)


@dataclass(frozen=True)
class ReferralContext:
    box_name: str
    box_city: str
    doctor: str
    now: float
    tz: str = "Europe/Istanbul"  # settings.timezone: the letter's date is the clinic's


def reference(view: StudyView) -> str:
    return f"MAMMO:{view.pseudonym}:{view.study_uid}"


def qr_png(text: str) -> bytes:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=6, border=2)
    qr.add_data(text)
    qr.make(fit=True)
    buf = io.BytesIO()
    qr.make_image(fill_color="black", back_color="white").save(buf, format="PNG")
    return buf.getvalue()


def build(view: StudyView, model: ModelInfo, t: Catalog, ctx: ReferralContext,
          thumbnail: Callable[[str, bool], bytes | None]) -> bytes:
    """The PDF bytes. ``thumbnail(sop_uid, heatmap)`` gives a PNG of a view, with its heatmap when asked (None: not drawable)."""
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
    pdf.set_font("DejaVu", "", BODY_PT)
    pdf.cell(w - 40, 6, f"{ctx.box_name}, {ctx.box_city}", new_x="LMARGIN", new_y="NEXT")
    when = fmt_time(ctx.now, ctx.tz)
    pdf.cell(w - 40, 6, f"{t('referral.date')}: {when}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", 9)
    pdf.multi_cell(w - 40, 4, t("referral.qr_note"), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.image(io.BytesIO(qr_png(reference(view))), x=pdf.w - pdf.r_margin - 34, y=10, w=34, h=34)
    pdf.set_y(46)

    if view.status == "incomplete":
        _incomplete_banner(pdf, view, t, w)

    pdf.set_font("DejaVu", "", BODY_PT)
    pdf.multi_cell(w, 5, t("referral.salutation"), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.multi_cell(w, 5, t("referral.body"), new_x="LMARGIN", new_y="NEXT", align="L")

    _heading(pdf, t("referral.patient"))
    ident = view.identity
    _table(pdf, [
        (t("study.patient_name"), person_name(ident.name, t.lang) or "—"),
        (t("study.patient_id"), ident.patient_id or "—"),
        (t("study.birth_date"), _date(ident.birth_date)),
        (t("study.reference"), view.pseudonym),
    ], w)

    _heading(pdf, t("referral.ai_heading") + (f" ({t('model.experimental_lower')})" if model.experimental else ""))
    _ai_section(pdf, view, model, t, w)

    _heading(pdf, t("referral.doctor_heading"))
    _doctor_section(pdf, view, t, w, ctx.doctor)

    _heading(pdf, t("referral.images"))
    _thumbnails(pdf, view, drawn_heatmaps(view, model), thumbnail, w, t)
    pdf.set_font("DejaVu", "", BODY_PT)
    if drawn_heatmaps(view, model):
        pdf.multi_cell(w, 5, t("referral.legend", threshold=decimal(model.review, t.lang)), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.ln(6)
    pdf.cell(w / 2, 6, f"{t('referral.referring')}: {ctx.doctor}")
    pdf.cell(w / 2, 6, f"{t('referral.signature')}: ____________________", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _incomplete_banner(pdf: FPDF, view: StudyView, t: Catalog, w: float) -> None:
    pdf.set_draw_color(*INCOMPLETE_RGB)
    pdf.set_text_color(*INCOMPLETE_RGB)
    pdf.set_line_width(0.8)
    pdf.set_font("DejaVu", "B", 13)
    lines = [t("referral.incomplete_title")] + [problem_text(p, t, for_referral=True) for p in view.problems]
    y0 = pdf.get_y()
    pdf.multi_cell(w, 7, lines[0], new_x="LMARGIN", new_y="NEXT", padding=(2, 3, 0, 3), align="L")
    pdf.set_font("DejaVu", "B", BODY_PT + 1)
    for line in lines[1:]:
        pdf.multi_cell(w, 6, "• " + line, new_x="LMARGIN", new_y="NEXT", padding=(0, 3, 0, 3), align="L")
    pdf.set_font("DejaVu", "", BODY_PT)
    pdf.multi_cell(w, 5, t("referral.incomplete_body"), new_x="LMARGIN", new_y="NEXT", padding=(0, 3, 2, 3), align="L")
    pdf.rect(pdf.l_margin, y0, w, pdf.get_y() - y0)
    pdf.set_text_color(0, 0, 0)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_line_width(0.2)
    pdf.ln(3)


def _ai_section(pdf: FPDF, view: StudyView, model: ModelInfo, t: Catalog, w: float) -> None:
    """The result on the left, the disclaimer beside it on the right (same size), then what the model has been measured to do."""
    left, gap = w * 0.55, 4
    y0 = pdf.get_y()
    if view.has_result:
        pdf.set_font("DejaVu", "B", 12)
        pdf.multi_cell(left, 6, t(f"triage.{view.triage}"), new_x="LMARGIN", new_y="NEXT", align="L")
        pdf.set_font("DejaVu", "", BODY_PT)
        pdf.multi_cell(left, 5, t(f"referral.triage.{view.triage}"), new_x="LMARGIN", new_y="NEXT", align="L")
        lang = t.lang
        rows = [
            t("referral.score", score=decimal(view.study_score, lang)),
            t("referral.breasts", right=decimal(view.breast_scores.get("R"), lang), left=decimal(view.breast_scores.get("L"), lang)),
        ]
        if model.review is not None:
            rows.append(t("study.thresholds") + ": " + t("study.thresholds_value", review=decimal(model.review, lang),
                                                         priority=decimal(model.priority, lang)))
        rows.append(f"{t('study.model')}: {view.model_version or '—'}")
        for r in rows:
            pdf.multi_cell(left, 5, r, new_x="LMARGIN", new_y="NEXT", align="L")
    else:
        pdf.set_font("DejaVu", "B", 12)
        key = "referral.no_result_incomplete" if view.status == "incomplete" else "referral.no_result"
        pdf.multi_cell(left, 6, t(key, status=t(f"status.{view.status}")), new_x="LMARGIN", new_y="NEXT", align="L")
    y_left = pdf.get_y()
    pdf.set_xy(pdf.l_margin + left + gap, y0)
    pdf.set_font("DejaVu", "", BODY_PT)
    disclaimer = t("referral.disclaimer") + (" " + t("referral.disclaimer_experimental") if model.experimental else "")
    pdf.multi_cell(w - left - gap, 5, disclaimer, border=1, new_x="LMARGIN", new_y="NEXT", padding=2, align="L")
    pdf.set_y(max(y_left, pdf.get_y()) + 2)
    if view.has_result:
        pdf.set_font("DejaVu", "B", BODY_PT)
        pdf.cell(w, 5, t("model.heading"), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", BODY_PT)
        for line in performance_lines(model, t):
            pdf.multi_cell(w, 5, "• " + line, new_x="LMARGIN", new_y="NEXT", align="L")


def _doctor_section(pdf: FPDF, view: StudyView, t: Catalog, w: float, doctor: str) -> None:
    pdf.set_font("DejaVu", "", BODY_PT)
    notes = view.doctor_notes()
    pdf.multi_cell(w, 5, t("referral.notes", notes=notes.notes if notes else "—"), new_x="LMARGIN", new_y="NEXT", align="L")
    report, categories = view.report, view.categories()
    if report is not None:  # the radiologist's report (kiosk_radiology_reports) outranks categories given with feedback
        pdf.multi_cell(w, 5, report_categories_text(report, t), new_x="LMARGIN", new_y="NEXT", align="L")
    elif categories is not None:
        pdf.multi_cell(w, 5, categories_text(categories, t), new_x="LMARGIN", new_y="NEXT", align="L")


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(1)
    pdf.set_font("DejaVu", "B", 12)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")


def _table(pdf: FPDF, rows: Sequence[tuple[str, str]], w: float) -> None:
    for label, value in rows:
        pdf.set_font("DejaVu", "", BODY_PT)
        pdf.cell(50, 6, label)
        pdf.set_font("DejaVu", "B", BODY_PT)
        pdf.cell(w - 50, 6, value, new_x="LMARGIN", new_y="NEXT")


def _thumbnails(pdf: FPDF, view: StudyView, overlays: frozenset[str], thumbnail: Callable[[str, bool], bytes | None],
                w: float, t: Catalog) -> None:
    shown = view.views[:4]
    if not shown:
        pdf.set_font("DejaVu", "", BODY_PT)
        pdf.cell(w, 6, "—", new_x="LMARGIN", new_y="NEXT")
        return
    cell = min((w - 3 * 4) / 4, 38.0)  # 38 mm keeps a full letter on one A4 page
    if pdf.get_y() + cell + 8 > pdf.h - pdf.b_margin:
        pdf.add_page()
    y0 = pdf.get_y()
    for i, v in enumerate(shown):
        x = pdf.l_margin + i * (w - cell) / 3
        png = thumbnail(v.sop_uid, v.sop_uid in overlays)
        if png:
            pdf.image(io.BytesIO(png), x=x, y=y0, w=cell, h=cell, keep_aspect_ratio=True)
        pdf.set_xy(x, y0 + cell + 1)
        pdf.set_font("DejaVu", "", 9)
        score = ""
        if view.has_result and v.suspicion is not None:
            score = f" · {t('referral.view_score')} {decimal(v.suspicion, t.lang)}"
        pdf.cell(cell, 4, f"{view_name(v.laterality, v.view, t)}{score}", align="C")
    pdf.set_xy(pdf.l_margin, y0 + cell + 7)


def _date(yyyymmdd: str) -> str:
    if len(yyyymmdd) == 8 and yyyymmdd.isdigit():
        return f"{yyyymmdd[6:]}.{yyyymmdd[4:6]}.{yyyymmdd[:4]}"
    return yyyymmdd or "—"
