"""The AI result as a DICOM Structured Report: a TID 1500 Measurement Report built and checked by highdicom.

Why TID 1500 and not the Mammography CAD SR (TID 4000) is written up in
docs/dicom-ai-objects.md. In short: the model gives a triage category, a
score per view, breast and study, and one peak location per view; it does not
classify masses against calcifications or give BI-RADS, which TID 4000's
findings are built around. TID 1500 holds exactly what the model gives, is what
the IHE AI Results (AIR) profile uses for AI output, and highdicom builds it
and checks its content tree at construction.

The report (Comprehensive SR, one per study and destination):

- observer: the device "MammoAI-TR Edge"; every group carries the algorithm
  identification (TID 4019): the model's name, its version, and its manifest
  SHA-256 and the runtime as parameters;
- one group for the study: the study score and the triage category;
- one group per breast: that breast's score, with the breast and laterality as finding site;
- one planar ROI group per view, most suspicious first: the peak of the
  view's heatmap as a POINT on the source image, with the view's score.

Scores and the triage category are local concepts (coding scheme
``99MAMMOAI``, declared in the Coding Scheme Identification Sequence): no
standard code says "triage category of this model".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from edge_agent.inference.triage import NO_SUSPICIOUS, PRIORITY, REVIEW

SCHEME = "99MAMMOAI"
MANUFACTURER = "MammoAI-TR"
DEVICE_NAME = "MammoAI-TR Edge"
MODEL_NAME = "MammoAI-TR screening triage model"
SERIES_DESCRIPTION = "AI triage result (MammoAI-TR) - not a diagnosis"
SR_SERIES_NUMBER = 9001

BREAST = hd.sr.CodedConcept("76752008", "SCT", "Breast")
LATERALITY = {"R": hd.sr.CodedConcept("24028007", "SCT", "Right"), "L": hd.sr.CodedConcept("7771000", "SCT", "Left")}
PROCEDURE = hd.sr.CodedConcept("24606-6", "LN", "MG Breast Screening")
SCORE = hd.sr.CodedConcept("SUSPICION", SCHEME, "AI suspicion score")
TRIAGE = hd.sr.CodedConcept("TRIAGE", SCHEME, "AI triage category")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
TRIAGE_VALUES = {
    NO_SUSPICIOUS: hd.sr.CodedConcept("NO_SUSPICIOUS", SCHEME, "No suspicious finding by AI"),
    REVIEW: hd.sr.CodedConcept("REVIEW", SCHEME, "AI suggests radiologist review"),
    PRIORITY: hd.sr.CodedConcept("PRIORITY", SCHEME, "AI suggests priority radiologist review"),
}


@dataclass(frozen=True)
class ViewResult:
    """One scored view, its source image's UIDs as this destination knows them."""

    sop_class_uid: str
    sop_instance_uid: str
    laterality: str
    view: str
    suspicion: float
    peak_x: int
    peak_y: int


@dataclass(frozen=True)
class AiResult:
    """What the SR reports, taken from the inference result and the activation of the model that made it."""

    triage: str | None
    study_score: float | None
    breast_scores: dict[str, float]
    views: tuple[ViewResult, ...]
    model_version: str
    manifest_sha256: str
    backend: str


def _algorithm(result: AiResult) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=result.model_version,
        parameters=[f"manifest_sha256={result.manifest_sha256}", f"backend={result.backend}"],
    )


def _score(value: float, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=SCORE, value=round(float(value), 6), unit=NO_UNITS, algorithm_id=algorithm)


def groups(result: AiResult, uid: dict[str, str]) -> list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The measurement groups, study first, then each breast, then each view's peak, most suspicious first."""
    algorithm = _algorithm(result)
    out: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    study_measurements = [_score(result.study_score, algorithm)] if result.study_score is not None else []
    evaluations = [hd.sr.QualitativeEvaluation(TRIAGE, TRIAGE_VALUES[result.triage])] if result.triage is not None else []
    out.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid["study"], identifier="AI triage of the study"),
        finding_type=BREAST, algorithm_id=algorithm, measurements=study_measurements or None, qualitative_evaluations=evaluations or None,
    ))
    for side in ("R", "L"):
        if side not in result.breast_scores or result.breast_scores[side] is None:
            continue
        out.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid[f"breast-{side}"], identifier=f"AI score, {LATERALITY[side].meaning.lower()} breast"),
            finding_type=BREAST, algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(BREAST, laterality=LATERALITY[side])],
            measurements=[_score(result.breast_scores[side], algorithm)],
        ))
    for v in sorted(result.views, key=lambda v: -v.suspicion):
        sites = [hd.sr.FindingSite(BREAST, laterality=LATERALITY[v.laterality])] if v.laterality in LATERALITY else None
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=np.array([[float(v.peak_x) + 0.5, float(v.peak_y) + 0.5]]),  # the pixel's centre (PS3.3 C.10.5.1.2)
            source_image=hd.sr.SourceImageForRegion(v.sop_class_uid, v.sop_instance_uid),
        )
        out.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid[f"view-{v.sop_instance_uid}"],
                                                          identifier=f"Most suspicious location, {v.laterality}-{v.view}"),
            referenced_region=region, finding_type=BREAST, algorithm_id=algorithm, finding_sites=sites,
            measurements=[_score(v.suspicion, algorithm)],
        ))
    return out


def build(result: AiResult, evidence: Sequence[Dataset], *, series_uid: str, sop_uid: str, uid: dict[str, str], device_uid: str) -> Dataset:
    """The Comprehensive SR of ``result`` about the images in ``evidence`` (this destination's copies)."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=DEVICE_NAME, manufacturer_name=MANUFACTURER, model_name=f"{MODEL_NAME} {result.model_version}"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups(result, uid),
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=list(evidence), content=report[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
    )
    sr.SeriesDescription = SERIES_DESCRIPTION
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "MammoAI-TR Edge local concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def uid_names(result: AiResult) -> list[str]:
    """The names of the tracking UIDs ``groups`` needs (the caller derives each stably)."""
    return ["study", "breast-R", "breast-L"] + [f"view-{v.sop_instance_uid}" for v in result.views]
