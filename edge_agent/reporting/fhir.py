"""One screening exam as a FHIR R4 transaction Bundle (pure: facts in, a JSON-ready dict out).

What the Bundle holds, and why each part looks as it does::

    Patient           the woman, identified (name, the modality's patient ID, birth date): this channel is the official one
    ImagingStudy      the MG study, its series and instances (the box's de-identified UIDs: the originals are not kept)
    DiagnosticReport  LOINC 24606-6 (MG breast screening); 'final' only once a radiologist confirmed it, else 'preliminary';
                      its ``result`` lists the radiologist's Observations only
    Observation x2    BI-RADS assessment and breast density, only as a radiologist confirmed them (an account with that role,
                      or a radiology report typed in); never the AI's output, never the family doctor's pick
    Device            the AI model: name, version, release manifest SHA-256
    Observation (AI)  the triage category and score, coded in the box's own AI code system, made by the Device, part of the
                      ImagingStudy, and NOT a result of the DiagnosticReport: it can never read as the radiologist's BI-RADS
    ServiceRequest    only when the family doctor referred the woman (a referral letter, or the kiosk's 'referred' mark)

Every resource carries a stable identifier derived from the box and the study,
and every entry is a conditional create (``ifNoneExist`` on that identifier):
a Bundle sent twice (a lost answer, a crash, a restart) creates nothing the
second time. ``fullUrl``\\ s are UUIDs derived from the same identifiers, so
the same facts always give the same bytes.

Codes of our own (triage, BI-RADS, density) live in the box's code systems
under ``urn:mammoai-tr:``; mapping them to the national terminology is an
adapter's job (see :mod:`edge_agent.reporting.enabiz`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any
from urllib.parse import quote

from edge_agent.reporting.facts import PatientIdentity, ScreeningFacts

LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CODES = "urn:mammoai-tr:codes"  # the box's own concepts (AI triage, the radiologist's categories as typed in)
AI_NOTICE = ("Yapay zeka ön değerlendirmesidir; tanı değildir ve radyolog değerlendirmesinin yerini tutmaz. "
             "(AI pre-assessment: not a diagnosis, not a radiologist's reading.)")
TRIAGE_DISPLAY = {
    "no_suspicious_finding": "AI triage: no suspicious finding flagged",
    "radiologist_review": "AI triage: radiologist review suggested",
    "priority_radiologist_review": "AI triage: priority radiologist review suggested",
}
DENSITY_DISPLAY = {"A": "Almost entirely fatty", "B": "Scattered fibroglandular densities", "C": "Heterogeneously dense",
                   "D": "Extremely dense"}
BIRADS_DISPLAY = {0: "Incomplete", 1: "Negative", 2: "Benign", 3: "Probably benign", 4: "Suspicious", 5: "Highly suggestive of malignancy",
                  6: "Known biopsy-proven malignancy"}
LATERALITY = {"R": ("24028007", "Right"), "L": ("7771000", "Left")}
_NS = uuid.UUID("6f1c3d2e-7a0b-5e4c-9d8f-1a2b3c4d5e6f")  # namespace of the box's resource UUIDs


def system_of(box_id: str, kind: str) -> str:
    """The identifier system of one kind of resource made by one box (boxes never collide)."""
    return f"urn:mammoai-tr:{box_id}:{kind}"


def report_identifier(box_id: str, study_uid: str) -> str:
    """The stable key of a study's report: what the receiver de-duplicates on, and what the box's state table records."""
    return f"{system_of(box_id, 'diagnosticreport')}|{study_uid}"


def _full_url(system: str, value: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, system + '|' + value)}"


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def _birth_date(yyyymmdd: str) -> str | None:
    try:
        return dt.date(int(yyyymmdd[0:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8])).isoformat() if len(yyyymmdd) == 8 else None
    except ValueError:
        return None


def human_name(pn: str) -> dict[str, Any]:
    """A DICOM person name (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX) as a FHIR HumanName, with the plain text beside it."""
    parts = [p.strip() for p in (pn.split("=")[0].split("^") + [""] * 5)[:5]]
    family, given, middle, prefix, suffix = parts
    name: dict[str, Any] = {"use": "official", "text": " ".join(p for p in (prefix, given, middle, family, suffix) if p) or pn}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [p for p in (given, middle) if p]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


class _Entries:
    """Collects Bundle entries, each a conditional create on its resource's first identifier."""

    def __init__(self, box_id: str, study_uid: str) -> None:
        self.box_id, self.study_uid = box_id, study_uid
        self.entries: list[dict[str, Any]] = []

    def add(self, kind: str, resource: dict[str, Any], *, system: str | None = None, value: str | None = None) -> str:
        system = system or system_of(self.box_id, kind.lower())
        value = value or self.study_uid
        ident = {"system": system, "value": value}
        resource["identifier"] = [ident, *resource.get("identifier", [])]
        url = _full_url(system, value)
        self.entries.append({"fullUrl": url, "resource": {"resourceType": kind, **resource},
                             "request": {"method": "POST", "url": kind, "ifNoneExist": f"identifier={quote(system, safe=':/.-_')}|{quote(value, safe=':/.-_')}"}})
        return url


