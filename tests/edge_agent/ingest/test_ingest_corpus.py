"""The shared real-world corpus (224 files, every common syntax, many broken): each ends accepted, fixed or quarantined with a reason."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from edge_agent.ingest.records import ACCEPTED, FIXED, QUARANTINED

# Files whose fate is a fact about the file, pinned so a regression shows.
EXPECTED_REASONS = {
    "orthanc-tests/2026-05-26-oob-monochrome-46341.dcm": "image_too_large",
    "dcm4che/will-jxl.dcm": "unsupported_transfer_syntax",
    "pydicom/MR_truncated.dcm": "truncated_pixel_data",
    "orthanc-tests/2023-04-21-RLEPlanarConfigurationYBR_FULL.dcm": "burned_in_annotation",
    "orthanc-tests/sample-pdf.dcm": "no_pixel_data",
}


@pytest.mark.shared_data
def test_every_corpus_file_ends_accepted_fixed_or_quarantined(rig, corpus):
    with (corpus / "INDEX.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 224
    outcomes: Counter[str] = Counter()
    for row in rows:
        r = rig.service.ingest_path(corpus / row["file"], source="corpus")
        outcomes[r.outcome] += 1
        assert r.outcome in (ACCEPTED, FIXED, QUARANTINED), row["file"]
        if r.outcome == QUARANTINED:
            assert r.reason_code and r.reason and r.quarantine_id, row["file"]
            assert r.reason_code != "internal_error", f"{row['file']}: {r.reason}"
        else:
            assert rig.service.store.get(r.digest)  # stored, sealed, readable
        if row["file"] in EXPECTED_REASONS:
            assert r.reason_code == EXPECTED_REASONS[row["file"]], f"{row['file']}: {r.reason}"
    assert sum(outcomes.values()) == 224
    assert outcomes[ACCEPTED] + outcomes[FIXED] > 100
    assert "JPEG XL" in next(e.reason for e in rig.service.quarantine.entries() if e.reason_code == "unsupported_transfer_syntax")
