"""Which breast and which view a mammogram shows, read from what real files carry: pure functions over strings and codes.

Modalities put the view in different places. Many send no ViewPosition and
give the view only as a code in View Code Sequence, or only in a description
("LEFT_CC", "R MLO", "RCC", "L-MLO", "Sol MLO", "SAĞ kraniokaudal"). The
sources are read in this order; the first that answers wins, and a later one
that disagrees is reported (a mislabelled side is worth a technician's look):

view        1. ViewPosition (0018,5101), when it is a mammography view term
            2. View Code Sequence (0054,0220): the CID 4014 code, SNOMED CT
               (SCT) or legacy SNOMED-RT (SRT, SNM3), then its Code Meaning
               read as text
            3. text, field by field: ViewPosition when it holds more than a
               term (e.g. "RCC"), SeriesDescription, ProtocolName,
               ImageComments, AcquisitionDeviceProcessingDescription,
               PerformedProcedureStepDescription
laterality  1. ImageLaterality (0020,0062)
            2. FrameLaterality (0020,9072) in the shared Frame Anatomy
               (enhanced objects, breast tomosynthesis)
            3. Laterality (0020,0060) of the series, when L or R
            4. Anatomic Region Sequence: a left/right breast code, or a
               Left/Right region modifier
            5. text, the same fields as for the view
            (6. the pixels: ``autofix.side_from_pixels``, outside this module)

A text field naming two sides or two views ("BILATERAL", "CC + MLO") answers
nothing. StudyDescription is never read: it is one per study, so it cannot
tell the four images apart.

Views are the ACR/IHE abbreviations: CC, MLO, ML, LM, LMO, FB, SIO, ISO,
XCCL, XCCM, XCC, AT, CV, SPECIMEN. Only CC and MLO make the four screening
views (``studies.SCREENING_VIEWS``). An XCCL, XCCM or ML is taken as well as
the CC or MLO, not instead of it: counting it would close the study on the
supplementary view and triage it before the real CC arrived. Such views are
stored under their own name, and a study that has them but lacks a screening
view completes by timeout. An implant-displaced view ("CC ID", "RMLOID") is
its base view. View modifiers (spot compression, magnification, rolled)
do not change the view: a spot CC is stored as CC.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# CID 4014 View for Mammography: (view, SNOMED CT, legacy SNOMED-RT, meaning).
# The last three are retired from CID 4014 (AT and CV became view modifiers)
# but older modalities still send them as the view.
VIEW_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("CC", "399162004", "R-10242", "cranio-caudal"),
    ("MLO", "399368009", "R-10226", "medio-lateral oblique"),
    ("ML", "399260004", "R-10224", "medio-lateral"),
    ("LM", "399352003", "R-10228", "latero-medial"),
    ("LMO", "399099002", "R-10230", "latero-medial oblique"),
    ("FB", "399196006", "R-10244", "caudo-cranial (from below)"),
    ("SIO", "399188001", "R-102D0", "superolateral to inferomedial oblique"),
    ("ISO", "441555000", "R-40AAA", "inferomedial to superolateral oblique"),
    ("XCCL", "399192008", "R-1024A", "cranio-caudal exaggerated laterally"),
    ("XCCM", "399101009", "R-1024B", "cranio-caudal exaggerated medially"),
    ("SPECIMEN", "127457009", "G-8310", "tissue specimen from breast"),
    ("XCC", "", "R-102CF", "exaggerated cranio-caudal"),
    ("AT", "399011000", "R-102D1", "axillary tail"),
    ("CV", "399161006", "R-102D2", "cleavage"),
)
VIEWS = frozenset(row[0] for row in VIEW_TABLE)
SCREENING_VIEWS = frozenset({"CC", "MLO"})
SCT_SCHEMES = frozenset({"SCT", "SNOMED", "SNOMED-CT", "SNOMEDCT"})
SRT_SCHEMES = frozenset({"SRT", "SNM3", "99SDM"})
_CODE_TO_VIEW = {code: row[0] for row in VIEW_TABLE for code in row[1:3] if code}

# Anatomic Region Sequence: the breast with its side, or a side modifier (SCT, then SRT).
LATERALITY_CODES = {
    "80248007": "L", "T-04030": "L",  # left breast
    "73056007": "R", "T-04020": "R",  # right breast
    "7771000": "L", "G-A101": "L",  # left (modifier)
    "24028007": "R", "G-A100": "R",  # right (modifier)
}

# Words a description may use, after upper-casing and folding Turkish letters (SAĞ -> SAG).
_SIDE_WORDS = {"L": "L", "LT": "L", "LEFT": "L", "SOL": "L", "R": "R", "RT": "R", "RIGHT": "R", "SAG": "R"}
_BOTH_WORDS = frozenset({"BILATERAL", "BILAT", "BOTH", "TARAFLI"})  # TARAFLI: "iki taraflı", both sides
# Bare words read as a view. AT and CV are left out: as words they mean other things.
_TEXT_VIEWS = frozenset({"CC", "MLO", "ML", "LM", "LMO", "FB", "SIO", "ISO", "XCCL", "XCCM", "XCC", "SPECIMEN"})
_COMPACT = re.compile(r"(?P<side>[LR])?(?P<view>XCCL|XCCM|XCC|MLO|LMO|CC|ML|LM|FB|SIO)(?:ID)?")
# Spelled-out views (English and Turkish), longest first, rewritten to '#' + the abbreviation before splitting into words.
_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), "#" + v) for p, v in (
    (r"\b[CK]RANI(?:Y?O)? ?[CK]AUDAL EXAGGERATED LATERALLY\b", "XCCL"),
    (r"\b[CK]RANI(?:Y?O)? ?[CK]AUDAL EXAGGERATED MEDIALLY\b", "XCCM"),
    (r"\bEXAGGERATED [CK]RANI(?:Y?O)? ?[CK]AUDAL\b", "XCC"),
    (r"\bSUPERO ?LATERAL TO INFERO ?MEDIAL OBLI(?:QUE|K)\b", "SIO"),
    (r"\bINFERO ?MEDIAL TO SUPERO ?LATERAL OBLI(?:QUE|K)\b", "ISO"),
    (r"\bMEDI(?:O|AL)? ?LATERAL OBLI(?:QUE|K)\b", "MLO"),
    (r"\bLATERO ?MEDIAL OBLI(?:QUE|K)\b", "LMO"),
    (r"\b[CK]RANI(?:Y?O)? ?[CK]AUDAL\b", "CC"),
    (r"\b[CK]AUDO ?[CK]RANI(?:AL|YAL)(?: FROM BELOW)?\b|\bFROM BELOW\b", "FB"),
    (r"\bMEDI(?:O|AL)? ?LATERAL\b", "ML"),
    (r"\bLATERO ?MEDIAL\b", "LM"),
    (r"\bOBLI(?:QUE|K)\b|\bOBL\b", "MLO"),
    (r"\bAXILLARY TAIL\b|\bAKSILLER KUYRUK\b", "AT"),
    (r"\bCLEAVAGE\b", "CV"),
    (r"\b(?:TISSUE )?SPECIMEN(?: FROM BREAST)?\b", "SPECIMEN"),
))
TEXT_FIELDS = ("SeriesDescription", "ProtocolName", "ImageComments", "AcquisitionDeviceProcessingDescription", "PerformedProcedureStepDescription")


@dataclass(frozen=True)
class Coded:
    """One item of a code sequence, as strings."""

    scheme: str
    value: str
    meaning: str = ""


@dataclass(frozen=True)
class Evidence:
    """What one file says about its view and side, as plain strings (read from the dataset by ``autofix``)."""

    view_position: str = ""
    view_codes: tuple[Coded, ...] = ()
    image_laterality: str = ""
    frame_laterality: str = ""
    series_laterality: str = ""
    region_codes: tuple[Coded, ...] = ()
    texts: tuple[tuple[str, str], ...] = ()  # (attribute keyword, value), in TEXT_FIELDS order


@dataclass(frozen=True)
class Reading:
    """A value and where it came from, in the words a technician's fix line uses."""

    value: str
    source: str


