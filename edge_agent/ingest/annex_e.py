"""DICOM PS3.15 Annex E, Table E.1-1 (release 2024b) as data, and the rule that picks one action per attribute.

The table ships beside this module (``annex_e_2024b.csv``, generated from
innolitics/dicom-standard under the MIT licence, see ``annex_e_2024b.md``).
The box applies the Basic profile with three options:

- Retain Longitudinal Temporal Information with Modified Dates: dates are
  shifted by a per-patient number of days (intervals between priors stay);
- Retain Patient Characteristics (age, sex, size, weight ...);
- Retain Device Identity (manufacturer's serial numbers, station names).

Where an option says C (clean) for something that is not a date, time or
datetime, there is no cleaner for free text here, so the Basic action
applies, which the standard always permits. Where options disagree
(a calibration date is K for device identity and C for modified dates) the
dates option wins: no real date leaves.

Compound codes depend on the attribute's Type in the IOD. For mammography:
an X alternative means remove (the attributes concerned are Type 3) except
for the Type 2 Acquisition Context Sequence (Z); Z/D becomes Z (patient ID
gets a pseudonym, which is the dummy value D allows); X/Z/U* keeps the
sequence and remaps every UID inside it.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("annex_e_2024b.csv")
DATES = "rtnLongModifDatesOpt"
PATIENT_CHARS = "rtnPatCharsOpt"
DEVICE = "rtnDevIdOpt"
# Precedence when several applied options name the same attribute.
APPLIED_OPTIONS = (DATES, PATIENT_CHARS, DEVICE)
OPTION_COLUMNS = (
    "rtnSafePrivOpt", "rtnUIDsOpt", "rtnDevIdOpt", "rtnInstIdOpt", "rtnPatCharsOpt",
    "rtnLongFullDatesOpt", "rtnLongModifDatesOpt", "cleanDescOpt", "cleanStructContOpt", "cleanGraphOpt",
)
TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
TYPE_2_IN_MG = frozenset({"AcquisitionContextSequence"})
# CID 7050 De-identification Method codes, scheme DCM.
CID_7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    DATES: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    PATIENT_CHARS: ("113108", "Retain Patient Characteristics Option"),
    DEVICE: ("113109", "Retain Device Identity Option"),
    "rtnSafePrivOpt": ("113111", "Retain Safe Private Option"),
}
_TAG_RE = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")


@dataclass(frozen=True)
class Rule:
    tag: str
    keyword: str
    name: str
    basic: str
    options: tuple[tuple[str, str], ...]

    def option(self, column: str) -> str:
        return dict(self.options).get(column, "")

    @property
    def tag_int(self) -> int | None:
        m = _TAG_RE.match(self.tag)
        return int(m.group(1) + m.group(2), 16) if m else None


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> tuple[Rule, ...]:
    with path.open(newline="", encoding="utf-8") as fh:
        return tuple(
            Rule(
                tag=row["tag"].strip().upper(), keyword=row["keyword"].strip(), name=row["name"].strip(),
                basic=row["basic_profile"].strip(),
                options=tuple((c, row[c].strip()) for c in OPTION_COLUMNS if row.get(c, "").strip()),
            )
            for row in csv.DictReader(fh)
        )


@lru_cache(maxsize=4)
def rules_by_tag(path: Path = TABLE_PATH) -> dict[int, Rule]:
    return {r.tag_int: r for r in load_table(path) if r.tag_int is not None}


def resolve(rule: Rule, vr: str, options: tuple[str, ...] = APPLIED_OPTIONS) -> str:
    """One of X, Z, D, K, U or C (C only for temporal values under the modified-dates option)."""
    for column in APPLIED_OPTIONS:
        if column not in options:
            continue
        value = rule.option(column)
        if value == "K":
            return "K"
        if value == "C" and column == DATES and vr in TEMPORAL_VRS:
            return "C"
    return resolve_basic(rule)


def resolve_basic(rule: Rule) -> str:
    code = rule.basic
    if "/" not in code:
        return code
    alternatives = code.split("/")
    if "U*" in alternatives:
        return "U"
    if "X" in alternatives:
        return "Z" if rule.keyword in TYPE_2_IN_MG and "Z" in alternatives else "X"
    return "Z"