def build_bundle(facts: ScreeningFacts, *, patient_id_system: str) -> dict[str, Any]:
    """The transaction Bundle for one screening exam (validate it with :func:`validate`)."""
    e = _Entries(facts.box_id, facts.study_uid)
    patient = e.add("Patient", _patient(facts.identity, facts, patient_id_system),
                    **_patient_key(facts, patient_id_system))
    subject = {"reference": patient}
    study = e.add("ImagingStudy", _imaging_study(facts, subject))
    results = []
    c = facts.confirmation
    if c is not None:
        base = {"status": "final", "category": [_imaging_category()], "subject": subject, "effectiveDateTime": _iso(c.created_at),
                "performer": [{"display": c.entered_by}], "derivedFrom": [{"reference": study}],
                "method": {"text": "Radyolog değerlendirmesi" if c.source == "radiologist" else "Radyoloji raporundan aktarıldı"}}
        results.append(e.add("Observation", {**base, "code": _code(CODES, "birads-assessment", "BI-RADS assessment category (radiologist)"),
                                             "valueCodeableConcept": _code(CODES, f"birads-{c.birads}", f"BI-RADS {c.birads}: {BIRADS_DISPLAY[c.birads]}")},
                             system=system_of(facts.box_id, "observation-birads")))
        results.append(e.add("Observation", {**base, "code": _code(CODES, "breast-density", "Breast composition (ACR, radiologist)"),
                                             "valueCodeableConcept": _code(CODES, f"density-{c.density}", f"ACR {c.density}: {DENSITY_DISPLAY[c.density]}")},
                             system=system_of(facts.box_id, "observation-density")))
    if facts.ai is not None and facts.ai.status == "done" and facts.ai.triage:
        device = e.add("Device", _device(facts), system=system_of(facts.box_id, "device-model"),
                       value=facts.ai.manifest_sha256 or f"unknown-{facts.ai.model_version}")
        e.add("Observation", _ai_observation(facts, subject, study, device), system=system_of(facts.box_id, "observation-ai-triage"))
    report: dict[str, Any] = {
        "status": "final" if c is not None else "preliminary",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": _code(LOINC, "24606-6", "MG Breast Screening"),
        "subject": subject,
        "effectiveDateTime": _iso(facts.received_at),
        "performer": [{"display": f"{facts.box_name}, {facts.box_city}"}],
        "imagingStudy": [{"reference": study}],
    }
    if c is not None:
        report["issued"] = _iso(c.created_at)
        report["resultsInterpreter"] = [{"display": c.entered_by}]
        report["result"] = [{"reference": r} for r in results]
        if c.recommendation:
            report["conclusion"] = f"Öneri / recommendation: {c.recommendation}" + (f"; biyopsi / biopsy: {c.biopsy_result}" if c.biopsy_result else "")
    e.add("DiagnosticReport", report)
    if facts.referral is not None:
        e.add("ServiceRequest", {
            # no priority: the referral letter records none, and the AI's triage must not set a clinical order's urgency
            "status": "active", "intent": "order",
            "code": {"text": "Radyoloji konsültasyonu: mamografi değerlendirmesi (radiology consultation: mammogram reading)"},
            "subject": subject, "authoredOn": _iso(facts.referral.made_at), "requester": {"display": facts.referral.by},
            "supportingInfo": [{"reference": study}],
        })
    return {"resourceType": "Bundle", "type": "transaction",
            "identifier": {"system": system_of(facts.box_id, "bundle"), "value": facts.study_uid}, "entry": e.entries}


def _patient_key(facts: ScreeningFacts, patient_id_system: str) -> dict[str, str]:
    """Match the woman on her national/clinic ID where the modality sent one, else on the box's pseudonym."""
    ident = facts.identity
    if ident is not None and ident.patient_id:
        return {"system": patient_id_system, "value": ident.patient_id}
    return {"system": system_of(facts.box_id, "pseudonym"), "value": facts.pseudonym}


