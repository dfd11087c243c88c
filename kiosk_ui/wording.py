"""Sentences the study page and the referral share, built from records in the reader's language.

One place, so the screen and the printout can never word the same fact
two ways (an incomplete study, where a BI-RADS category came from).
"""

from __future__ import annotations

from kiosk_ui.i18n import Catalog
from kiosk_ui.records import FeedbackEntry, Problem, RadiologyReport


def view_name(laterality: str, view: str, t: Catalog) -> str:
    """'Sol MLO', 'Sağ CC' (the side in words, the view by its standard abbreviation)."""
    side = t(f"side.{laterality}") if laterality in ("L", "R") else t("side.unknown")
    return f"{side} {view if view and view != '?' else t('view.unknown')}"


def problem_text(p: Problem, t: Catalog, *, for_referral: bool = False) -> str:
    """What is wrong and, on the screen, what to do: 'Sol MLO eksik, çekimi tamamlayın.' (the letter states only the fact)."""
    suffix = "_referral" if for_referral else ""
    if p.kind in ("missing", "unreadable"):
        return t(f"incomplete.{p.kind}{suffix}", view=view_name(p.laterality, p.view, t))
    return t(f"incomplete.other{suffix}")


def problem_summary(problems: tuple[Problem, ...], t: Catalog) -> str:
    """One line for a worklist cell: 'Sol MLO eksik' / 'Sağ CC okunamadı'."""
    parts = [t(f"incomplete.short_{p.kind}", view=view_name(p.laterality, p.view, t)) for p in problems if p.kind != "other"]
    return ", ".join(parts) or t("incomplete.short_other")


def categories_text(entry: FeedbackEntry, t: Catalog) -> str:
    """'BI-RADS 4, yoğunluk C: radyolog Dr. İsmail Kaya' or '... radyoloji raporundan girildi (Dr. Zeynep Işık)'."""
    key = "feedback.source_radiologist" if entry.category_source == "radiologist" else "feedback.source_report"
    return t(key, birads=str(entry.birads), density=str(entry.density), who=entry.full_name or entry.username)


def report_categories_text(report: RadiologyReport, t: Catalog) -> str:
    """The radiologist's categories from a radiology report entry, worded as :func:`categories_text` words them."""
    key = "feedback.source_radiologist" if report.source == "radiologist" else "feedback.source_report"
    return t(key, birads=str(report.birads), density=report.density, who=report.full_name or report.entered_by)
