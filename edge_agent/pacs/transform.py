"""What a destination's copy of a stored object looks like: re-identified for the care team, or de-identified again for research.

The box stores every image de-identified (box pseudonym, box-remapped UIDs,
dates shifted by a per-woman number of days). For an *identified*
destination the copy gets back what the sealed re-identification map holds
(name, ID, issuer, birth date), the accession number the unit put in (from
the worklist), and its real dates: the shift is a function of the woman's
identity and the box secret, so it is recomputed and undone. Its UIDs stay
the box's: stable, so a resend is the same object to the PACS, never a new
one. For a *de-identified* destination the stored object goes through the
same Annex E engine again under that destination's own key
(``edge_agent.export_keys``), which gives stable pseudonyms and UIDs per
destination and keeps destinations from being joined with each other.

Pure functions of the dataset and the keys; ``export`` does the I/O.
"""

from __future__ import annotations

import hashlib
import hmac

from pydicom.dataset import Dataset

from edge_agent.ingest import annex_e
from edge_agent.ingest.deid import DeidKeys, deidentify, patient_key, shift_date, shift_datetime, shift_days_for
from edge_agent.pacs.worklist import charset_for

#: Elements saying the object was de-identified; an identified copy drops them (its identity and dates are back).
_DEID_MARKS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
               "LongitudinalTemporalInformationModified")


def derived_uid(keys: DeidKeys, *parts: str) -> str:
    """A UID of an object the box makes for a destination (SR, heatmap series): the same parts, the same UID, on every resend."""
    text = "\x1f".join(("mammo-pacs-object", *parts))
    return "2.25." + str(int.from_bytes(hmac.new(keys.uid_secret, text.encode("utf-8"), hashlib.sha256).digest()[:16], "big"))


def _identity_dataset(identity: dict[str, str]) -> Dataset:
    """The original patient elements, as ``deid.patient_key`` reads them."""
    ds = Dataset()
    ds.PatientID = identity.get("patient_id", "")
    ds.IssuerOfPatientID = identity.get("issuer", "")
    ds.PatientName = identity.get("name", "")
    ds.PatientBirthDate = identity.get("birth_date", "")
    return ds


def _unshift(ds: Dataset, days: int, rules: dict[int, annex_e.Rule]) -> None:
    """Undo the ingest date shift: every date element the Annex E engine shifted (action C) moves forward again."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _unshift(item, days, rules)
            continue
        rule = rules.get(int(elem.tag))
        if rule is None or elem.VR not in ("DA", "DT") or annex_e.resolve(rule, elem.VR) != "C" or not elem.value:
            continue
        fn = shift_date if elem.VR == "DA" else shift_datetime
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        shifted = [fn(str(v), -days) for v in values]
        elem.value = shifted if elem.VM > 1 else shifted[0]


def reidentify(ds: Dataset, identity: dict[str, str], box_keys: DeidKeys, *, accession: str = "") -> Dataset:
    """The care team's copy, in place: identity and real dates back, box UIDs kept. ``identity`` as the re-id map holds it."""
    original = _identity_dataset(identity)
    _unshift(ds, shift_days_for(box_keys, patient_key(original)), annex_e.rules_by_tag())
    ds.SpecificCharacterSet = charset_for(identity.get("name", ""), identity.get("patient_id", ""))
    ds.PatientName = identity.get("name", "")
    ds.PatientID = identity.get("patient_id", "")
    if identity.get("issuer"):
        ds.IssuerOfPatientID = identity["issuer"]
    ds.PatientBirthDate = identity.get("birth_date", "")
    ds.AccessionNumber = accession
    for keyword in _DEID_MARKS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def research(ds: Dataset, export_keys: DeidKeys) -> Dataset:
    """The research copy, in place: the stored (already de-identified) object de-identified again under the destination's key."""
    deidentify(ds, export_keys)
    ds.PatientName = f"{ds.PatientID}^"  # the pseudonym as the family name: a one-part name is ambiguous in PN (PS3.5 6.2.1.2)
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID  # the box's UID must not linger in the meta header
    return ds
