"""The DICOM network receiver: a C-STORE / C-ECHO SCP so a mammography unit can push studies to the box.

Every received object goes through ``IngestService.ingest_bytes``. A
quarantined object was kept, so the modality is told Success (it must not
resend a file that will be refused again); only a box-level failure (disk
full, database unusable) answers "out of resources" so the modality retries
later.
"""

from __future__ import annotations

import logging

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from edge_agent.errors import MammoError, StorageFull
from edge_agent.settings import Settings

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0xC000


class DicomReceiver:
    def __init__(self, service, settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
        self.service = service
        self.ae_title = settings.dicom_ae_title
        self.host = settings.dicom_host if host is None else host
        self.port = settings.dicom_port if port is None else port
        self.require_called_ae = settings.dicom_require_called_ae
        self._server = None

    def _ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = self.require_called_ae
        ae.maximum_pdu_size = 0  # no limit on what the modality may send per PDU
        return ae

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title.strip() if event.assoc else "unknown"
        try:
            data = event.encoded_dataset(include_meta=True)
            result = self.service.ingest_bytes(data, source=f"scp:{calling}", label=f"C-STORE from {calling}")
        except StorageFull:
            log.error("C-STORE from %s refused: storage full", calling)
            return STATUS_OUT_OF_RESOURCES
        except MammoError as exc:
            log.error("C-STORE from %s failed: %s", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:
            log.error("C-STORE from %s failed unexpectedly (%s)", calling, type(exc).__name__)
            return STATUS_PROCESSING_FAILURE
        return STATUS_SUCCESS if result.kept else STATUS_PROCESSING_FAILURE

    def start(self) -> int:
        """Start listening in the background; returns the bound port (useful with port 0)."""
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS)]
        self._server = self._ae().start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        log.info("DICOM receiver %s listening on %s:%d", self.ae_title, self.host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
