"""The federation's Flower ServerApp: an asynchronous buffered loop over whichever boxes are connected.

There are no synchronous rounds to wait on.  The loop, every half second:

1. sends ``query.sync`` to each connected box that has no question open and
   whose last answer is ``poll-s`` old: the acknowledgements and rejections it
   owes that box, the newest release when the box runs an older one, and the
   signed manifests of rounds that took the box's updates;
2. pulls the answers that arrived: checks the box (its node was admitted for
   this certificate, the certificate is current and not revoked, by the CRL:
   ``provisioning.revocation.check_peer``), stores its update
   (``sync.coordinator.store.receive``: de-duplicated by hash) and queues the
   acknowledgement for the next question.  Exactly once = the box sends until
   acknowledged + de-duplication by hash + the acknowledgement by hash;
3. drops questions older than ``reply-timeout-s`` (a link that went down) and
   asks again later: nothing is lost, the update waits in the box's outbox;
4. when the strategy says so (K updates or the deadline,
   ``sync.coordinator.strategy``), adds the ciphertexts with the public
   context, records the round, and asks ONE connected clinic to decrypt the
   weighted mean (the coordinator holds no secret key); the mean goes to
   ``rounds/<n>/mean.npy`` for the publisher (``sync.coordinator.service``),
   which builds, signs and records the release.

What each box last said is written to ``links.json`` in the coordinator's
home for ``mammo coordinator status``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from edge_agent.errors import MammoError, PeerRefused
from provisioning import he as he_material
from provisioning.revocation import check_peer
from sync.coordinator import service, store, strategy
from sync.coordinator.store import Incoming
from sync.flower.protocol import DECRYPT, SYNC, Answer, DecryptAnswer, DecryptRequest, Poll, pack_release

log = logging.getLogger(__name__)

app = ServerApp()
TICK_S = 0.5
ADMITTED_EVERY_S = 2.0


@dataclass(frozen=True)
class LoopConfig:
    home: Path
    poll_s: float = 5.0
    reply_timeout_s: float = 120.0
    strategy: strategy.StrategyConfig = field(default_factory=strategy.StrategyConfig)

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> LoopConfig:
        def num(key: str, default: float) -> float:
            value = rc.get(key)
            return float(value) if value not in (None, "") else default

        d = strategy.StrategyConfig()
        cfg = strategy.StrategyConfig(int(num("buffer-k", d.buffer_k)), num("deadline-s", d.deadline_s), int(num("min-updates", d.min_updates)),
                                      int(num("max-staleness", d.max_staleness)), num("staleness-exponent", d.staleness_exponent))
        return cls(Path(str(rc["coordinator-home"])), num("poll-s", 5.0), num("reply-timeout-s", 120.0), cfg)


@dataclass
class BoxView:
    """What the loop remembers of one box between questions (rebuilt from the store after a restart)."""

    box_id: str
    owed: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # sha -> (status, reason) still to tell the box
    manifests_told: set[int] = field(default_factory=set)
    refused_release: str | None = None
    last: dict[str, Any] = field(default_factory=dict)


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Loop(grid, LoopConfig.from_run_config(dict(context.run_config))).run()


class Loop:
    def __init__(self, grid: Grid, config: LoopConfig) -> None:
        self.grid, self.config = grid, config
        self.paths = service.CoordinatorPaths(config.home)
        self.db = store.open_store(config.home)
        self.public_ctx = he_material.load_context(self.paths.public_context.read_bytes(), need_secret=False)
        self.values = int(self.paths.read_state()["trainable_values"])
        self.outstanding: dict[str, tuple[int, float, str]] = {}  # message id -> (node, sent at, kind)
        self.next_ask: dict[int, float] = {}
        self.boxes: dict[str, BoxView] = {}
        self.nodes: dict[int, service.Admitted] = {}
        self._nodes_read = 0.0
        self.decrypting: int | None = None

    # --- the loop ---------------------------------------------------------------------------------------------------------
    def run(self) -> None:
        log.info("federation loop up: poll every %.1f s, K=%d, deadline %.0f s", self.config.poll_s, self.config.strategy.buffer_k, self.config.strategy.deadline_s)
        while True:
            now = time.time()
            try:
                self.tick(now)
            except Exception:  # a Runtime API hiccup or one bad answer must not end the federation's run
                log.exception("federation loop: one pass failed; going on")
            time.sleep(TICK_S)

    def tick(self, now: float) -> None:
        if now - self._nodes_read > ADMITTED_EVERY_S:
            self.nodes, self._nodes_read = service.node_boxes(self.paths), now
        connected = [n for n in self.grid.get_node_ids() if n in self.nodes]
        busy = {node for node, _, _ in self.outstanding.values()}
        asks = [self._ask(node) for node in connected if node not in busy and self.next_ask.get(node, 0.0) <= now]
        if asks:
            for msg_id, msg in zip(self.grid.push_messages(asks), asks, strict=True):
                if msg_id:
                    self.outstanding[msg_id] = (msg.metadata.dst_node_id, now, msg.metadata.message_type)
        if self.outstanding:
            for reply in self.grid.pull_messages(list(self.outstanding)):
                self._on_reply(reply, now)
        for msg_id, (node, sent, kind) in list(self.outstanding.items()):
            if now - sent > self.config.reply_timeout_s:
                del self.outstanding[msg_id]
                self.next_ask[node] = now
                if kind == DECRYPT:
                    self.decrypting = None
                log.info("no answer from node %s to %s in %.0f s; asking again", node, kind, now - sent)
        self._aggregate(now, connected)
        service.write_json(self.paths.root / "links.json", {"updated_at": now, "connected": [self.nodes[n].box_id for n in connected],
                                                            "boxes": {b: v.last for b, v in self.boxes.items()}})

    # --- asking -------------------------------------------------------------------------------------------------------------
    def _box(self, box_id: str) -> BoxView:
        return self.boxes.setdefault(box_id, BoxView(box_id))

    def _ask(self, node: int) -> Message:
        view = self._box(self.nodes[node].box_id)
        model = store.current_model(self.db)
        release = None
        if view.last and view.last.get("model_version") != model.version and view.refused_release != model.version:
            folder = service.release_dir(self.paths, model.version)
            if folder.exists():
                release = pack_release(folder)
        manifests = tuple(m for n, m in self._manifests_for(view.box_id) if n not in view.manifests_told)
        poll = Poll(tuple(s for s, (st, _) in view.owed.items() if st != "rejected"),
                    tuple((s, r or "rejected") for s, (st, r) in view.owed.items() if st == "rejected"),
                    model.version, release, manifests)
        _, kit_path = service.renewal_paths(self.paths, view.box_id)
        if kit_path.exists():
            poll = dataclasses.replace(poll, kit=kit_path.read_bytes())
        return Message(poll.to_content(), dst_node_id=node, message_type=SYNC, ttl=self.config.reply_timeout_s)

    def _manifests_for(self, box_id: str) -> list[tuple[int, bytes]]:
        """Signed manifests of released rounds that took this box's updates (body and signature as one JSON text)."""
        import json

        rows = self.db.execute("SELECT DISTINCT r.round FROM fl_round_updates r JOIN fl_updates u USING (sha256) JOIN fl_rounds x USING (round) "
                               "WHERE u.box_id = ? AND x.released_at IS NOT NULL ORDER BY r.round", [box_id]).fetchall()
        out = []
        for (number,) in rows:
            signed = store.round_manifest(self.db, int(number))
            if signed:
                out.append((int(number), json.dumps({"round": int(number), "body": signed[0].decode(), "signature": signed[1].decode()}).encode()))
        return out

    # --- answers ------------------------------------------------------------------------------------------------------------
    def _on_reply(self, reply: Message, now: float) -> None:
        msg_id = reply.metadata.reply_to_message_id
        node, _, kind = self.outstanding.pop(msg_id, (reply.metadata.src_node_id, now, reply.metadata.message_type))
        self.next_ask[node] = now + self.config.poll_s
        if kind == DECRYPT:
            self.decrypting = None
        if reply.has_error():
            log.warning("node %s answered %s with an error: %s", node, kind, (reply.error.reason or "")[:300])
            return
        try:
            if kind == DECRYPT:
                self._on_decrypted(DecryptAnswer.from_content(reply.content))
            else:
                self._on_answer(node, Answer.from_content(reply.content), now)
        except (ValueError, KeyError) as exc:
            log.warning("node %s sent an unreadable %s answer: %s", node, kind, exc)

    def _on_answer(self, node: int, answer: Answer, now: float) -> None:
        admitted = self.nodes.get(node)
        try:
            if admitted is None or admitted.box_id != answer.box_id:
                raise PeerRefused(f"node {node} is admitted as box {admitted.box_id if admitted else None}, but answered as {answer.box_id}")
            check_peer(answer.certificate.encode(), self._ca(), self._crl(), dt.datetime.fromtimestamp(now, dt.UTC))
        except PeerRefused as exc:
            log.warning("answer from node %s refused, nothing stored: %s", node, exc)
            return
        view = self._box(answer.box_id)
        self._renewal(answer)
        for sha in answer.confirmed:
            view.owed.pop(sha, None)
        for check in answer.manifest_checks:
            if check.get("ok") and check.get("round") is not None:
                view.manifests_told.add(int(check["round"]))
        rr = answer.release_result
        if rr is not None and not rr.get("ok"):
            view.refused_release = str(rr.get("version"))
        receipt = None
        if answer.update is not None and answer.ciphertext is not None:
            try:
                incoming = Incoming.from_metadata(answer.box_id, answer.update)
                receipt = store.receive(self.db, incoming, answer.ciphertext, public_ctx=self.public_ctx, config=self.config.strategy, now=now)
            except MammoError as exc:  # damaged in transit (the box sends again) or malformed metadata
                log.warning("update from box %s not stored: %s", answer.box_id, exc)
            if receipt is not None:
                view.owed[receipt.sha256] = (receipt.status, receipt.reason)
                log.info("update %s… from box %s: %s", receipt.sha256[:12], answer.box_id, receipt.status)
        view.last = {"node_id": node, "last_contact_at": now, "model_version": answer.model_version, "outbox": answer.outbox,
                     "last_update": None if receipt is None else receipt.as_dict() | {"bytes": len(answer.ciphertext or b""), "at": now},
                     "release_result": rr, "manifest_checks": list(answer.manifest_checks)[-3:]}

    def _renewal(self, answer: Answer) -> None:
        """Pass a box's renewal request to the authority's process, and forget it once the box presents the renewed certificate."""
        request, kit_path = service.renewal_paths(self.paths, answer.box_id)
        if kit_path.exists():
            from cryptography import x509

            from provisioning.kit import parse_kit

            try:
                issued = parse_kit(kit_path.read_bytes()).certificate.serial_number
                presented = x509.load_pem_x509_certificate(answer.certificate.encode()).serial_number
            except (MammoError, ValueError):
                return
            if issued == presented:
                kit_path.unlink(missing_ok=True)
                request.unlink(missing_ok=True)
                log.info("box %s now presents its renewed certificate", answer.box_id)
        elif answer.renewal and not request.exists():
            request.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            service.write_json(request, answer.renewal)
            log.info("box %s asks for a renewed certificate", answer.box_id)

    def _ca(self) -> Any:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.paths.ca.read_bytes())

    def _crl(self) -> Any:
        from cryptography import x509

        return x509.load_pem_x509_crl(self.paths.crl.read_bytes())

    # --- rounds -------------------------------------------------------------------------------------------------------------
    def _aggregate(self, now: float, connected: list[int]) -> None:
        number = store.open_round(self.db)
        if number is None:
            model = store.current_model(self.db)
            plan = strategy.plan_round(store.buffer(self.db), current_generation=model.generation, spec_digest=model.spec_digest, now=now,
                                       config=self.config.strategy)
            if plan is None:
                return
            if plan.rejected:
                store.reject(self.db, plan.rejected)
                for sha, reason in plan.rejected:
                    row = self.db.execute("SELECT box_id FROM fl_updates WHERE sha256 = ?", [sha]).fetchone()
                    if row:
                        self._box(row[0]).owed[sha] = ("rejected", reason)
            if not plan.contributions:
                return
            aggregate = strategy.aggregate(plan, self.public_ctx, lambda sha: store.ciphertext(self.db, sha), expect_values=self.values)
            number = store.commit_round(self.db, plan, aggregate, now=now)
            log.info("round %s aggregated (%s: %d updates)", number, plan.trigger, len(plan.contributions))
        if self.decrypting is not None or service.mean_path(self.paths, number).exists() or not connected:
            return
        node = connected[0]
        request = DecryptRequest(number, store.round_aggregate(self.db, number))
        msg = Message(request.to_content(), dst_node_id=node, message_type=DECRYPT, ttl=self.config.reply_timeout_s)
        for msg_id in self.grid.push_messages([msg]):
            if msg_id:
                self.outstanding[msg_id] = (node, now, DECRYPT)
                self.decrypting = number
                log.info("round %s: asked box %s to decrypt the weighted mean", number, self.nodes[node].box_id)

    def _on_decrypted(self, answer: DecryptAnswer) -> None:
        if store.open_round(self.db) != answer.round_id:
            return
        if answer.mean.size != self.values:
            log.warning("box %s decrypted %d values for round %s, expected %d", answer.box_id, answer.mean.size, answer.round_id, self.values)
            return
        service.write_mean(self.paths, answer.round_id, answer.mean)
        log.info("round %s decrypted by box %s; the publisher builds its release", answer.round_id, answer.box_id)