def _patient(ident: PatientIdentity | None, facts: ScreeningFacts, patient_id_system: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ident is not None and ident.patient_id:
        out["identifier"] = [{"system": system_of(facts.box_id, "pseudonym"), "value": facts.pseudonym}]
    if ident is not None and ident.name:
        out["name"] = [human_name(ident.name)]
    birth = _birth_date(ident.birth_date) if ident is not None else None
    if birth:
        out["birthDate"] = birth
    return out


def _imaging_study(facts: ScreeningFacts, subject: dict[str, str]) -> dict[str, Any]:
    series: dict[str, list[Any]] = {}
    for inst in facts.instances:
        series.setdefault(inst.series_uid, []).append(inst)
    out_series = []
    for n, (uid, members) in enumerate(series.items(), start=1):
        s: dict[str, Any] = {
            "uid": uid, "number": n, "modality": {"system": DCM, "code": members[0].modality or "MG"},
            "numberOfInstances": len(members), "bodySite": {"system": SNOMED, "code": "76752008", "display": "Breast structure"},
            "instance": [{"uid": m.sop_uid, "number": i, "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{m.sop_class}"},
                          "title": f"{m.laterality or '?'} {m.view or '?'}"} for i, m in enumerate(members, start=1)],
        }
        sides = {m.laterality for m in members}
        if len(sides) == 1 and next(iter(sides)) in LATERALITY:
            code, display = LATERALITY[next(iter(sides))]
            s["laterality"] = {"system": SNOMED, "code": code, "display": display}
        out_series.append(s)
    modalities = sorted({m.modality or "MG" for m in facts.instances}) or ["MG"]
    return {
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{facts.study_uid}"}],
        "status": "available", "subject": subject, "started": _iso(facts.received_at),
        "modality": [{"system": DCM, "code": m} for m in modalities],
        "description": "Tarama mamografisi (screening mammography)",
        "numberOfSeries": len(out_series), "numberOfInstances": len(facts.instances), "series": out_series,
    }


def _device(facts: ScreeningFacts) -> dict[str, Any]:
    ai = facts.ai
    assert ai is not None
    return {
        "identifier": [{"system": "urn:mammoai-tr:model-manifest-sha256", "value": ai.manifest_sha256 or "unknown"}],
        "status": "active",
        "deviceName": [{"name": "MammoAI-TR triage model", "type": "model-name"}],
        "type": {"text": "AI screening triage software (decision support, not a diagnostic device)"},
        "version": [{"value": ai.model_version}],
        "note": [{"text": f"release manifest sha256 {ai.manifest_sha256 or 'unknown'}; hardware profile {ai.profile}"}],
    }


def _ai_observation(facts: ScreeningFacts, subject: dict[str, str], study: str, device: str) -> dict[str, Any]:
    ai = facts.ai
    assert ai is not None and ai.triage is not None
    out: dict[str, Any] = {
        "status": "preliminary",
        "category": [_imaging_category()],
        "code": _code(CODES, "ai-triage", "AI screening triage pre-assessment (not a BI-RADS category)"),
        "subject": subject, "effectiveDateTime": _iso(ai.created_at), "issued": _iso(ai.created_at),
        "valueCodeableConcept": _code(CODES, ai.triage, TRIAGE_DISPLAY.get(ai.triage, ai.triage)),
        "device": {"reference": device}, "partOf": [{"reference": study}], "derivedFrom": [{"reference": study}],
        "method": {"text": "Yapay zeka ön değerlendirmesi (AI pre-assessment)"},
        "note": [{"text": AI_NOTICE}],
    }
    if ai.study_score is not None:
        out["component"] = [{"code": _code(CODES, "ai-triage-score", "AI triage score (0-1, not a probability of cancer)"),
                             "valueQuantity": {"value": round(float(ai.study_score), 4), "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}}]
    return out


def _imaging_category() -> dict[str, Any]:
    return {"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}


def _code(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def validate(bundle: dict[str, Any]) -> None:
    """Check the Bundle against fhir.resources' R4B models (R4-compatible for every resource used here); raises ValueError."""
    from fhir.resources.R4B.bundle import Bundle  # late: pydantic models cost start-up time the CLI parser must not pay

    Bundle.model_validate(bundle)


def to_json(bundle: dict[str, Any]) -> bytes:
    """The bytes sent: UTF-8 JSON, keys in the order built (the same facts give the same bytes)."""
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
