"""``mammo eval --dicom``: real MG DICOM studies through a throwaway box, scored against a labels CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.ingest import mg
from models.cli import main
from models.dicom_eval import read_labels
from models.errors import DatasetError
from models.release_files import load_release, triage
from models.runtime import Screener

VIEWS = ("CC", "MLO")


def write_study(folder, n: int, pixels: dict, views=mg.SCREENING_VIEWS) -> str:
    """One woman's study as DICOM files; returns its (original) StudyInstanceUID."""
    patient = mg.fake_patient(100 + n)
    uid = str(mg._uid("eval-study", n))
    for i, (lat, view) in enumerate(views):
        ds = mg.mammogram(pixels[(lat, view)], patient=patient, laterality=lat, view=view, study_uid=uid,
                          accession=f"ACC{n:04d}", instance_number=i + 1, seed=n)
        mg.write(ds, folder / f"study{n}" / f"{lat}_{view}.dcm")
    return uid


def expected_score(screener: Screener, pixels: dict) -> float:
    """The study score written out from the model's per-view probabilities (each view against the same view opposite)."""
    beta = screener.release.operating_points.beta
    p = {k: screener.score(v).p_abnormal for k, v in pixels.items()}
    return max(p[(lat, view)] - beta * p[("L" if lat == "R" else "R", view)] for lat, view in p)


def synthetic_views(n: int, finding: str | None) -> dict:
    from models.synthetic import generate

    return {(lat, view): generate(1000 + 10 * n + 2 * (lat == "L") + (view == "MLO"), density="BCBD"[n % 4],
                                  finding=finding if lat == "R" else None, size=256, laterality=lat).image
            for lat in ("L", "R") for view in VIEWS}


def run_eval(capsys, dicom, labels, release_dir) -> dict:
    assert main(["eval", "--dicom", str(dicom), "--labels", str(labels), "--json", "--release", str(release_dir),
                 "--n-boot", "200", "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_dicom_studies_are_triaged_by_the_box_and_scored_per_woman(release_dir, tmp_path, capsys):
    dicom = tmp_path / "dicom"
    findings = {0: None, 1: "mass", 2: None, 3: "spiculated"}
    studies = {n: synthetic_views(n, f) for n, f in findings.items()}
    uids = {n: write_study(dicom, n, px) for n, px in studies.items()}
    # a study missing its left MLO: the box says incomplete and it is left out of the figures, not guessed
    partial = synthetic_views(4, None)
    uids[4] = write_study(dicom, 4, partial, views=[v for v in mg.SCREENING_VIEWS if v != ("L", "MLO")])
    labels = tmp_path / "labels.csv"
    rows = [f"{uids[n]},{int(n in (1, 3))}" for n in range(5)] + ["1.2.3.4.5.6.7,1"]  # the last one never arrives
    labels.write_text("study_instance_uid,label\n" + "\n".join(rows) + "\n")

    res = run_eval(capsys, dicom, labels, release_dir)
    assert res["files"] == 19 and res["studies_received"] == 5 and res["files_quarantined"] == {}
    assert res["studies_not_received"] == ["1.2.3.4.5.6.7"]
    assert res["studies_incomplete"] == {uids[4]: ["view L-MLO missing"]}
    women = res["women"]
    assert women["n"] == 4 and women["n_abnormal"] == 2 and sum(women["triage_counts"].values()) == 4
    for key in ("auc", "auc_ci95", "sensitivity_review", "specificity_review", "sensitivity_priority",
                "specificity_priority", "sensitivity_review_ci95"):
        assert key in women
    # each study's stored score is the model's own per-view scores combined by the box's rule, on the original pixels
    rel = load_release(release_dir)
    screener = Screener(rel, backend="onnx-int8", threads=1)
    by_key = {s["key"]: s for s in res["studies"]}
    for n in range(4):
        got = by_key[uids[n]]
        assert got["status"] == "done"
        assert got["study_score"] == pytest.approx(expected_score(screener, studies[n]), abs=1e-4)
        assert got["triage"] == triage(got["study_score"], rel.operating_points)
    flagged = [by_key[uids[n]]["triage"] != "no_suspicious_finding" for n in (1, 3)]
    assert women["sensitivity_review"] == pytest.approx(np.mean(flagged))


def test_mias_women_as_dicom_give_the_same_triage_as_their_images(release_dir, mias_dir, tmp_path, capsys):
    """Real film images (mini-MIAS MLO; the MLO stands in for the CC too) wrapped as MG DICOM."""
    import csv

    with (mias_dir / "images.csv").open() as f:
        info = {r["ref"]: r for r in csv.DictReader(f)}
    dicom = tmp_path / "dicom"
    labels, expected = [], {}
    screener = Screener(load_release(release_dir), backend="onnx-int8", threads=1)
    for n, pair in enumerate(("1", "3", "8", "2")):  # abnormal, abnormal, abnormal, normal women
        refs = [r for r, row in info.items() if row["patient_pair"] == pair]
        px = {}
        for ref in refs:
            arr, side = mg.mias_pixels(mias_dir, ref)
            px[(side, "CC")] = px[(side, "MLO")] = arr
        uid = write_study(dicom, n, px)
        labels.append(f"{uid},{max(int(info[r]['label_abnormal']) for r in refs)}")
        expected[uid] = expected_score(screener, px)
    (tmp_path / "labels.csv").write_text("study_instance_uid,label\n" + "\n".join(labels) + "\n")
    res = run_eval(capsys, dicom, tmp_path / "labels.csv", release_dir)
    assert res["women"]["n"] == 4 and res["women"]["n_abnormal"] == 3
    for s in res["studies"]:
        assert s["study_score"] == pytest.approx(expected[s["key"]], abs=1e-4)


def test_labels_csv_names_its_key_and_says_how_to_fix_it(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("accession_number,label\nACC0001,1\nACC0002,0\n")
    assert read_labels(p) == ("accession_number", {"ACC0001": 1, "ACC0002": 0})
    p.write_text("uid,label\nx,1\n")
    with pytest.raises(DatasetError, match="study_instance_uid"):
        read_labels(p)
    p.write_text("study_instance_uid,label\nx,2\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_labels(p)


def test_dicom_without_labels_is_a_usage_error(release_dir, tmp_path, capsys):
    assert main(["eval", "--dicom", str(tmp_path), "--json", "--release", str(release_dir)]) == 2
    assert "--labels" in capsys.readouterr().err
