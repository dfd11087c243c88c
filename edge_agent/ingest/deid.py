"""The de-identification engine: Annex E actions applied to a dataset, keyed by box secrets.

Everything here is a function of the dataset and ``DeidKeys``: the same
input on the same box gives the same output byte for byte (pseudonym, date
shift and UIDs all come from HMACs of the original values), so a re-sent
image de-duplicates and priors keep their intervals.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from edge_agent.ingest import annex_e
from provisioning.keystore import Keystore

METHOD_TEXT = ["MammoAI-TR Edge, PS3.15 E.1-1 (2024b) Basic Profile", "Retain Modified Dates, Patient Chars, Device Identity", "UIDs remapped by keyed hash; private tags removed"]
DUMMY_BY_VR = {
    "PN": "ANONYMOUS", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
    "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED", "AE": "ANONYMOUS", "DA": "19000101",
    "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0", "UR": "urn:anonymized",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "SV": 0, "UV": 0, "AT": 0,
}


@dataclass(frozen=True)
class DeidKeys:
    """Per-purpose box secrets (32 bytes each, from the keystore's HKDF) and the date-shift bound."""

    uid_secret: bytes
    date_secret: bytes
    pseudonym_secret: bytes
    max_shift_days: int = 3650

    @classmethod
    def from_keystore(cls, keystore: Keystore, max_shift_days: int = 3650) -> DeidKeys:
        return cls(keystore.secret("uid-remap"), keystore.secret("date-shift"), keystore.secret("pseudonym"), max_shift_days)


@dataclass(frozen=True)
class Identity:
    """The original identity, for the encrypted re-identification map only: never logged, stored plain or queued."""

    pseudonym: str
    patient_name: str
    patient_id: str
    birth_date: str
    issuer: str
    accession: str = ""  # links the images to their modality worklist entry (edge_agent.pacs.worklist), then forgotten


@dataclass(frozen=True)
class DeidReport:
    identity: Identity
    shift_days: int
    actions: tuple[tuple[str, int], ...]
    private_removed: int


def _mac(secret: bytes, text: str) -> bytes:
    return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).digest()


