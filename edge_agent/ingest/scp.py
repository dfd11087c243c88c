"""The DICOM network receiver: a C-STORE / C-ECHO SCP so a mammography unit can push studies to the box.

Bounded, because a modality (or anything else on the clinic network) can
send any amount of data over any number of connections:

- Each incoming dataset is written to a spool file under ``$MAMMO_HOME/spool``
  while it arrives (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``), never held
  whole in memory; the daemon holds about one PDU (``dicom_max_pdu_bytes``)
  per association.  The spool file goes to ``IngestService.ingest_path`` and
  is deleted afterwards.
- A dataset that passes ``ingest_max_file_bytes`` while arriving aborts its
  association at once; what arrived is quarantined as too large (a person
  sees which image was refused) and the abort is logged.
- At most ``dicom_max_associations`` connections, and
  ``dicom_max_associations_per_peer`` from one address, are served at once;
  a connection that sends no association request within
  ``dicom_acse_timeout_s`` is closed, and sooner when a new connection needs
  its slot.  Idle connections can no longer lock the modalities out.
- Only known peers (``dicom_peers``, see ``peers``) may associate; a refusal
  is logged with the calling AE title and address.

A C-STORE is answered as soon as its spool file is durable (fsync'd and
renamed into ``spool/accepted``); ingest follows in the background, in
parallel with the next image's transfer (see ``accepted``). With
``dicom_ack_backlog`` = 0 it is answered after it is stored, as before.

Every received object goes through the ingest service.  A quarantined
object was kept, so the modality is told Success (it must not resend a file
that will be refused again); only a box-level failure (disk full, database
unusable) answers "out of resources" so the modality retries later.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from edge_agent.errors import MammoError, StorageFull
from edge_agent.ingest import peers as peer_rules
from edge_agent.ingest.accepted import AcceptedSpool
from edge_agent.ingest.scp_limits import Connection, DatasetMeter, admit_connection
from edge_agent.settings import Settings

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0xC000
VERIFICATION = "1.2.840.10008.1.1"  # the Verification SOP class (C-ECHO)
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND (edge_agent.pacs.worklist)
STATUS_PENDING = 0xFF00
# A-ASSOCIATE-RJ: rejected permanent, by the service user, calling AE title not recognised (PS3.8 9.3.4)
_REJECT_UNKNOWN_CALLING_AE = (0x01, 0x01, 0x03)
_LOG_REFUSED_EVERY_S = 60.0
#: At start, how long the receiver waits for images acknowledged before a crash to be stored before it listens.
RECOVER_WAIT_S = 120.0


@dataclass
class _Inbound:
    """What the receiver tracks for one association: its dataset meter and its spool files."""

    calling: str
    address: str
    meter: DatasetMeter
    files: list[Any] = field(default_factory=list)  # the open NamedTemporaryFile objects pynetdicom writes to
    claimed: set[str] = field(default_factory=set)  # spool paths a C-STORE handler is ingesting right now
    oversize: bool = False


class _ReceiverAE(AE):
    """The AE knows its receiver so the spool-file factory (called deep inside pynetdicom) can find the spool."""

    receiver: DicomReceiver | None = None


class _BoundedServer(ThreadedAssociationServer):
    """pynetdicom's server, asking the receiver about each connection (limits, room) before serving it.

    ``process_request`` starts the association thread before the next
    connection is accepted (instead of from a helper thread), so counting the
    live association threads in ``verify_request`` sees every admitted one.
    """

    def verify_request(self, request: Any, client_address: Any) -> bool:
        receiver = self.ae.receiver  # type: ignore[attr-defined]
        return receiver is None or receiver._admit(str(client_address[0]))

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)


def _spool_tempfile(*args: Any, **kwargs: Any) -> Any:
    """Stands in for ``tempfile.NamedTemporaryFile`` inside pynetdicom: our associations spool under MAMMO_HOME.

    pynetdicom has no setting for where a chunked dataset goes, and the
    system temp folder may be a RAM disk (tmpfs), which would defeat the
    spool.  It calls this from the association's DUL thread, which names the
    association; associations of any other AE get the library's default.
    """
    thread = threading.current_thread()
    assoc = thread if isinstance(thread, Association) else getattr(thread, "assoc", None)
    receiver = getattr(getattr(assoc, "ae", None), "receiver", None)
    if receiver is None or assoc is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    return receiver._open_spool(assoc, **kwargs)


def _install_spool() -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True  # write each received dataset to a file, never to memory
    if getattr(dimse_messages, "NamedTemporaryFile", None) is not _spool_tempfile:
        dimse_messages.NamedTemporaryFile = _spool_tempfile  # type: ignore[attr-defined]


class DicomReceiver:
    def __init__(self, service: Any, settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
        self.service = service
        self.settings = settings
        self.ae_title = settings.dicom_ae_title
        self.host = settings.dicom_host if host is None else host
        self.port = settings.dicom_port if port is None else port
        self.require_called_ae = settings.dicom_require_called_ae
        self.peers = peer_rules.parse_peers(settings.dicom_peers)
        self.spool_dir = settings.dicom_spool_dir
        self.aborted: deque[tuple[str, str, int]] = deque(maxlen=100)  # (calling AE, address, bytes received) of size aborts
        self._server: _BoundedServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._inbound: weakref.WeakKeyDictionary[Association, _Inbound] = weakref.WeakKeyDictionary()
        self._refused_logged: dict[str, float] = {}
        self._opened: weakref.WeakKeyDictionary[Association, float] = weakref.WeakKeyDictionary()
        self._gone: weakref.WeakSet[Association] = weakref.WeakSet()  # connections closed, or being closed by us
        self.accepted: AcceptedSpool | None = None  # acknowledged C-STOREs not yet ingested (None: ack after storing)

    def _ae(self) -> _ReceiverAE:
        ae = _ReceiverAE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        ae.add_supported_context(MODALITY_WORKLIST_FIND)  # the unit asks for the day's screenings; known peers only (_on_requested)
        ae.require_called_aet = self.require_called_ae
        s = self.settings
        ae.maximum_pdu_size = s.dicom_max_pdu_bytes
        # The limits are enforced per connection by _admit; pynetdicom's own count also includes connections
        # being closed, so it is only a backstop here.
        ae.maximum_associations = 4 * s.dicom_max_associations
        ae.acse_timeout = s.dicom_acse_timeout_s
        ae.network_timeout = s.dicom_network_timeout_s
        ae.dimse_timeout = s.dicom_dimse_timeout_s
        ae.receiver = self
        return ae

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> int:
        """Start listening in the background; returns the bound port (useful with port 0)."""
        self._prepare_spool()
        if self.settings.dicom_ack_backlog > 0 and self.accepted is None:
            threads = 2 * max(1, int(getattr(self.service, "parallelism", 1)))  # one stores while its worker prepares the next
            self.accepted = AcceptedSpool(self.service, self.spool_dir / "accepted", backlog=self.settings.dicom_ack_backlog,
                                          threads=threads).start()
            self.accepted.recover(wait_s=RECOVER_WAIT_S)  # what an earlier run acknowledged is stored before we listen
        _install_spool()
        _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False  # worklist queries and answers name women
        self._log_peer_policy()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_DATA_RECV, self._on_data),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, _on_echo),
            (evt.EVT_C_FIND, self._on_find),
        ]
        ae = self._ae()
        server = cast(_BoundedServer, ae.make_server((self.host, self.port), evt_handlers=handlers, server_class=_BoundedServer))
        ae._servers.append(server)  # pynetdicom's shutdown() removes the server from this list
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-receiver", daemon=True)
        self._thread.start()
        self.port = server.server_address[1]
        log.info("DICOM receiver %s listening on %s:%d", self.ae_title, self.host, self.port)
        return self.port

    def stop(self) -> None:
        """Stop listening and close the connections still waiting to associate; associations under way finish."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for assoc in self._served():
            if assoc.requestor.primitive is None:
                self._close_silent(assoc)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._reap_finished()
        if self.accepted is not None:
            self.accepted.stop()  # files not yet ingested stay in spool/accepted for the next start
            self.accepted = None

    def wait_ingested(self, timeout_s: float) -> bool:
        """Block until every acknowledged C-STORE is ingested (tests, benchmarks); False on timeout."""
        accepted = self.accepted
        return accepted is None or accepted.wait_idle(timeout_s)

    def _prepare_spool(self) -> None:
        """Create the spool folder (0700: images of patients) and drop what a killed daemon left in it."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.spool_dir, 0o700)
        stale = [p for p in self.spool_dir.iterdir() if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.warning("removed %d partial DICOM transfer(s) left in %s by an earlier run; the modality resends what it was not told was stored", len(stale), self.spool_dir)

    def _log_peer_policy(self) -> None:
        if peer_rules.open_to_anyone(self.peers):
            log.warning("dicom_peers contains '*': any host that knows the AE title %s may store images. Fix: list the clinic's modalities as AE_TITLE@address.", self.ae_title)
        elif not self.peers and not self.settings.dicom_allow_loopback:
            log.warning("dicom_peers is empty and dicom_allow_loopback is off: the DICOM receiver refuses everyone. Fix: list the modalities in dicom_peers.")
        elif not self.peers:
            log.info("DICOM receiver accepts only this machine; list the modalities in dicom_peers (AE_TITLE@address) to receive from them")
        else:
            log.info("DICOM receiver accepts %s%s", ", ".join(map(str, self.peers)), " and this machine" if self.settings.dicom_allow_loopback else "")

    # -- connections and associations -------------------------------------------------------------
    def _admit(self, address: str) -> bool:
        """Called by the server for each new TCP connection, before any thread is started for it."""
        self._reap_finished()
        served = self._served()
        live = [Connection(a.requestor.address, a.requestor.primitive is None, self._opened.get(a, 0.0)) for a in served]
        decision = admit_connection(address, live, max_total=self.settings.dicom_max_associations, max_per_peer=self.settings.dicom_max_associations_per_peer)
        if decision.evict is not None:
            victim = served[decision.evict]
            self._close_silent(victim)
            self._log_limited(address, "DICOM connection from %s closed: it sent no association request, and %s", victim.requestor.address, decision.reason)
        if decision.admit:
            return True
        self._log_limited(address, "DICOM connection from %s closed: %s. It may retry once an association ends.", address, decision.reason)
        return False

    def _served(self) -> list[Association]:
        """This receiver's connections that are still open, oldest first."""
        with self._lock:
            gone = set(self._gone)
        return [
            a for a in threading.enumerate()
            if isinstance(a, Association) and a.is_acceptor and getattr(a.ae, "receiver", None) is self and a not in gone
        ]

    def _close_silent(self, assoc: Association) -> None:
        """Close a connection that has not sent its association request, and end its thread now.

        Shutting the socket down lets pynetdicom's network thread see a closed
        transport; the association thread waits for the request on
        ``dul.to_user_queue`` and takes a ``None`` there as its ACSE timeout.
        """
        with self._lock:
            self._gone.add(assoc)
        sock = getattr(assoc.dul.socket, "socket", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
        assoc.dul.to_user_queue.put(None)

    def _log_limited(self, key: str, msg: str, *args: Any) -> None:
        """Log a refusal at most once a minute per address: a flood must not flood the log too."""
        now = time.monotonic()
        if now - self._refused_logged.get(key, -_LOG_REFUSED_EVERY_S) >= _LOG_REFUSED_EVERY_S:
            if len(self._refused_logged) > 1000:  # many addresses: forget the ones already quiet
                self._refused_logged = {k: t for k, t in self._refused_logged.items() if now - t < _LOG_REFUSED_EVERY_S}
            self._refused_logged[key] = now
            log.warning(msg, *args)

    def _on_conn_open(self, event: Event) -> None:
        self._opened[event.assoc] = time.monotonic()

    def _on_requested(self, event: Event) -> None:
        """Refuse an association from an unknown peer before negotiating anything."""
        assoc = event.assoc
        calling, _ = _titles(assoc)
        address = assoc.requestor.address
        if peer_rules.is_allowed(self.peers, calling, address, allow_loopback=self.settings.dicom_allow_loopback):
            return
        log.warning(
            "DICOM association refused: calling AE %r from %s is not a known peer. "
            "Fix: add %s@%s to dicom_peers (env MAMMO_DICOM_PEERS) if it is one of the clinic's modalities.",
            calling, address, _escaped(calling), address,
        )
        assoc.acse.send_reject(*_REJECT_UNKNOWN_CALLING_AE)
        assoc.kill()  # as pynetdicom does after its own rejections: lets the DUL send the A-ASSOCIATE-RJ before the socket closes

    def _on_rejected(self, event: Event) -> None:
        """pynetdicom refused the association (wrong called AE title, no common presentation context)."""
        assoc = event.assoc
        calling, called = _titles(assoc)
        rj = assoc.acceptor.primitive
        log.warning(
            "DICOM association refused: calling AE %r from %s, called AE %r (%s)",
            calling, assoc.requestor.address, called, rj.reason_str if rj is not None else "rejected",
        )

    def _state(self, assoc: Association) -> _Inbound:
        with self._lock:
            state = self._inbound.get(assoc)
            if state is None:
                calling = str(assoc.requestor.ae_title or "").strip() or "unknown"
                state = _Inbound(calling, assoc.requestor.address, DatasetMeter(self.settings.ingest_max_file_bytes))
                self._inbound[assoc] = state
            return state

    def _on_data(self, event: Event) -> None:
        """Every PDU, before pynetdicom decodes it: abort the association once its dataset passes the size limit."""
        if event.data[:1] != b"\x04":  # only P-DATA-TF carries datasets (the first PDU comes before any state)
            return
        state = self._state(event.assoc)
        if state.oversize:
            return
        if state.meter.feed(event.data):
            state.oversize = True
            with self._lock:
                self.aborted.append((state.calling, state.address, state.meter.received))
            log.error(
                "C-STORE from %s (%s) aborted after %d bytes: the dataset is larger than ingest_max_file_bytes=%d. "
                "Fix: raise ingest_max_file_bytes if such images are expected, or check the modality's export settings.",
                state.calling, state.address, state.meter.received, state.meter.limit,
            )
            # Not blocking: this runs in the association's own network thread. pynetdicom still writes this
            # PDU (so the spool file is over the limit) and then ignores everything after the A-ABORT.
            event.assoc.abort(block=False)

    def _open_spool(self, assoc: Association, **kwargs: Any) -> Any:
        state = self._state(assoc)
        kwargs.update(dir=self.spool_dir, prefix=f"cstore-{_safe(state.calling)}-")
        f = tempfile.NamedTemporaryFile(**kwargs)
        with self._lock:
            state.files = [g for g in state.files if not g.closed] + [f]
        return f

    def _on_conn_close(self, event: Event) -> None:
        assoc = event.assoc
        with self._lock:
            closed_by_us = assoc in self._gone
            self._gone.add(assoc)
        if not closed_by_us and assoc.is_acceptor and assoc.requestor.primitive is None:
            # Closed before its association request: end the thread now, not after dicom_acse_timeout_s.
            assoc.dul.to_user_queue.put(None)
        self._reap(assoc)

    def _reap_finished(self) -> None:
        """Clean up after associations whose threads ended without a connection-closed event."""
        with self._lock:
            done = [a for a in self._inbound if not a.is_alive() and not a.dul.is_alive()]
        for assoc in done:
            self._reap(assoc)

    def _reap(self, assoc: Association) -> None:
        """Delete what an ended association left in the spool; quarantine the head of an aborted oversized dataset."""
        with self._lock:
            state = self._inbound.pop(assoc, None)
        if state is None:
            return
        for f in state.files:
            path = Path(f.name)
            with self._lock:
                if str(path) in state.claimed:
                    continue  # a C-STORE handler is ingesting it and deletes it when done
            f.close()
            if not path.exists():
                continue
            try:
                if state.oversize:
                    self.service.ingest_path(path, source=f"scp:{state.calling}", label=f"C-STORE from {state.calling} (aborted)")  # above the limit: quarantined unread
                else:
                    log.warning("incomplete C-STORE from %s (%s) discarded: the association ended mid-transfer; the modality resends it", state.calling, state.address)
            except MammoError as exc:
                log.error("could not quarantine the aborted C-STORE from %s: %s", state.calling, exc)
            finally:
                path.unlink(missing_ok=True)

    # -- services --------------------------------------------------------------------------------
    def _on_store(self, event: Event) -> int:
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip() if assoc else "unknown"
        source = f"scp:{calling}"
        try:
            path = event.dataset_path  # the spool file; None only if something in the process turned spooling off
        except AttributeError:
            path = None
        state = self._state(assoc) if path is not None else None
        if state is not None:
            with self._lock:
                state.claimed.add(str(path))
        try:
            if path is not None and self.accepted is not None:
                try:
                    if self.accepted.accept(Path(path), _safe(calling), wait_s=self.settings.dicom_dimse_timeout_s) is not None:
                        return STATUS_SUCCESS  # durable on the box: ingest follows (spool/accepted)
                except StorageFull:
                    raise
                except OSError as exc:
                    raise StorageFull(f"Cannot keep the received image ({exc.strerror}); the modality was told to retry.") from None
                log.warning("C-STORE from %s: %d received images still wait for ingest; this one is stored before it is acknowledged",
                            calling, self.accepted.backlog)
            if path is None:
                result = self.service.ingest_bytes(event.encoded_dataset(include_meta=True), source=source, label=f"C-STORE from {calling}")
            else:
                result = self.service.ingest_path(Path(path), source=source, label=f"C-STORE from {calling}")
        except StorageFull:
            log.error("C-STORE from %s refused: storage full", calling)
            return STATUS_OUT_OF_RESOURCES
        except MammoError as exc:
            log.error("C-STORE from %s failed: %s", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:
            log.error("C-STORE from %s failed unexpectedly (%s)", calling, type(exc).__name__)
            return STATUS_PROCESSING_FAILURE
        finally:
            if path is not None:
                Path(path).unlink(missing_ok=True)
                if state is not None:
                    with self._lock:
                        state.claimed.discard(str(path))
        return STATUS_SUCCESS if result.kept else STATUS_PROCESSING_FAILURE

    def _on_find(self, event: Event) -> Any:
        """Modality worklist C-FIND: one pending answer per matching scheduled screening (see edge_agent.pacs.worklist).

        Only associations ``_on_requested`` let in get here; the peer is checked again in case a rule changes.
        """
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title or "").strip()
        if not peer_rules.is_allowed(self.peers, calling, assoc.requestor.address, allow_loopback=self.settings.dicom_allow_loopback):
            yield STATUS_PROCESSING_FAILURE, None
            return
        worklist = getattr(self.service, "worklist", None)
        try:
            answers = list(worklist.find(event.identifier, calling)) if worklist is not None else []
        except Exception as exc:  # a broken query or an unreadable entry: the unit is told, the receiver goes on
            log.error("worklist C-FIND from %s failed (%s: %s)", calling, type(exc).__name__, exc)
            yield STATUS_PROCESSING_FAILURE, None
            return
        log.info("worklist C-FIND from %s (%s): %d scheduled screening(s)", calling, assoc.requestor.address, len(answers))
        for answer in answers:
            if event.is_cancelled:
                yield 0xFE00, None  # cancelled by the unit
                return
            yield STATUS_PENDING, answer
        yield STATUS_SUCCESS, None


def _titles(assoc: Association) -> tuple[str, str]:
    """Calling and called AE titles of an association request, as sent (the peer chooses them)."""
    rq = assoc.requestor.primitive
    if rq is None:
        return "", ""
    return str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip()


def _escaped(text: str) -> str:
    """Peer-chosen text made safe for one log line."""
    return text.encode("unicode_escape").decode("ascii")


def _on_echo(event: Event) -> int:
    return STATUS_SUCCESS


def _safe(ae_title: str) -> str:
    """An AE title as a file-name fragment (it labels the spool file, and so the ingest record)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", ae_title)[:16] or "unknown"
