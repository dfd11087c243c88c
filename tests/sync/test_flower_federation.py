"""A real federation on loopback: Flower SuperLink with TLS and SuperNode authentication, three SuperNodes, CKKS updates.

One federation serves the whole module (Flower costs seconds per exchange);
the tests run in file order and each leaves it usable for the next, except
the last, which revokes a box for good.
"""

from __future__ import annotations

import io
import json
import socket
import ssl
import tarfile
from pathlib import Path

import pytest

from edge_agent.store import open_database
from provisioning import he as he_material
from sync import box_side, outbox
from sync.coordinator import store
from sync.flower.local import LocalFederation, wait_for
from sync.flower.protocol import Poll, pack_release
from sync.proxy import DroppingProxy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    f = LocalFederation.create(tmp_path_factory.mktemp("federation"), 3, buffer_k=3, deadline_s=6, min_updates=1, max_staleness=8,
                               poll_s=1.0, admit_every_s=2.0, reply_timeout_s=20.0,
                               box_env={"MAMMO_SYNC_RENEW_DAYS": "30"})  # every box renews its 30-day certificate at its first syncs
    f.start_coordinator()
    yield f
    f.close()


def _rows(fed: LocalFederation, sql: str, params: list[object] | None = None) -> list[tuple]:
    db = fed.store_db()
    try:
        return db.execute(sql, params or []).fetchall()
    finally:
        db.conn.close()


def _state(fed: LocalFederation, i: int, sha: str) -> str | None:
    entry = outbox.get(fed.boxes[i].db, sha)
    return entry.state if entry else None


def _active(fed: LocalFederation, i: int) -> str | None:
    row = fed.boxes[i].db.execute("SELECT version FROM model_activations ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def _settled(fed: LocalFederation, boxes: list[int]) -> bool:
    """Nothing buffered or half-released at the coordinator, and every listed box runs the newest model."""
    db = fed.store_db()
    try:
        quiet = not store.buffer(db) and store.open_round(db) is None
        version = store.current_model(db).version
    finally:
        db.conn.close()
    return quiet and all(_active(fed, i) == version for i in boxes)


def _audit(fed: LocalFederation, i: int, action: str) -> list[tuple]:
    return fed.boxes[i].db.execute("SELECT object, details FROM audit_log WHERE action = ? ORDER BY seq", [action]).fetchall()


def test_three_boxes_over_tls_each_update_aggregated_once_and_the_signed_release_activated(fed: LocalFederation) -> None:
    shas = [fed.place(i, seed=i) for i in range(3)]
    for i in range(3):
        fed.start_box(i)
    for i, sha in enumerate(shas):
        wait_for(f"box {i}'s update acknowledged", lambda i=i, sha=sha: _state(fed, i, sha) == "acknowledged", 180)
    wait_for("the round released and activated on every box", lambda: _settled(fed, [0, 1, 2]), 180)

    rows = _rows(fed, "SELECT sha256, state, box_id FROM fl_updates ORDER BY received_at")
    assert sorted(r[0] for r in rows) == sorted(shas)  # each update stored exactly once
    assert {r[1] for r in rows} == {"aggregated"}
    assert {r[2] for r in rows} == {b.box_id for b in fed.boxes}
    version = fed.current_version()
    assert "+fl." in version
    for i in range(3):
        assert _active(fed, i) == version
        verified = [json.loads(d)["included"] for _, d in _audit(fed, i, "sync_round_verified")]
        assert [shas[i]] in verified  # the box found its own update in a signed round manifest
        activation = fed.boxes[i].db.execute("SELECT selftest FROM model_activations ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert json.loads(activation)["signed_by"].startswith("federation key")
    for i in range(3):  # renewal at sync: each box asked, the coordinator's authority issued, the box installed the new kit
        wait_for(f"box {i}'s renewed certificate", lambda i=i: _audit(fed, i, "sync_certificate_renewed"), 60)
    # The coordinator's HE context has no secret key.
    assert not he_material.load_context(fed.paths.public_context.read_bytes(), need_secret=False).is_private()
    # The SuperLink speaks TLS with a certificate from the federation CA (and a client trusting another CA is refused).
    ctx = ssl.create_default_context(cafile=str(fed.paths.ca))
    with socket.create_connection(("127.0.0.1", fed.port)) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() is not None
    with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(("127.0.0.1", fed.port)) as raw:
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_box_killed_mid_upload_and_restarted_delivers_its_update_once(fed: LocalFederation) -> None:
    sha = fed.place(0, seed=100)
    wait_for("the upload to start", lambda: _state(fed, 0, sha) == "sending", 90, every=0.05)
    fed.stop_box(0, kill=True)  # SIGKILL to the SuperNode and its ClientApp, mid-exchange
    assert _state(fed, 0, sha) == "sending"
    fed.start_box(0)
    # Flower counts the killed node online until its heartbeat lapses (~1 min) and refuses it meanwhile; the supervisor retries.
    wait_for("the update acknowledged after the restart", lambda: _state(fed, 0, sha) == "acknowledged", 240)
    assert len(_rows(fed, "SELECT 1 FROM fl_updates WHERE sha256 = ?", [sha])) == 1


def test_update_sent_again_after_the_coordinator_lost_its_acknowledgement_is_stored_once(fed: LocalFederation) -> None:
    assert fed.coordinator is not None
    for attempt in range(3):
        sha = fed.place(1, seed=200 + attempt)
        wait_for("the coordinator to store the update", lambda sha=sha: _rows(fed, "SELECT 1 FROM fl_updates WHERE sha256 = ?", [sha]), 120, every=0.05)
        fed.stop_box(1)  # the acknowledgement travels in the next question: the box goes away before it comes...
        lost_ack = _state(fed, 1, sha) != "acknowledged"
        fed.coordinator.restart_run()  # ...and the coordinator restarts, forgetting what it still owed the box
        fed.start_box(1)
        wait_for("the acknowledgement", lambda sha=sha: _state(fed, 1, sha) == "acknowledged", 120)
        if lost_ack:
            break
    assert lost_ack, "the acknowledgement always reached the box first; the resend path was not exercised"
    rows = _rows(fed, "SELECT count(*), sum(duplicates) FROM fl_updates WHERE sha256 = ?", [sha])
    assert rows[0][0] == 1
    assert rows[0][1] >= 1  # the box sent it again; the coordinator knew it by its hash and did not store it twice


def test_box_offline_for_several_rounds_returns_over_a_dropping_link_and_delivers_once(fed: LocalFederation) -> None:
    fed.stop_box(2)
    offline_sha = fed.place(2, seed=300)
    start = fed.current_version()
    for r in range(2):
        before = fed.current_version()
        fed.place(0, seed=310 + r)
        fed.place(1, seed=320 + r)
        wait_for(f"round {r + 1} while box 2 is away", lambda before=before: fed.current_version() != before, 240)
    assert fed.current_version() != start
    assert _state(fed, 2, offline_sha) == "queued"
    # The village link comes back, and drops every five seconds (sync.proxy cuts every connection, mid-message or not).
    with DroppingProxy(("127.0.0.1", fed.port), cut_every_s=5.0) as proxy:
        fed.start_box(2, superlink=proxy.address)
        wait_for("the returning box's update acknowledged", lambda: _state(fed, 2, offline_sha) == "acknowledged", 240)
        stats = proxy.stats()
        fed.stop_box(2)
    fed.start_box(2)
    wait_for("its update aggregated", lambda: _rows(fed, "SELECT 1 FROM fl_updates WHERE sha256 = ? AND state = 'aggregated'", [offline_sha]), 120)
    rows = _rows(fed, "SELECT u.bytes, r.staleness FROM fl_updates u JOIN fl_round_updates r USING (sha256) WHERE u.sha256 = ?", [offline_sha])
    assert len(rows) == 1  # once; and intact: the store re-hashes the ciphertext before keeping it
    assert rows[0][1] >= 2  # trained two generations back: weighted down, not lost
    assert stats.cuts > 0 and stats.connections > 1 and stats.up > rows[0][0]


def test_tampered_release_is_refused_and_the_model_stays(fed: LocalFederation) -> None:
    box = fed.boxes[0]
    before = _active(fed, 0)
    version = fed.current_version()
    data = pack_release(fed.paths.releases / version)
    # Flip one byte of the INT8 model inside the archive: the manifest no longer matches, whatever the signature.
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            body = bytearray(src.extractfile(m).read())
            if m.name == "model_int8.onnx":
                body[len(body) // 2] ^= 0xFF
            m.size = len(body)
            dst.addfile(m, io.BytesIO(bytes(body)))
    fed.stop_box(0)  # the box's own exchanges stay out of the way while we hand it a release directly
    try:
        reply = box_side.answer(box.home, Poll(release_version="9.9.9+fl.99", release=out.getvalue()))
    finally:
        fed.start_box(0)
    assert reply.release_result is not None and reply.release_result["ok"] is False
    assert "SHA-256" in reply.release_result["error"] or "signature" in reply.release_result["error"]
    assert _active(fed, 0) == before
    assert not (box.settings.models_dir / "9.9.9+fl.99").exists()
    assert _audit(fed, 0, "sync_release_refused")[-1][0] == "9.9.9+fl.99"


def test_revoked_box_is_refused_at_connection_and_nothing_it_sends_is_stored(fed: LocalFederation) -> None:
    box = fed.boxes[2]
    fed.stop_box(2)
    sha = fed.place(2, seed=500)
    fed.auth.revoke(box.box_id)
    wait_for("the coordinator to withdraw the box's key", lambda: box.box_id not in {a["box_id"] for a in _admitted(fed)}, 60)
    node = fed.start_box(2)
    wait_for("the revoked SuperNode to be turned away twice", lambda: len(node.exits) >= 2, 90)
    assert not _rows(fed, "SELECT 1 FROM fl_updates WHERE sha256 = ?", [sha])
    assert _state(fed, 2, sha) in ("queued", "sending")  # kept on the box, never delivered
    refused = json.loads((fed.paths.admitted).read_text())["refused"]
    assert any(r["box_id"] == box.box_id and "revoked" in r["reason"] for r in refused)


def _admitted(fed: LocalFederation) -> list[dict]:
    return list(json.loads(Path(fed.paths.admitted).read_text())["nodes"].values())


def test_a_box_database_is_readable_while_its_supernode_runs(fed: LocalFederation) -> None:
    """The kiosk and the console read the outbox while ClientApps write it (WAL, separate connections)."""
    db = open_database(fed.boxes[0].settings.db_path)
    try:
        assert outbox.status(db).counts["acknowledged"] >= 1
    finally:
        db.conn.close()
