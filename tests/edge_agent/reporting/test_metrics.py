"""The Prometheus endpoint scraped over HTTP from a real box and parsed with prometheus-client's own parser; the shipped
dashboard and alert rules use only metric names it exports."""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.reporting import metrics
from edge_agent.reporting.facts import table_exists
from edge_agent.store import open_database, transaction

from .conftest import report_worker

PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every target


@pytest.fixture
def endpoint(clinic_factory, fhir_server):
    """A box that screened three studies (one delivered to the FHIR endpoint), serving /metrics on a free loopback port."""
    clinic = clinic_factory(report_fhir_enabled="true", report_fhir_url=fhir_server.url)
    uids = [clinic.screen(seed=s) for s in (31, 32, 33)]
    clinic.confirm(uids[0])
    report_worker(clinic).run(drain=True)
    db = open_database(clinic.box.settings.db_path)
    collector = metrics.BoxCollector(db, clinic.box.settings, box_id=clinic.box.keystore.box_id)
    server = metrics.MetricsServer(metrics.registry_for(collector), "127.0.0.1", 0).start()
    yield clinic, uids, f"http://127.0.0.1:{server.port}"
    server.stop()
    db.conn.close()


def scrape(base: str) -> dict[str, dict]:
    resp = httpx.get(base + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(resp.text):
        out[fam.name] = {"type": fam.type, "samples": fam.samples}
    return out


def value(fams, family, sample=None, **labels):
    for s in fams[family]["samples"]:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample or family} {labels}")


def test_metrics_show_live_figures_of_the_box(endpoint):
    clinic, uids, base = endpoint
    fams = scrape(base)
    db = clinic.box.db
    # studies by triage level: what infer_results holds
    by_triage = dict(db.execute("SELECT triage, count(*) FROM infer_results WHERE status = 'done' GROUP BY triage").fetchall())
    assert fams["mammo_studies_screened"]["type"] == "counter"
    for triage, n in by_triage.items():
        assert value(fams, "mammo_studies_screened", "mammo_studies_screened_total", triage=triage) == n
    assert sum(s.value for s in fams["mammo_studies_screened"]["samples"] if s.name.endswith("_total")) == 3
    # the latency histogram: one observation per study, for the profile that ran them
    assert fams["mammo_inference_latency_seconds"]["type"] == "histogram"
    assert value(fams, "mammo_inference_latency_seconds", "mammo_inference_latency_seconds_count", profile="cpu-small") == 3
    assert value(fams, "mammo_inference_latency_seconds", "mammo_inference_latency_seconds_bucket", profile="cpu-small", le="+Inf") == 3
    total_ms = db.execute("SELECT sum(elapsed_ms) FROM infer_results").fetchone()[0]
    assert value(fams, "mammo_inference_latency_seconds", "mammo_inference_latency_seconds_sum", profile="cpu-small") == pytest.approx(total_ms / 1000)
    # queues: the report jobs are done, the infer queue drained; every known queue has its series
    assert value(fams, "mammo_queue_jobs", queue="report", state="done") == 4  # three triggers, one send
    assert value(fams, "mammo_queue_jobs", queue="infer", state="ready") == 0
    assert value(fams, "mammo_queue_dead_letters", queue="notify") == 0
    assert value(fams, "mammo_queue_oldest_ready_age_seconds", queue="report") == 0
    # the model, the reports, the disk, the box
    version, sha = db.execute("SELECT version, manifest_sha256 FROM model_activations ORDER BY id DESC LIMIT 1").fetchone()
    assert value(fams, "mammo_model_info", version=version, manifest_sha256=sha) == 1
    assert value(fams, "mammo_reports", channel="fhir", state="delivered") == 1
    assert value(fams, "mammo_reports", channel="fhir", state="awaiting_confirmation") == 2
    assert value(fams, "mammo_disk_free_bytes") > 0
    assert value(fams, "mammo_box_info", box_id=clinic.box.keystore.box_id) == 1
    # not enrolled: the certificate family is declared with no sample, and says so
    assert fams["mammo_certificate_days_left"]["samples"] == [] and value(fams, "mammo_enrolled") == 0
    # no NaN anywhere
    assert not [s for f in fams.values() for s in f["samples"] if math.isnan(s.value)]


def test_a_job_waiting_shows_its_age_and_a_dead_letter_counts(endpoint):
    clinic, _, base = endpoint
    q = clinic.box.queue
    q.enqueue("notify", {"kind": "sms", "study_uid": "x", "to": "+905000000000"}, key="age-test")
    with transaction(clinic.box.db) as db:
        db.execute("UPDATE jobs SET available_at = available_at - 600 WHERE key = 'age-test'")
    job = q.claim("report")
    assert job is None
    q.enqueue("outbox", {"x": 1}, key="dead-test", max_attempts=1)
    q.fail(q.claim("outbox"), "gave up")
    fams = scrape(base)
    assert value(fams, "mammo_queue_oldest_ready_age_seconds", queue="notify") >= 600
    assert value(fams, "mammo_queue_jobs", queue="notify", state="ready") == 1
    assert value(fams, "mammo_queue_dead_letters", queue="outbox") == 1


