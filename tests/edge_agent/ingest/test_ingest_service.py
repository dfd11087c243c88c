"""The ingest service end to end on a real box database, keystore and queue."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from edge_agent.errors import IntegrityError, QuarantineNotFound
from edge_agent.ingest import mg, studies
from edge_agent.ingest.records import ACCEPTED, FIXED, QUARANTINED


def _send(rig, datasets, **kw):
    return [rig.service.ingest_bytes(mg.to_bytes(ds), source="test", **kw) for ds in datasets]


def test_four_views_make_exactly_one_infer_job(rig, study):
    results = _send(rig, study)
    assert [r.outcome for r in results] == [ACCEPTED] * 4
    jobs = rig.infer_jobs()
    assert len(jobs) == 1
    job_id, key, payload = jobs[0]
    assert results[-1].infer_job_id == job_id and all(r.infer_job_id is None for r in results[:-1])
    body = json.loads(payload)
    assert key == f"study:{results[0].study_uid}" and body["study_uid"] == results[0].study_uid
    assert sorted(body["views"]) == ["L-CC", "L-MLO", "R-CC", "R-MLO"] and body["complete_reason"] == "four_views"
    # A modality re-sending the whole study: duplicates, no second job.
    again = _send(rig, study)
    assert all(r.duplicate for r in again) and len(rig.infer_jobs()) == 1
    assert {r.digest for r in again} == {r.digest for r in results}


def test_incomplete_study_is_queued_after_the_stable_timeout(rig_factory, tmp_path, study):
    now = [1_000.0]
    rig = rig_factory(tmp_path / "home", ingest_study_complete_timeout_s=600.0)
    rig.service.clock = lambda: now[0]
    _send(rig, study[:3])
    assert rig.service.sweep() == [] and rig.infer_jobs() == []
    now[0] += 599
    assert rig.service.sweep() == []
    now[0] += 2
    closed = rig.service.sweep()
    assert [c.complete_reason for c in closed] == ["stable_timeout"] and len(rig.infer_jobs()) == 1
    assert rig.service.sweep() == [] and len(rig.infer_jobs()) == 1


def test_completion_rule():
    four = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    assert studies.completion(four, last_seen=0, now=0, timeout_s=60) == "four_views"
    assert studies.completion(four[:3] + [("R", "CC")], last_seen=0, now=59, timeout_s=60) is None
    assert studies.completion(four[:3], last_seen=0, now=60, timeout_s=60) == "stable_timeout"


def test_turkish_name_round_trips_through_the_encrypted_map(rig, study):
    result = _send(rig, study[:1])[0]
    pseudonym = rig.db.execute("SELECT pseudonym FROM ingest_studies WHERE study_uid = ?", [result.study_uid]).fetchone()[0]
    identity = rig.service.identity_of(pseudonym)
    assert identity["name"] == "ÇELİK^AYŞE" and identity["patient_id"] == mg.TURKISH_PATIENTS[0].patient_id
    stored = rig.service.store.get(result.digest)
    assert "ÇELİK".encode("iso8859_9") not in stored and "ÇELİK".encode() not in stored


def test_tampered_image_ciphertext_is_refused(rig, study):
    result = _send(rig, study[:1])[0]
    path = rig.service.store.path(result.digest)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        rig.service.store.get(result.digest)


def test_object_swapped_for_another_is_refused(rig, study):
    a, b = _send(rig, study[:2])
    rig.service.store.path(a.digest).write_bytes(rig.service.store.path(b.digest).read_bytes())
    with pytest.raises(IntegrityError):
        rig.service.store.get(a.digest)


def test_tampered_reid_map_is_refused(rig, study):
    _send(rig, study[:1])
    pseudonym, sealed = rig.db.execute("SELECT pseudonym, sealed FROM ingest_reid").fetchone()
    rig.db.execute("UPDATE ingest_reid SET sealed = ?", [bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1])])
    with pytest.raises(IntegrityError):
        rig.service.identity_of(pseudonym)


def test_burned_in_annotation_is_quarantined_then_released_after_review(rig, study):
    ds = study[0]
    ds.BurnedInAnnotation = "YES"
    r = _send(rig, [ds])[0]
    assert r.outcome == QUARANTINED and r.reason_code == "burned_in_annotation"
    entry = rig.service.quarantine.entry(r.quarantine_id)
    assert entry.status == "held" and entry.source == "test"
    released = rig.service.release(r.quarantine_id)
    assert released.outcome in (ACCEPTED, FIXED)
    assert rig.service.quarantine.entry(r.quarantine_id).status == "released"
    assert not rig.service.quarantine._path(entry.digest).exists()  # the identified original is gone, the de-identified copy stays


def test_facts_about_a_file_cannot_be_overridden(rig, study):
    data = mg.to_bytes(study[0])
    r = rig.service.ingest_bytes(data[: len(data) - 500], source="test")  # truncated pixel data
    assert r.reason_code == "truncated_pixel_data"
    assert rig.service.release(r.quarantine_id).outcome == QUARANTINED


def test_purge_deletes_the_sealed_file(rig):
    r = rig.service.ingest_bytes(b"not a dicom file at all" * 10, source="test", label="x.dcm")
    assert r.outcome == QUARANTINED and r.reason
    entry = rig.service.quarantine.entry(r.quarantine_id)
    rig.service.purge(r.quarantine_id)
    assert rig.service.quarantine.entry(r.quarantine_id).status == "purged"
    assert not rig.service.quarantine._path(entry.digest).exists()
    with pytest.raises(QuarantineNotFound):
        rig.service.quarantine.open(r.quarantine_id)


def test_quarantined_file_keeps_its_label_sealed(rig):
    r = rig.service.ingest_bytes(b"\x00" * 300, source="drop", label="/media/usb/ÇELİK AYŞE/1.dcm")
    data, label = rig.service.quarantine.open(r.quarantine_id)
    assert data == b"\x00" * 300 and label == "/media/usb/ÇELİK AYŞE/1.dcm"


def _encodings(text: str) -> list[bytes]:
    out = {text.encode("utf-8")}
    for codec in ("iso8859_9", "iso8859_1", "utf-16-le"):
        try:
            out.add(text.encode(codec))
        except UnicodeEncodeError:
            pass
    return sorted(out)


def test_planted_identity_appears_nowhere_on_disk_in_the_queue_or_logs(rig_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rig = rig_factory(tmp_path / "home", ingest_study_complete_timeout_s=1.0)
    patient = mg.FakePatient("KARADENİZ^ŞÜKRİYE^GÜL", "99887766554", "19610203")
    planted = ["KARADENİZ", "ŞÜKRİYE", "99887766554", "19610203", "MRN-PLANT-7731", "PLANTED PHYSICIAN"]
    datasets = mg.screening_study(patient, seed=5, size=96)
    for ds in datasets:
        ds.OtherPatientIDsSequence = [Dataset()]
        ds.OtherPatientIDsSequence[0].PatientID = "MRN-PLANT-7731"
        ds.ReferringPhysicianName = "PLANTED PHYSICIAN"
        ds.private_block(0x0029, "ACME PHI", create=True).add_new(0x01, "LO", "KARADENİZ ŞÜKRİYE")
        ds.ImageComments = "KARADENİZ ŞÜKRİYE 99887766554"
    bad = mg.screening_study(patient, seed=6, size=96)[0]
    bad.BurnedInAnnotation = "YES"
    label = str(tmp_path / "usb" / "KARADENİZ ŞÜKRİYE" / "img.dcm")
    results = [rig.service.ingest_bytes(mg.to_bytes(ds), source="drop", label=label) for ds in datasets + [bad]]
    assert [r.outcome for r in results].count(QUARANTINED) == 1
    rig.service.clock = lambda: 10**10
    rig.service.sweep()
    rig.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    home = rig.settings.home
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.parent.parent.name == "images" for p in files) and any("quarantine" in p.parts for p in files)
    blobs = {p: p.read_bytes() for p in files}
    # The stored images are ciphertext; decrypt them too, so de-identification (not encryption) is what is tested.
    for (digest,) in rig.db.execute("SELECT digest FROM ingest_instances").fetchall():
        blobs[home / f"decrypted:{digest[:12]}"] = rig.service.store.get(digest)
    payloads = [r[0] for r in rig.db.execute("SELECT payload FROM jobs").fetchall()]
    rows = json.dumps([list(map(str, r)) for t in ("ingest_studies", "ingest_instances", "ingest_quarantine")
                       for r in rig.db.execute(f"SELECT * FROM {t}").fetchall()], ensure_ascii=False)
    for text in planted:
        for needle in _encodings(text):
            for path, blob in blobs.items():
                assert needle not in blob, f"{text!r} found in {path.relative_to(home) if path.is_relative_to(home) else path}"
        assert all(text not in p for p in payloads), f"{text!r} in a queued payload"
        assert text not in rows
        assert text not in caplog.text, f"{text!r} in the logs"
    # ...while the box itself can still name her for the doctor.
    pseudonym = rig.db.execute("SELECT pseudonym FROM ingest_studies").fetchone()[0]
    assert rig.service.identity_of(pseudonym)["name"] == patient.name


def test_stored_object_is_deidentified_dicom(rig, study):
    import io

    import pydicom

    r = _send(rig, study[:1])[0]
    ds = pydicom.dcmread(io.BytesIO(rig.service.store.get(r.digest)))
    assert ds.PatientIdentityRemoved == "YES" and ds.SOPInstanceUID == r.sop_instance_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.pixel_array.shape == (128, 128)
    assert Path(rig.service.store.path(r.digest)).stat().st_mode & 0o077 == 0


def _with_text(ds, text: str = "CELIK AYSE 38291047562"):
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(ds.pixel_array)
    size = img.size[0]
    ImageDraw.Draw(img).text((size * 0.55, size * 0.05), text, fill=255, font=ImageFont.load_default(size=max(11, size // 40)))
    ds.PixelData = np.asarray(img).tobytes()
    return ds


def test_text_burned_into_pixels_is_quarantined_unless_declared_absent(rig, study):
    ds = _with_text(mg.mammogram(mg.synthetic_pixels(3, "R", 512), patient=mg.TURKISH_PATIENTS[0], laterality="R", view="CC"))
    del ds.BurnedInAnnotation
    r = _send(rig, [ds])[0]
    assert r.outcome == QUARANTINED and r.reason_code == "burned_in_text_suspected"
    assert rig.service.release(r.quarantine_id).outcome in (ACCEPTED, FIXED)  # a person looked and released it
    clean = study[1]
    del clean.BurnedInAnnotation
    assert _send(rig, [clean])[0].outcome == ACCEPTED  # no text, no quarantine


def _monochrome1_mammogram(seed: int) -> Dataset:
    ds = mg.screening_study(mg.TURKISH_PATIENTS[1], seed=seed, size=128)[0]
    ds.PixelData = (255 - ds.pixel_array).astype(ds.pixel_array.dtype).tobytes()  # dense tissue stored dark
    ds.PhotometricInterpretation = "MONOCHROME1"
    return ds


def test_monochrome1_is_stored_as_sent_and_a_resend_is_a_duplicate(rig):
    import io

    import pydicom

    ds = _monochrome1_mammogram(seed=4)
    first = rig.service.ingest_bytes(mg.to_bytes(ds), source="test")
    assert first.outcome in (ACCEPTED, FIXED) and "monochrome1_inverted" not in {f.code for f in first.fixes}
    stored = pydicom.dcmread(io.BytesIO(rig.service.store.get(first.digest)))
    assert stored.PhotometricInterpretation == "MONOCHROME1"
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID and bytes(stored.PixelData) == bytes(ds.PixelData)
    again = rig.service.ingest_bytes(mg.to_bytes(_monochrome1_mammogram(seed=4)), source="test")
    assert again.duplicate and (again.sop_instance_uid, again.digest) == (first.sop_instance_uid, first.digest)


def test_a_compressed_monochrome1_radiograph_keeps_its_compression_and_de_duplicates(rig, corpus):
    import io

    import pydicom

    data = (corpus / "pydicom-data" / "RG3_J2KR.dcm").read_bytes()
    sent = pydicom.dcmread(io.BytesIO(data))
    first = rig.service.ingest_bytes(data, source="test", allow=frozenset({"burned_in_text_suspected"}))
    assert first.outcome in (ACCEPTED, FIXED), first.reason
    stored = pydicom.dcmread(io.BytesIO(rig.service.store.get(first.digest)))
    assert stored.PhotometricInterpretation == "MONOCHROME1" and stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert bytes(stored.PixelData) == bytes(sent.PixelData)  # not decoded, inverted and stored uncompressed
    again = rig.service.ingest_bytes(data, source="test", allow=frozenset({"burned_in_text_suspected"}))
    assert again.duplicate and again.sop_instance_uid == first.sop_instance_uid
