"""Language: the string catalogs (``tr.json``, ``en.json``) and Turkish-aware casing.

Python's ``str.upper`` maps ``i`` to ``I`` and ``lower`` maps ``I`` to ``i``;
Turkish pairs ``i``/``İ`` and ``ı``/``I``. Names and headings in the kiosk
go through :func:`tr_upper` / :func:`tr_lower` so "Ayşe Çelik İpek" prints as
"AYŞE ÇELİK İPEK", never "AYŞE ÇELIK IPEK".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LANGUAGES = ("tr", "en")
DEFAULT_LANGUAGE = "tr"
_DIR = Path(__file__).resolve().parent

_TR_UPPER = str.maketrans({"i": "İ", "ı": "I"})
_TR_LOWER = str.maketrans({"I": "ı", "İ": "i"})


def tr_upper(text: str) -> str:
    """Upper case by Turkish rules (i -> İ, ı -> I)."""
    return text.translate(_TR_UPPER).upper()


def tr_lower(text: str) -> str:
    """Lower case by Turkish rules (I -> ı, İ -> i); never leaves a combining dot behind."""
    return text.translate(_TR_LOWER).lower()


def tr_title(text: str) -> str:
    """Each word capitalised by Turkish rules: 'çelik ayşe' -> 'Çelik Ayşe', 'İPEK' -> 'İpek'."""
    return " ".join(tr_upper(w[:1]) + tr_lower(w[1:]) for w in text.split())


_FOLD = str.maketrans("çğıöşüâîû", "cgiosuaiu")


def search_fold(text: str) -> str:
    """Lower case by Turkish rules, then Turkish letters to their plain Latin base, so 'sahin', 'ŞAHİN' and 'Şahin' meet."""
    return tr_lower(text).translate(_FOLD)


def upper(text: str, lang: str) -> str:
    return tr_upper(text) if lang == "tr" else text.upper()


def person_name(dicom_name: str, lang: str = "tr") -> str:
    """A DICOM PN ('ÇELİK^AYŞE') as the doctor reads it: 'Ayşe ÇELİK' (given names, then the family name in capitals).

    Names are Turkish whatever the screen's language, so they always follow Turkish casing ('IŞIK' -> 'Işık').
    """
    parts = [p.strip() for p in (dicom_name or "").split("^")]
    family = tr_upper(parts[0]) if parts else ""
    given = " ".join(p for p in parts[1:3] if p)
    return f"{tr_title(given)} {family}".strip()


@dataclass(frozen=True)
class Catalog:
    lang: str
    strings: Mapping[str, str]

    def __call__(self, key: str, **params: object) -> str:
        text = self.strings.get(key)
        if text is None:  # a missing key is a bug the catalog test catches; show the key rather than crash
            return key
        return text.format(**params) if params else text


@cache
def catalog(lang: str) -> Catalog:
    if lang not in LANGUAGES:
        lang = DEFAULT_LANGUAGE
    data = json.loads((_DIR / f"{lang}.json").read_text(encoding="utf-8"))
    return Catalog(lang, data)


def pick_language(requested: str | None, default: str) -> str:
    return requested if requested in LANGUAGES else (default if default in LANGUAGES else DEFAULT_LANGUAGE)


def decimal(x: float | None, lang: str, digits: int = 2) -> str:
    """A number as the reader writes it: '0,43' in Turkish, '0.43' in English; '—' for none."""
    if x is None:
        return "—"
    text = f"{x:.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return text.replace(".", ",") if lang == "tr" else text


def percent(x: float, lang: str) -> str:
    """A fraction as a whole percentage: '%86' in Turkish (the sign comes first), '86%' in English."""
    n = round(100 * x)
    return f"%{n}" if lang == "tr" else f"{n}%"
