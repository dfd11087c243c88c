"""A finished round through the real update sink: sync's durable outbox (resolved by name; the box never imports sync)."""

from __future__ import annotations

import numpy as np

from edge_agent.learning import ledger, runner, sink
from edge_agent.store import open_database


def test_a_round_places_its_update_in_the_sync_outbox_once(clinic, monkeypatch):
    monkeypatch.setenv("MAMMO_KEYSTORE_PASSPHRASE", "test-passphrase")  # the outbox opens the box keystore as the daemon would
    settings = clinic.settings(MAMMO_TRAIN_UPDATE_SINK="sync.outbox:place_update", MAMMO_TRAIN_STEPS="6")
    out = runner.run(settings)
    assert out.status == "done"
    db = open_database(settings.db_path)
    try:
        from sync import outbox

        entry = outbox.get(db, out.update_id)
        assert entry is not None and entry.state == "awaiting_kit"  # no startup kit on this box: kept sealed until one arrives
        assert entry.example_count == out.examples and abs(entry.epsilon - out.epsilon_round) < 1e-12
        assert entry.base_model_version == "0.1.0" and entry.spec.size == 20258
        [r] = ledger.rounds(db)
        assert r.update_id == out.update_id and r.state == "done"
        # placing the same round again (a process that died after placing, before recording) changes nothing
        place = sink.resolve(settings.train_update_sink)
        again = sink.build_update(update_id=out.update_id, base_model_version="0.1.0", names=entry.spec.names, shapes=entry.spec.shapes,
                                  delta=np.zeros(20258, np.float32), example_count=1, epsilon=0.1, delta_dp=1e-5,
                                  noise_multiplier=1.0, local_metrics={})
        assert place(db, settings.home, again) == out.update_id
        assert db.execute("SELECT count(*) FROM sync_outbox").fetchone()[0] == 1
    finally:
        db.conn.close()
