"""``mammo bench kiosk``: page latency from a loopback client with many studies in the database.

A throw-away box (temporary home) gets a few studies through the real
ingest service, then enough copies of their rows to reach ``studies``, each
with a result. The real server (uvicorn, as ``mammo up`` runs it) serves the
kiosk; one signed-in httpx client measures, one request at a time:

- the worklist page (the default view: recent studies, priority first),
- a study page,
- peer 1: a static file (kiosk.css) from the same server: the floor of the stack,
- peer 2: Python's ``http.server`` serving the worklist HTML the kiosk rendered:
  what the same bytes cost with no application at all.
"""

from __future__ import annotations

import functools
import http.server
import logging
import platform
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from edge_agent.box import Box
from edge_agent.queue import JobQueue
from edge_agent.settings import Settings
from edge_agent.store import open_database
from kiosk_ui import synthetic
from kiosk_ui.server import free_port, serve
from kiosk_ui.services import KioskServices
from provisioning.keystore import FileKeystore, KdfParams

BENCH_KDF = KdfParams(time_cost=1, memory_kib=8 * 1024, parallelism=1)


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    q = lambda p: s[min(len(s) - 1, int(round(p * (len(s) - 1))))]  # noqa: E731
    return {"p50_ms": round(q(0.50) * 1000, 3), "p95_ms": round(q(0.95) * 1000, 3), "mean_ms": round(statistics.fmean(s) * 1000, 3), "n": len(s)}


def _measure(client: httpx.Client, url: str, n: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        client.get(url).raise_for_status()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(url)
        samples.append(time.perf_counter() - t0)
        r.raise_for_status()
    return _percentiles(samples)


def run_bench(*, studies: int = 10_000, requests: int = 200) -> dict:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would measure the terminal
    with tempfile.TemporaryDirectory(prefix="mammo-bench-kiosk-") as tmp:
        home = Path(tmp) / "home"
        settings = Settings.load(env={"MAMMO_HOME": str(home)}, home=home)
        db = open_database(settings.db_path)
        keystore = FileKeystore.open_or_create(home / "keystore.json", "bench passphrase", BENCH_KDF)
        box = Box(settings, db, keystore, JobQueue(db))
        services = KioskServices.from_box(box)
        t0 = time.perf_counter()
        real = [synthetic.ingest_study(services.ingest, seed=i, size=128) for i in range(5)]
        for i, uid in enumerate(real):
            synthetic.write_result(services.ingest, uid, triage=("priority_radiologist_review", "no_suspicious_finding")[i % 2], score=0.5)
        synthetic.bulk_studies(services.ingest, max(0, studies - len(real)), template_study=real[0])
        setup_s = time.perf_counter() - t0
        services.add_user("bench", "bench-password-1", "doctor", "Bench")
        running = serve(settings, services, host="127.0.0.1", port=free_port())
        peer_dir = Path(tmp) / "peer"
        peer_dir.mkdir()
        try:
            with httpx.Client(base_url=running.url, timeout=30.0, follow_redirects=True) as client:
                page = client.get("/login")
                token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
                client.post("/login", data={"_csrf": token, "username": "bench", "password": "bench-password-1"}).raise_for_status()
                html = client.get("/worklist").text
                rows = html.count('class="row ')
                study_url = f"/studies/{real[0]}"
                pages = {
                    "worklist": _measure(client, "/worklist", requests),
                    "study": _measure(client, study_url, requests),
                    "worklist_search_one_match": _measure(client, "/worklist?q=sahin", max(10, requests // 10)),  # scans every study
                    "static_css_same_server": _measure(client, "/static/kiosk.css", requests),
                }
            (peer_dir / "worklist.html").write_text(html, encoding="utf-8")
            handler = functools.partial(_QuietHandler, directory=str(peer_dir))
            peer = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            th = threading.Thread(target=peer.serve_forever, daemon=True)
            th.start()
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{peer.server_address[1]}", timeout=30.0) as client:
                    pages["http_server_same_html"] = _measure(client, "/worklist.html", requests)
            finally:
                peer.shutdown()
                peer.server_close()
        finally:
            running.stop()
            services.close()
            db.conn.close()
    return {
        "benchmark": "kiosk",
        "studies_in_database": studies,
        "worklist_rows_rendered": rows,
        "worklist_html_bytes": len(html.encode("utf-8")),
        "requests_per_page": requests,
        "setup_s": round(setup_s, 2),
        "pages": pages,
        "peer": "Python http.server serving the same rendered worklist HTML; and a static file from the kiosk's own server",
        "ratio_worklist_vs_http_server_p50": round(pages["worklist"]["p50_ms"] / max(1e-6, pages["http_server_same_html"]["p50_ms"]), 2),
        "ratio_study_vs_static_p50": round(pages["study"]["p50_ms"] / max(1e-6, pages["static_css_same_server"]["p50_ms"]), 2),
        "client": "httpx, one connection, sequential, loopback",
        "server": "uvicorn (one worker thread), as mammo up runs it",
        "python": platform.python_version(),
    }


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass
