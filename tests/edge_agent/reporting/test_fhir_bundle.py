"""One screening exam as a FHIR R4 transaction Bundle, built from a real box's tables and validated with fhir.resources (R4B)."""

from __future__ import annotations

import json
import time

import pytest
from fhir.resources.R4B.bundle import Bundle

from edge_agent import audit
from edge_agent.cli import main
from edge_agent.ingest import mg
from edge_agent.reporting import facts, fhir


def bundle_of(clinic, study_uid):
    box = clinic.box
    f = facts.gather(box.db, study_uid, box_id=box.keystore.box_id, box_name=box.settings.box_name, box_city=box.settings.box_city,
                     master_key=box.keystore.master_key())
    b = fhir.build_bundle(f, patient_id_system=box.settings.report_patient_id_system)
    return f, b


def by_type(bundle):
    out = {}
    for e in bundle["entry"]:
        out.setdefault(e["resource"]["resourceType"], []).append(e)
    return out


def test_confirmed_study_gives_a_valid_transaction_bundle_with_the_radiologists_categories(clinic_factory):
    clinic = clinic_factory()
    uid = clinic.screen(seed=1)
    clinic.confirm(uid, birads=2, density="C")
    f, b = bundle_of(clinic, uid)
    model = Bundle.model_validate(b)  # the R4B models: every resource and reference shape checked
    assert model.type == "transaction" and len(model.entry) == len(b["entry"])
    kinds = by_type(b)
    assert sorted(kinds) == ["Device", "DiagnosticReport", "ImagingStudy", "Observation", "Patient"]  # no referral, no ServiceRequest
    patient = kinds["Patient"][0]["resource"]
    woman = mg.fake_patient(1)
    assert patient["name"][0]["family"] == woman.name.split("^")[0]
    assert patient["identifier"][0] == {"system": clinic.box.settings.report_patient_id_system, "value": woman.patient_id}
    study = kinds["ImagingStudy"][0]["resource"]
    assert study["modality"][0]["code"] == "MG" and study["numberOfInstances"] == 4
    assert {i["title"] for s in study["series"] for i in s["instance"]} == {"R CC", "L CC", "R MLO", "L MLO"}
    report = kinds["DiagnosticReport"][0]["resource"]
    assert report["code"]["coding"][0] == {"system": "http://loinc.org", "code": "24606-6", "display": "MG Breast Screening"}
    assert report["status"] == "final"
    results = {e["fullUrl"]: e["resource"] for e in kinds["Observation"]}
    in_report = [results[r["reference"]] for r in report["result"]]
    assert sorted(o["valueCodeableConcept"]["coding"][0]["code"] for o in in_report) == ["birads-2", "density-C"]
    assert all(o["performer"][0]["display"] == "dr.rad" and "device" not in o for o in in_report)
    # every entry is a conditional create on its own identifier
    for e in b["entry"]:
        assert e["request"]["method"] == "POST" and e["request"]["ifNoneExist"].startswith("identifier=")
        ident = e["resource"]["identifier"][0]
        assert e["request"]["ifNoneExist"] == f"identifier={ident['system']}|{ident['value']}"


def test_the_ai_result_is_its_own_observation_made_by_the_model_device_never_a_report_result(clinic_factory):
    clinic = clinic_factory()
    uid = clinic.screen(seed=2)
    clinic.confirm(uid)
    f, b = bundle_of(clinic, uid)
    kinds = by_type(b)
    device_entry = kinds["Device"][0]
    device = device_entry["resource"]
    active = clinic.box.db.execute("SELECT version, manifest_sha256 FROM model_activations ORDER BY id DESC LIMIT 1").fetchone()
    assert device["version"][0]["value"] == active[0] == f.ai.model_version
    assert device["identifier"][1] == {"system": "urn:mammoai-tr:model-manifest-sha256", "value": active[1]}
    assert device["deviceName"][0]["name"] == "MammoAI-TR triage model"
    ai = [e for e in kinds["Observation"] if e["resource"].get("device")]
    assert len(ai) == 1
    obs = ai[0]["resource"]
    assert obs["device"]["reference"] == device_entry["fullUrl"]
    assert obs["valueCodeableConcept"]["coding"][0]["code"] == f.ai.triage
    assert obs["status"] == "preliminary" and "tanı değildir" in obs["note"][0]["text"]
    assert "BI-RADS" not in json.dumps(obs["valueCodeableConcept"]) and "birads" not in json.dumps(obs["code"]).replace("not a BI-RADS", "")
    report = kinds["DiagnosticReport"][0]["resource"]
    assert ai[0]["fullUrl"] not in {r["reference"] for r in report["result"]}


def test_without_a_radiologist_there_are_no_categories_and_the_report_is_preliminary(clinic_factory):
    clinic = clinic_factory()
    uid = clinic.screen(seed=3)
    clinic.confirm(uid, birads=4, density="D", source="legacy", username="dr.family")  # the family doctor's old-form pick
    _, b = bundle_of(clinic, uid)
    Bundle.model_validate(b)
    kinds = by_type(b)
    report = kinds["DiagnosticReport"][0]["resource"]
    assert report["status"] == "preliminary" and "result" not in report
    assert [e["resource"]["code"]["coding"][0]["code"] for e in kinds["Observation"]] == ["ai-triage"]
    assert "birads-4" not in json.dumps(b)


def test_a_referral_adds_a_service_request(clinic_factory):
    clinic = clinic_factory()
    uid = clinic.screen(seed=4)
    audit.append(clinic.box.db, "dr.family", "print_referral", uid, {"detail": "1234 bytes"})
    _, b = bundle_of(clinic, uid)
    Bundle.model_validate(b)
    req = by_type(b)["ServiceRequest"][0]["resource"]
    assert req["intent"] == "order" and req["requester"]["display"] == "dr.family"
    assert "priority" not in req  # the AI's triage never sets the order's urgency
    assert req["subject"]["reference"] == by_type(b)["Patient"][0]["fullUrl"]


def test_the_kiosk_radiology_report_is_used_when_the_box_has_one(clinic_factory):
    clinic = clinic_factory()
    db = clinic.box.db
    if not facts.table_exists(db, "kiosk_radiology_reports"):
        pytest.skip("this tree's kiosk has no kiosk_radiology_reports table yet (issue 15)")
    uid = clinic.screen(seed=5)
    clinic.confirm(uid, birads=1, density="A")
    db.execute("INSERT INTO kiosk_radiology_reports (study_uid, birads, density, recommendation, biopsy_result, source, entered_by, created_at)"
               " VALUES (?, 4, 'C', 'biopsy', 'benign', 'radiology_report', 'dr.family', ?)", [uid, time.time()])
    _, b = bundle_of(clinic, uid)
    Bundle.model_validate(b)
    report = by_type(b)["DiagnosticReport"][0]["resource"]
    assert "biopsy" in report["conclusion"]
    codes = sorted(e["resource"]["valueCodeableConcept"]["coding"][0]["code"] for e in by_type(b)["Observation"] if "device" not in e["resource"])
    assert codes == ["birads-4", "density-C"]


def test_the_same_facts_give_the_same_bytes(clinic_factory):
    clinic = clinic_factory()
    uid = clinic.screen(seed=6)
    clinic.confirm(uid)
    assert fhir.to_json(bundle_of(clinic, uid)[1]) == fhir.to_json(bundle_of(clinic, uid)[1])


def test_mammo_report_show_prints_one_bundle_and_audits_it(clinic_factory, monkeypatch, capsys):
    clinic = clinic_factory()
    uid = clinic.screen(seed=7)
    clinic.confirm(uid)
    monkeypatch.setenv("MAMMO_HOME", str(clinic.box.settings.home))
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "test-passphrase")
    capsys.readouterr()
    assert main(["report", "show", uid, "--format", "fhir"]) == 0
    out = capsys.readouterr().out
    bundle = Bundle.model_validate_json(out)
    assert bundle.type == "transaction" and any(e.resource.get_resource_type() == "DiagnosticReport" for e in bundle.entry)
    row = clinic.box.db.execute("SELECT actor, details FROM audit_log WHERE action = 'report_show' AND object = ?", [uid]).fetchone()
    assert row is not None and row[0].startswith("cli:") and json.loads(row[1])["format"] == "fhir"


def test_person_names_map_from_dicom_to_fhir():
    assert fhir.human_name("YILMAZ^AYŞE^NUR") == {"use": "official", "text": "AYŞE NUR YILMAZ", "family": "YILMAZ", "given": ["AYŞE", "NUR"]}
    assert fhir.human_name("ÖZTÜRK") == {"use": "official", "text": "ÖZTÜRK", "family": "ÖZTÜRK"}
