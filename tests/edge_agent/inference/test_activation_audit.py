"""Model activations and rollbacks reach the audit trail, in the activation's own transaction; a refused release does not."""

import pytest

from edge_agent import audit
from edge_agent.errors import ModelError
from edge_agent.inference.activation import ModelRegistry


def test_activations_and_a_rollback_are_audited_and_the_trail_verifies(box, shipped_dir, release_dir):
    reg = ModelRegistry(box.db, box.settings, shipped_dir=shipped_dir)
    first = reg.ensure_active()
    new = reg.activate(str(release_dir), by="tech", reason="new model")
    with pytest.raises(ModelError):
        reg.activate("9.9.9", by="tech", reason="no such release")
    reg.rollback(by="tech")
    trail = [e for e in audit.entries(box.db) if e.action == "model_activate"]
    assert [(e.actor, e.object) for e in trail] == [("system", first.version), ("tech", new.version), ("tech", first.version)]
    assert '"reason":"first start"' in trail[0].details and f'"manifest_sha256":"{new.manifest_sha256}"' in trail[1].details
    assert '"reason":"rollback from' in trail[2].details
    assert audit.verify(box.db, box.keystore).ok