def patient_key(ds: Dataset) -> str:
    """What makes a patient the same patient across studies: issuer + ID, or name + birth date when the ID is empty."""
    pid = str(ds.get("PatientID", "") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    if pid:
        return f"id\x1f{issuer}\x1f{pid}"
    return f"name\x1f{str(ds.get('PatientName', '') or '').strip()}\x1f{ds.get('PatientBirthDate', '') or ''}"


def pseudonym_for(keys: DeidKeys, key: str) -> str:
    return "MAMMO-" + base64.b32encode(_mac(keys.pseudonym_secret, key)[:10]).decode("ascii")[:12]


def shift_days_for(keys: DeidKeys, key: str) -> int:
    return 1 + int.from_bytes(_mac(keys.date_secret, key)[:8], "big") % keys.max_shift_days


def remap_uid(keys: DeidKeys, uid: str) -> str:
    return "2.25." + str(int.from_bytes(_mac(keys.uid_secret, str(uid).strip())[:16], "big"))


def shift_date(value: str, days: int) -> str:
    """Shift a DA (YYYYMMDD, or a YYYYMMDD-YYYYMMDD range) back by ``days``; unparseable dates become empty."""
    value = str(value).strip()
    if "-" in value:
        return "-".join(shift_date(part, days) if part else "" for part in value.split("-"))
    digits = value.replace(".", "")
    try:
        d = dt.date(int(digits[0:4]), int(digits[4:6] or 1), int(digits[6:8] or 1))
    except (ValueError, IndexError):
        return ""
    return (d - dt.timedelta(days=days)).strftime("%Y%m%d")[: len(digits)] if len(digits) in (4, 6, 8) else ""


def shift_datetime(value: str, days: int) -> str:
    value = str(value).strip()
    date_part = value[:8]
    shifted = shift_date(date_part, days)
    return shifted + value[len(date_part):] if shifted else ""


def _shift(vr: str, value: Any, days: int) -> Any:
    if vr == "TM":
        return value  # whole days are shifted, so times of day stay as they were
    fn = shift_date if vr == "DA" else shift_datetime
    if isinstance(value, (MultiValue, list)):
        return [fn(v, days) for v in value]
    return fn(value, days) if value else value


class _Context:
    def __init__(self, keys: DeidKeys, shift_days: int, options: tuple[str, ...], safelist: frozenset[tuple[str, int, int]]) -> None:
        self.keys, self.shift_days, self.options, self.safelist = keys, shift_days, options, safelist
        self.rules = annex_e.rules_by_tag()
        self.actions: Counter[str] = Counter()
        self.private_removed = 0


def _wildcard_action(tag: BaseTag) -> str | None:
    group, element = tag.group, tag.element
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return "X"  # (50XX,XXXX) curve data
    if 0x6000 <= group <= 0x60FF and group % 2 == 0 and element in (0x3000, 0x4000):
        return "X"  # overlay data and comments
    return None


def _private_kept(ds: Dataset, tag: BaseTag, safelist: frozenset[tuple[str, int, int]]) -> bool:
    if not safelist:
        return False
    if tag.is_private_creator:
        creator = str(ds[tag].value).strip().upper()
        return any(c == creator and g == tag.group for c, g, _ in safelist)
    creator_elem = ds.get(BaseTag((tag.group << 16) | (tag.element >> 8)))
    creator = str(creator_elem.value).strip().upper() if creator_elem is not None else ""
    return (creator, tag.group, tag.element & 0xFF) in safelist


def _apply(ds: Dataset, ctx: _Context) -> None:
    for tag in list(ds.keys()):
        elem = ds[tag]
        if tag.is_private:
            if _private_kept(ds, tag, ctx.safelist):
                continue
            del ds[tag]
            ctx.private_removed += 1
            continue
        rule = ctx.rules.get(int(tag))
        action = annex_e.resolve(rule, elem.VR, ctx.options) if rule is not None else _wildcard_action(tag)
        if action is None or action == "K":
            if elem.VR == "SQ":
                for item in elem.value or []:
                    _apply(item, ctx)
            continue
        ctx.actions[action] += 1
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = Sequence([]) if elem.VR == "SQ" else (b"" if elem.VR in ("OB", "OW", "UN") else None)
        elif action == "D":
            if elem.VR == "SQ":
                elem.value = Sequence([Dataset()])
            elif elem.VR == "UI":
                elem.value = remap_uid(ctx.keys, str(elem.value))
            else:
                elem.value = DUMMY_BY_VR.get(elem.VR, b"\x00\x00")
        elif action == "U":
            if elem.VR == "SQ":
                for item in elem.value or []:
                    _apply(item, ctx)
            elif elem.value not in (None, ""):
                values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
                mapped = [remap_uid(ctx.keys, v) for v in values]
                elem.value = mapped if len(mapped) > 1 else mapped[0]
        elif action == "C":
            elem.value = _shift(elem.VR, elem.value, ctx.shift_days)


def capture_identity(ds: Dataset, keys: DeidKeys) -> Identity:
    key = patient_key(ds)
    return Identity(
        pseudonym=pseudonym_for(keys, key),
        patient_name=str(ds.get("PatientName", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ""),
        birth_date=str(ds.get("PatientBirthDate", "") or ""),
        issuer=str(ds.get("IssuerOfPatientID", "") or ""),
        accession=str(ds.get("AccessionNumber", "") or ""),
    )


def method_codes(options: tuple[str, ...], safelist: frozenset[tuple[str, int, int]]) -> list[Dataset]:
    used = ["basic"] + [o for o in annex_e.APPLIED_OPTIONS if o in options] + (["rtnSafePrivOpt"] if safelist else [])
    items = []
    for name in used:
        code, meaning = annex_e.CID_7050[name]
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        items.append(item)
    return items


def deidentify(
    ds: Dataset,
    keys: DeidKeys,
    *,
    options: tuple[str, ...] = annex_e.APPLIED_OPTIONS,
    private_safelist: frozenset[tuple[str, int, int]] = frozenset(),
) -> DeidReport:
    """De-identify ``ds`` in place; the returned report carries the original identity for the encrypted map.

    ``private_safelist`` holds (PRIVATE CREATOR, group, element byte) triples
    kept under the Retain Safe Private option; everything else private goes.
    """
    identity = capture_identity(ds, keys)
    shift = shift_days_for(keys, patient_key(ds))
    ctx = _Context(keys, shift, options, private_safelist)
    _apply(ds, ctx)
    # A consistent pseudonym is the dummy value Z and Z/D permit; it links a woman's studies without naming her.
    ds.PatientName = identity.pseudonym
    ds.PatientID = identity.pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD_TEXT
    ds.DeidentificationMethodCodeSequence = method_codes(options, private_safelist)
    if annex_e.DATES in options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    return DeidReport(identity, shift, tuple(sorted(ctx.actions.items())), ctx.private_removed)