@dataclass(frozen=True)
class ViewReading:
    """The chosen laterality and view (None where no source answers) and the sources that disagree with them."""

    laterality: Reading | None
    view: Reading | None
    laterality_disagrees: tuple[Reading, ...] = ()
    view_disagrees: tuple[Reading, ...] = ()


def fold(text: str) -> str:
    """Upper-case ASCII words separated by single spaces: 'Sağ  kraniokaudal' -> 'SAG KRANIOKAUDAL'."""
    decomposed = unicodedata.normalize("NFKD", text.replace("ı", "i"))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).upper()
    return " ".join(re.split(r"[^A-Z0-9]+", plain)).strip()


def view_term(value: str) -> str:
    """The view when ``value`` is exactly a view term (any case, an implant-displaced 'ID' suffix allowed), else ''."""
    word = fold(value).replace(" ", "")
    if word.endswith("ID") and word[:-2] in VIEWS:
        word = word[:-2]
    return word if word in VIEWS else ""


def view_of_code(scheme: str, value: str) -> str:
    """The view a CID 4014 code stands for; '' for another scheme or an unknown code."""
    scheme = scheme.strip().upper()
    if scheme and scheme not in SCT_SCHEMES | SRT_SCHEMES:
        return ""
    return _CODE_TO_VIEW.get(value.strip().upper(), "")


def read_text(text: str) -> tuple[str, str]:
    """(laterality, view) one free-text field names; '' for what it does not name, or names twice over."""
    folded = fold(text)
    for pattern, view in _PHRASES:
        folded = pattern.sub(view, folded)
    sides: set[str] = set()
    views: set[str] = set()
    for word in folded.split():
        if word in _SIDE_WORDS:
            sides.add(_SIDE_WORDS[word])
        elif word in _BOTH_WORDS:
            sides.update(("L", "R"))
        elif word in _TEXT_VIEWS:
            views.add(word)
        elif word.startswith("#"):
            views.add(word[1:])
        elif m := _COMPACT.fullmatch(word):
            views.add(m.group("view"))
            if m.group("side"):
                sides.add(m.group("side"))
    return (sides.pop() if len(sides) == 1 else ""), (views.pop() if len(views) == 1 else "")


def _side(value: str) -> str:
    return value.strip().upper() if value.strip().upper() in ("L", "R", "B") else ""


def _view_readings(ev: Evidence) -> Iterable[Reading]:
    if term := view_term(ev.view_position):
        yield Reading(term, "ViewPosition")
    for code in ev.view_codes:
        if view := view_of_code(code.scheme, code.value):
            yield Reading(view, f"ViewCodeSequence ({code.scheme.strip().upper() or 'no scheme'} {code.value.strip()})")
        elif view := read_text(code.meaning)[1]:
            yield Reading(view, "ViewCodeSequence (its code meaning)")
    for field, text in _texts(ev):
        if view := read_text(text)[1]:
            yield Reading(view, field)


def _laterality_readings(ev: Evidence) -> Iterable[Reading]:
    if side := _side(ev.image_laterality):
        yield Reading(side, "ImageLaterality")
    if side := _side(ev.frame_laterality):
        yield Reading(side, "FrameLaterality (Frame Anatomy)")
    if (side := _side(ev.series_laterality)) in ("L", "R"):
        yield Reading(side, "Laterality (0020,0060)")
    for code in ev.region_codes:
        if side := LATERALITY_CODES.get(code.value.strip().upper(), ""):
            yield Reading(side, f"AnatomicRegionSequence ({code.scheme.strip().upper() or 'no scheme'} {code.value.strip()})")
    for field, text in _texts(ev):
        if side := read_text(text)[0]:
            yield Reading(side, field)


def _texts(ev: Evidence) -> Iterable[tuple[str, str]]:
    if ev.view_position.strip() and not view_term(ev.view_position):
        yield "ViewPosition", ev.view_position
    yield from ((field, text) for field, text in ev.texts if text.strip())


def _choose(readings: Iterable[Reading]) -> tuple[Reading | None, tuple[Reading, ...]]:
    found = list(readings)
    if not found:
        return None, ()
    first = found[0]
    return first, tuple(r for r in found[1:] if r.value != first.value)


def read_views(ev: Evidence) -> ViewReading:
    """Laterality and view by the documented order of sources, with the sources that say otherwise."""
    laterality, lat_others = _choose(_laterality_readings(ev))
    view, view_others = _choose(_view_readings(ev))
    return ViewReading(laterality, view, lat_others, view_others)
