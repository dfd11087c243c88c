"""The clinic's work on a study, as plain rules: its workflow state, and when a woman must come back.

A study moves ``new`` → ``seen`` (a clinician opened it) → ``assessed`` (the
doctor recorded agreement or disagreement) → ``referred`` (the referral was
printed or saved) → ``report_received`` (the radiologist's report is
entered) → ``closed`` (the doctor closed it). Each step is a fact the box
keeps (kiosk_workflow, kiosk_feedback, kiosk_radiology_reports); the state
is the furthest fact reached, so a report entered before the referral was
printed still reads "report received". One rule, in SQL (:data:`WORKFLOW_SQL`),
so the worklist can filter on it without loading every study.
"""

from __future__ import annotations

import datetime as dt

WORKFLOW_STATES = ("new", "seen", "assessed", "referred", "report_received", "closed")

# The radiologist's recommendation and how long until the woman is due back (days from the report).
# routine: the national screening interval (2 years); short_interval: 6-month control; additional imaging or a biopsy:
# within two weeks.
RECOMMENDATIONS: dict[str, int] = {"routine": 730, "short_interval": 182, "additional_imaging": 14, "biopsy": 14}
BIOPSY_RESULTS = ("malignant", "benign")
REPORT_SOURCES = ("radiologist", "radiology_report")


# The furthest step reached, over ingest_studies s LEFT JOIN kiosk_workflow w.
WORKFLOW_SQL = """CASE
    WHEN w.closed_at IS NOT NULL THEN 'closed'
    WHEN EXISTS (SELECT 1 FROM kiosk_radiology_reports rr WHERE rr.study_uid = s.study_uid) THEN 'report_received'
    WHEN w.referred_at IS NOT NULL THEN 'referred'
    WHEN EXISTS (SELECT 1 FROM kiosk_feedback f WHERE f.study_uid = s.study_uid) THEN 'assessed'
    WHEN w.seen_at IS NOT NULL THEN 'seen'
    ELSE 'new' END"""


def follow_up_due(recommendation: str, reported_on: dt.date, chosen: dt.date | None = None) -> dt.date:
    """The day the woman is due back: the date the report gives (``chosen``), else the recommendation's interval."""
    if chosen is not None:
        return chosen
    return reported_on + dt.timedelta(days=RECOMMENDATIONS[recommendation])


def is_overdue(due_at: float | None, now: float) -> bool:
    return due_at is not None and due_at < now
