"""``mammo bench sync``: what federated sync costs on the wire and in time, and what a dropping link does to it.

A real federation on loopback (``sync.flower.local``): three boxes, each
behind its own counting proxy (``sync.proxy``), one encrypted update each,
K = 3, the boxes already running the federation's base model.  Per clinic
and round: bytes up (the update, answers) and down (the coordinator's
questions, the signed release) from link-up until the box runs the new
release, and the time from link-up (its SuperNode starts) to the coordinator
storing its update.

Then one box's link is cut every ``cut_every_s`` seconds while it sends a
second update.  ``lost`` counts updates placed but never stored,
``duplicated`` updates stored more than once (both must be 0),
``resends_recognised`` the times the coordinator received an update it
already had (what de-duplication absorbed), and ``resent_bytes`` the bytes
sent up under drops beyond the same box's upload of its first update on the
link that stayed up (the peer of the comparison).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sync import outbox
from sync.coordinator import store
from sync.flower.local import LocalFederation, wait_for
from sync.proxy import DroppingProxy


def run(*, cut_every_s: float = 5.0, keep: Path | None = None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mammo-bench-sync-")) if keep is None else keep
    fed = LocalFederation.create(root / "federation", 3, buffer_k=3, deadline_s=3600, min_updates=1, poll_s=1.0, admit_every_s=2.0)
    proxies = [DroppingProxy(("127.0.0.1", fed.port), cut_every_s=None).start() for _ in fed.boxes]
    try:
        fed.start_coordinator()
        for i in range(3):
            fed.install_base(i)  # the boxes already run the federation's base model: the round's bytes are this round's
        shas = [fed.place(i, seed=i) for i in range(3)]
        link_up: dict[int, float] = {}
        for i, proxy in enumerate(proxies):
            link_up[i] = time.time()
            fed.start_box(i, superlink=proxy.address)
        acked_up: dict[int, int] = {}

        def all_acked() -> bool:
            for i, sha in enumerate(shas):
                entry = outbox.get(fed.boxes[i].db, sha)
                if i not in acked_up and entry is not None and entry.state == "acknowledged":
                    acked_up[i] = proxies[i].stats().up
            return len(acked_up) == 3

        wait_for("every update acknowledged", all_acked, 300)
        version = wait_for("the round's release", lambda: (v := fed.current_version()) != "0.1.0" and v, 300)
        wait_for("the release active on every box", lambda: all(_active(fed, i) == version for i in range(3)), 300)
        db = fed.store_db()
        try:
            received = {r[0]: (r[1], r[2]) for r in db.execute("SELECT sha256, received_at, bytes FROM fl_updates").fetchall()}
        finally:
            db.conn.close()
        per_clinic = []
        for i, proxy in enumerate(proxies):
            s = proxy.stats()
            per_clinic.append({"box": i, "bytes_up": s.up, "bytes_down": s.down, "update_bytes": received[shas[i]][1],
                               "link_up_to_accepted_s": round(received[shas[i]][0] - link_up[i], 2), "connections": s.connections})
        dropping = _dropping(fed, cut_every_s, baseline_up=acked_up[0])
        return {"boxes": 3, "buffer_k": 3, "release_version": version, "per_clinic": per_clinic, "dropping_link": dropping,
                "peer": "resent_bytes compares with the same box's first update on a link that never dropped",
                "note": "loopback with TLS; each exchange starts a ClientApp process on the box, which dominates the time"}
    finally:
        fed.close()
        for p in proxies:
            p.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _active(fed: LocalFederation, i: int) -> str | None:
    row = fed.boxes[i].db.execute("SELECT version FROM model_activations ORDER BY id DESC LIMIT 1").fetchone()
    return str(row[0]) if row else None


def _dropping(fed: LocalFederation, cut_every_s: float, baseline_up: int) -> dict[str, Any]:
    fed.stop_box(0)
    with DroppingProxy(("127.0.0.1", fed.port), cut_every_s=cut_every_s) as proxy:
        sha = fed.place(0, seed=99)
        fed.start_box(0, superlink=proxy.address)
        wait_for("the update across the dropping link", lambda: (e := outbox.get(fed.boxes[0].db, sha)) is not None and e.state == "acknowledged", 300)
        stats = proxy.stats()
    fed.stop_box(0)
    db = fed.store_db()
    try:
        rows = db.execute("SELECT count(*), coalesce(sum(duplicates), 0) FROM fl_updates WHERE sha256 = ?", [sha]).fetchone()
        stored = store.receipt_of(db, sha) is not None
    finally:
        db.conn.close()
    return {"cut_every_s": cut_every_s, "cuts": stats.cuts, "connections": stats.connections, "bytes_up": stats.up, "bytes_down": stats.down,
            "lost": 0 if stored else 1, "duplicated": max(0, int(rows[0]) - 1), "resends_recognised": int(rows[1]),
            "baseline_up_bytes": baseline_up, "resent_bytes": max(0, stats.up - baseline_up)}
