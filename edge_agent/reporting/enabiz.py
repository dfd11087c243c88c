"""The national-record adapter interface, and why e-Nabız needs one of its own.

FHIR stays the box's internal form of a report: :func:`edge_agent.reporting.fhir.build_bundle`
makes the one Bundle that ``mammo report show`` prints and the tests validate.
What leaves the box is whatever the receiving system takes, made from that
Bundle by an adapter:

    ScreeningFacts ──build_bundle──► Bundle (FHIR R4, internal) ──adapter.package──► Package ──adapter.send──► Receipt

* :class:`edge_agent.reporting.delivery.FhirTransactionAdapter` (``report_adapter = fhir``):
  the Package *is* the Bundle, POSTed to a FHIR R4 server as a transaction
  with conditional creates.
* :class:`EnabizAdapter` (``report_adapter = enabiz``): the Turkish national
  record (e-Nabız, Sağlık Bakanlığı's SYS/USS services) takes its own
  package format, not FHIR. This class pins the interface; the box refuses
  to start with it until a production adapter is written.

What a production e-Nabız adapter needs (none of it can be built or tested
from here; it comes with the Ministry's integration agreement):

1. **Registration.** The clinic (ASM) must be a registered health facility with
   its ÇKYS/kurum code, and the software must be a registered SYS vendor
   product; the Ministry issues the web-service user, password and test
   environment. These become settings (secrets) beside ``report_fhir_token``.
2. **The package format.** e-Nabız takes SOAP/XML "SYS paketleri" (the
   message types for an examination, its result and the imaging record, each
   with the Ministry's own reference tables: MEDULA/SKRS codes for the
   procedure, the radiology report, BI-RADS, breast density). ``package`` maps
   the Bundle's resources onto them: Patient → the woman's T.C. Kimlik No
   (``report_patient_id_system`` must then name TCKN, and a study without it
   cannot go), ImagingStudy → the imaging record with its accession, the
   radiologist's Observations → the report fields, ServiceRequest → the
   referral. The AI Observation and Device are **not** sent: e-Nabız has no
   slot for decision-support output, and it must never land in a field that
   reads as the radiologist's finding.
3. **The session and the package key.** Each package carries a SYS takip
   number that e-Nabız returns; resending with the same number must update,
   not duplicate, which is this interface's idempotency rule
   (``Package.identifier`` is that key; the box keeps it in
   ``reporting_deliveries.identifier``).
4. **The answer.** A Receipt only on the service's success code; its error
   codes become ``DeliveryFailed`` with the code and text, so the report stays
   queued with the reason visible, exactly as for the FHIR endpoint.
5. **Tests** against the Ministry's test environment, recorded once and
   replayed by a small loopback server the way tests/edge_agent/reporting
   serve the FHIR endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.errors import ReportingError


@dataclass(frozen=True)
class Package:
    """What one adapter sends for one report: its bytes and the key the receiver de-duplicates on."""

    content_type: str
    body: bytes
    identifier: str
    entries: int


@dataclass(frozen=True)
class Receipt:
    """The receiver's acceptance: how many records it created and how many it already had (a resend)."""

    status: int
    created: int
    existing: int
    detail: str


class NationalRecordAdapter(Protocol):
    """Turns the internal Bundle into the receiver's package and delivers it (``send`` raises DeliveryFailed)."""

    name: str

    def endpoint(self) -> str:
        """Where it sends (host and path, no secrets): for the audit trail and the state shown to people."""
        ...

    def package(self, bundle: dict[str, Any], identifier: str) -> Package: ...

    def send(self, package: Package) -> Receipt: ...


class EnabizAdapter:
    """The e-Nabız adapter's place: see the module docstring for what a production one needs."""

    name = "enabiz"

    def endpoint(self) -> str:
        return "e-Nabız (not implemented)"

    def package(self, bundle: dict[str, Any], identifier: str) -> Package:
        raise ReportingError("The e-Nabız adapter is not implemented on this box (it needs the Ministry's SYS registration and package "
                             "format). Fix: set report_adapter = fhir, or install a build that has the adapter.")

    def send(self, package: Package) -> Receipt:
        raise ReportingError("The e-Nabız adapter is not implemented on this box. Fix: set report_adapter = fhir.")
