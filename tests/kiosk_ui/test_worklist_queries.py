"""What the worklist asks SQLite, checked on the statements it really issues (traced on its own connection) against a
real box database: each rank starts from an index for the rows it returns, and the workflow state is looked up for the
rows shown, not for every study a rank sorts or a search reads. Speed itself is `mammo bench kiosk`'s business."""

from __future__ import annotations

import sqlite3

from kiosk_ui import synthetic
from kiosk_ui.records import WorklistQuery

from .conftest import Kiosk


def _traced(conn: sqlite3.Connection, call) -> tuple[object, list[str]]:
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        return call(), statements
    finally:
        conn.set_trace_callback(None)


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]


def _rank_queries(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().startswith("SELECT s.study_uid, s.pseudonym") and "ORDER BY s.first_seen DESC" in s]


def test_incomplete_studies_come_first_from_the_index_of_incomplete_results_not_a_walk_over_every_study(kiosk: Kiosk):
    svc = kiosk.services
    incomplete = synthetic.ingest_study(svc.ingest, seed=3, views=2)
    synthetic.write_result(svc.ingest, incomplete, triage=None, score=None, status="incomplete")
    rows, statements = _traced(svc.db.conn, svc.worklist)
    assert [r.study_uid for r in rows][:2] == [incomplete, kiosk.studies["priority"]]
    first_rank = [s for s in _rank_queries(statements) if "r.status = 'incomplete'" in s and "r.status != 'incomplete'" not in s]
    assert len(first_rank) == 1, statements
    plan = _plan(svc.db.conn, first_rank[0])
    assert any("infer_results_incomplete" in step for step in plan), plan
    assert not any("ingest_studies_first_seen" in step or step.startswith("SCAN s") for step in plan), plan


def test_the_workflow_state_is_looked_up_for_the_rows_shown_not_inside_the_rank_queries(kiosk: Kiosk):
    svc = kiosk.services
    svc.mark_seen(_doctor(kiosk), kiosk.studies["priority"])
    for query in (WorklistQuery(), WorklistQuery(q="sahin")):
        rows, statements = _traced(svc.db.conn, lambda q=query: svc.worklist(q))
        ranks = _rank_queries(statements)
        assert ranks, statements
        for sql in ranks:
            assert not any("CORRELATED SCALAR SUBQUERY" in step for step in _plan(svc.db.conn, sql)), sql
    flows = {r.study_uid: r.workflow for r in svc.worklist()}
    assert flows == {kiosk.studies["priority"]: "seen", kiosk.studies["normal"]: "new", kiosk.studies["pending"]: "new"}
    # filtering on the state still asks SQLite for it, and finds the same rows
    seen = svc.worklist(WorklistQuery(flow="seen"))
    assert [(r.study_uid, r.workflow) for r in seen] == [(kiosk.studies["priority"], "seen")]


def _doctor(kiosk: Kiosk):
    return next(u for u, _ in kiosk.services.users() if u.username == "doktor")
