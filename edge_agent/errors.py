"""The project's exceptions: one root, a small tree under it.

Every error a person may read says what happened and how to recover.
Library errors (sqlite3, pydicom, onnxruntime, flwr) are translated into
one of these where they enter our code.

    MammoError
     ├── SettingsError          invalid or unreadable settings; names the field and the fix
     ├── StoreError             the box database cannot be used
     │    ├── DatabaseRefused   corrupt or foreign database file (never overwritten)
     │    └── StorageFull       the disk or the database size limit is reached
     ├── QueueError             misuse of the job queue
     │    └── LeaseLost         a job's lease expired and another worker may own it
     ├── KeystoreError          keystore missing, wrong passphrase, or tampered
     ├── IntegrityError         sealed data failed authentication (tampered or corrupted)
     ├── ProvisioningError      the federation authority or a box's enrolment cannot be used
     │    ├── KitRefused        a startup kit failed a check; nothing on the box was changed
     │    └── PeerRefused       a box certificate is not trusted (foreign, expired, revoked)
     ├── IngestError            DICOM ingest problems
     │    ├── DicomRejected     a file that goes to quarantine, with a reason code
     │    ├── IngestUnavailable  the ingest workers are stopped or cannot start: the sender retries
     │    └── QuarantineNotFound  no quarantined file with that id (purged or mistyped)
     ├── ModelError             a model release cannot be loaded, verified or run
     ├── ReportingError         a report or notice cannot be built (unknown study, identity missing)
     │    └── DeliveryFailed    an endpoint or gateway refused or did not answer: the queue retries
     ├── TrainingError          local training cannot run a round (no model, unusable checkpoint, no sink)
     │    └── BudgetExceeded    the round would spend more privacy than the model generation's budget has left
     ├── SyncError              federated sync: the outbox, encrypted updates, the coordinator's store and rounds
     │    └── UpdateRejected    an encrypted update is refused (damaged, wrong shape or HE version, too stale): do not resend it
     ├── PacsError              a PACS export or a modality worklist entry cannot be made (edge_agent.pacs)
     │    └── PacsUnavailable   the PACS refused the association or stopped answering: the export stays queued and retries
     └── KioskError             the family doctor's kiosk refused a request
          ├── AuthError         sign-in failed, the session expired, or the account is locked
          │    └── TooManyAttempts  too many failed sign-ins from one address or for one name: wait
          ├── CsrfError         a form arrived without its anti-forgery token, or with a forged one
          ├── PermissionDenied  the signed-in role may not do this
          ├── NotFound          no study, view or user with that id
          └── UploadRejected    an uploaded file was refused before ingest (size, name, not DICOM)
"""

from __future__ import annotations


class MammoError(Exception):
    """Root of every error this project raises on purpose."""


class SettingsError(MammoError):
    """Settings are invalid; the message names the field and how to fix it."""


class StoreError(MammoError):
    """The box database cannot be opened or written."""


class DatabaseRefused(StoreError):
    """The database file is corrupt or belongs to something else; it was left untouched."""


class StorageFull(StoreError):
    """No space left (disk full or the database's page limit reached); nothing was written."""


class QueueError(MammoError):
    """The job queue was used in a way it does not allow."""


class LeaseLost(QueueError):
    """The job's lease expired before ack; another worker may already hold it."""


class KeystoreError(MammoError):
    """The keystore cannot be opened: wrong passphrase, tampering, or a missing file."""


class IntegrityError(MammoError):
    """Encrypted data failed authentication: it was tampered with, corrupted, or sealed by another box."""


class ProvisioningError(MammoError):
    """The federation authority or the box's enrolment cannot be used (wrong passphrase, missing request, bad input)."""


class KitRefused(ProvisioningError):
    """A startup kit failed a check (tampered, another box, another authority, expired, clock far off); the box is unchanged."""


class PeerRefused(ProvisioningError):
    """A box certificate presented at connection is not trusted: foreign, expired, not yet valid, or revoked."""


class IngestError(MammoError):
    """A DICOM object could not be ingested."""


class DicomRejected(IngestError):
    """A DICOM file is refused and quarantined; ``reason_code`` is stable and machine-readable."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class IngestUnavailable(IngestError):
    """No ingest worker can take the file (the box is shutting down, or workers cannot start); nothing was stored: send it again."""


class QuarantineNotFound(IngestError):
    """No quarantined file has that id; it was purged, or the id is mistyped."""


class ModelError(MammoError):
    """A model release cannot be loaded, verified or run."""


class SyncError(MammoError):
    """Federated sync cannot go on: the outbox, an encrypted update, or the coordinator's store or round is unusable."""


class UpdateRejected(SyncError):
    """An encrypted update is refused for good (damaged, another trainable part or HE version, too stale); re-sending it cannot help."""


class TrainingError(MammoError):
    """Local training cannot run a round (no active model, no usable images, no update sink); the message says what to do."""


class BudgetExceeded(TrainingError):
    """A round would take the model generation past its privacy budget; it was not started and nothing was spent."""


class PacsError(MammoError):
    """A PACS export or a worklist entry cannot be made; the message says what to change."""


class PacsUnavailable(PacsError):
    """The PACS did not accept the association, failed the C-ECHO or stopped mid-export; the export is retried."""


class ReportingError(MammoError):
    """A screening report or a notice cannot be built: an unknown study, or what it must carry is missing."""


class DeliveryFailed(ReportingError):
    """The FHIR endpoint or SMS gateway was down, slow, refused or answered garbage; the job stays queued and is retried."""


class KioskError(MammoError):
    """The kiosk refused a request; ``message_key`` names the Turkish/English text shown to the person."""

    status_code = 400

    def __init__(self, message_key: str, detail: str = "") -> None:
        super().__init__(detail or message_key)
        self.message_key = message_key


class AuthError(KioskError):
    """Wrong user name or password, an expired session, or a locked account: sign in again."""

    status_code = 401


class TooManyAttempts(AuthError):
    """Too many failed sign-ins from this address or for this user name: wait ``retry_after_s`` seconds, then try again."""

    status_code = 429

    def __init__(self, message_key: str, detail: str = "", *, retry_after_s: float = 60.0) -> None:
        super().__init__(message_key, detail)
        self.retry_after_s = retry_after_s


class CsrfError(KioskError):
    """A form without a valid anti-forgery token: reload the page and send it again."""

    status_code = 403


class PermissionDenied(KioskError):
    """The signed-in role may not do this; ask an admin for the right role."""

    status_code = 403


class NotFound(KioskError):
    """No study, view or user has that id (mistyped, or never on this box)."""

    status_code = 404


class UploadRejected(KioskError):
    """An uploaded file or request was refused before reaching ingest; nothing was stored."""

    status_code = 413