def test_sync_and_privacy_figures_come_from_their_tables(endpoint):
    clinic, _, base = endpoint
    db = clinic.box.db
    if not (table_exists(db, "sync_outbox") and table_exists(db, "learning_generations")):
        pytest.skip("this tree has no sync outbox or learning ledger migration yet")
    now = time.time()
    with transaction(db):
        db.execute("INSERT INTO sync_outbox (update_id, sha256, base_model_version, spec, spec_digest, value_count, example_count, epsilon,"
                   " delta_dp, noise_multiplier, local_metrics, he_version, state, bytes, created_at, placed_at, closed_at)"
                   " VALUES ('u1', 'aa', '0.1.0', '{}', 'd', 10, 5, 0.5, 1e-5, 1.1, '{}', 1, 'acknowledged', 1200000, ?, ?, ?)",
                   [now - 7200, now - 7200, now - 3600])
        db.execute("INSERT INTO sync_outbox (update_id, sha256, base_model_version, spec, spec_digest, value_count, example_count, epsilon,"
                   " delta_dp, noise_multiplier, local_metrics, he_version, state, created_at, placed_at)"
                   " VALUES ('u2', 'bb', '0.1.0', '{}', 'd', 10, 5, 0.5, 1e-5, 1.1, '{}', 1, 'queued', ?, ?)", [now - 900, now - 900])
        db.execute("INSERT INTO learning_generations (base_model_version, epsilon_budget, delta, created_at) VALUES ('0.1.0', 1.0, 1e-5, ?)", [now])
        db.execute("INSERT INTO learning_rounds (round_id, base_model_version, state, noise_multiplier, max_grad_norm, sample_rate, steps, delta,"
                   " epsilon_round, epsilon_total, examples, seed, reserved_at, updated_at) VALUES"
                   " ('r1', '0.1.0', 'done', 1.1, 1.0, 0.1, 10, 1e-5, 0.4, 0.4, 50, 1, ?, ?),"
                   " ('r2', '0.1.0', 'released', 1.1, 1.0, 0.1, 10, 1e-5, 0.3, 0.7, 50, 2, ?, ?)", [now, now, now, now])
    fams = scrape(base)
    assert value(fams, "mammo_sync_updates", state="queued") == 1 and value(fams, "mammo_sync_updates", state="acknowledged") == 1
    assert value(fams, "mammo_sync_lag_seconds") >= 900
    assert value(fams, "mammo_sync_sent_bytes", "mammo_sync_sent_bytes_total") == 1200000
    assert value(fams, "mammo_privacy_epsilon_spent", generation="0.1.0") == pytest.approx(0.4)  # the released round gave its share back
    assert value(fams, "mammo_privacy_epsilon_budget", generation="0.1.0") == 1.0


def test_only_the_metrics_path_is_served(endpoint):
    _, _, base = endpoint
    assert httpx.get(base + "/", timeout=10).status_code == 404
    assert httpx.get(base + "/metrics/../admin", timeout=10).status_code == 404


def _exprs() -> list[str]:
    dash = json.loads((metrics.MONITORING_DIR / "grafana-dashboard.json").read_text(encoding="utf-8"))
    rules = yaml.safe_load((metrics.MONITORING_DIR / "alert-rules.yml").read_text(encoding="utf-8"))
    out = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    out += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    out += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return out


def test_the_dashboard_and_alert_rules_use_only_metrics_the_box_exports(endpoint):
    _, _, base = endpoint
    fams = scrape(base)
    exported = set(fams) | {s.name for f in fams.values() for s in f["samples"]}
    for fam, f in fams.items():  # a declared family's sample names, even when it has no sample yet
        exported |= {fam + suffix for suffix in {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(f["type"], ())}
    exprs = _exprs()
    assert len(exprs) > 15
    used = {m for e in exprs for m in re.findall(r"\bmammo_[a-z0-9_]+", e)}
    assert used and not used - exported, f"not exported: {sorted(used - exported)}"
    selectors = {m for e in exprs for m in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", e)}
    assert selectors - exported <= PROMETHEUS_OWN, sorted(selectors - exported)
    # what the issue asks the fleet to watch
    rules = yaml.safe_load((metrics.MONITORING_DIR / "alert-rules.yml").read_text(encoding="utf-8"))
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"MammoBoxSilent", "MammoQueueGrowing", "MammoDiskLow", "MammoCertificateExpiring", "MammoPrivacyBudgetNearlySpent"} <= names


def test_an_enrolled_box_exports_its_certificate_days_left(endpoint, tmp_path):
    from provisioning import enrolment
    from provisioning.authority import Authority
    from provisioning.keystore import KdfParams

    clinic, _, base = endpoint
    box = clinic.box
    authority = Authority.init(tmp_path / "authority", "federation-pw", kdf=KdfParams(time_cost=1, memory_kib=8 * 1024))
    folder = enrolment.folder_of(box.settings)
    kit = authority.issue_kit(enrolment.make_request(box.keystore, folder), coordinator="coord.example:9092", days=20, settings={})
    enrolment.install(kit, keystore=box.keystore, folder=folder)
    fams = scrape(base)
    assert value(fams, "mammo_enrolled") == 1
    assert 19 < value(fams, "mammo_certificate_days_left") <= 20  # under the rules' 30 days: MammoCertificateExpiring would fire
