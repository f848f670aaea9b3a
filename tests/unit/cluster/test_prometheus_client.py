"""The Prometheus client against a fake Prometheus on loopback (a real HTTP server, canned answers).

What matters for the reports: a down, slow or confused monitoring host gives a result that says
"server metrics unavailable" and why, within the timeout, and never raises or poses as zero.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from careflow_ha.cluster.prometheus import MAX_POINTS, UNAVAILABLE, PrometheusClient, for_settings

MATRIX = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [
            {"metric": {"job": "postgres", "instance": "pg2", "application_name": "pg2"},
             "values": [[1764617000, "0"], [1764617005, "2048"], [1764617010, "NaN"]]},
            {"metric": {"job": "postgres", "instance": "pg3"}, "values": [[1764617000, "1.5e6"]]},
        ],
    },
}


class FakePrometheus:
    """Answers every request with ``status``/``body`` after ``delay_s``; records what was asked."""

    def __init__(self) -> None:
        self.status, self.body, self.delay_s = 200, json.dumps(MATRIX).encode(), 0.0
        self.requests: list[tuple[str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlsplit(self.path)
                fake.requests.append((url.path, dict(urllib.parse.parse_qsl(url.query))))
                time.sleep(fake.delay_s)
                try:
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(fake.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (the timeout test)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self, status: int, body: object) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connection refused, like mon1 down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_range_query_returns_each_series_with_its_labels_and_points(prom):
    result = PrometheusClient(prom.url).range_query("pg_stat_replication_pg_wal_lsn_diff", 1764617000, 1764617010, 5)
    assert result.available and result.note == ""
    pg2, pg3 = result.series
    assert dict(pg2.labels) == {"job": "postgres", "instance": "pg2", "application_name": "pg2"}
    assert pg2.points[:2] == ((1764617000.0, 0.0), (1764617005.0, 2048.0))
    assert math.isnan(pg2.points[2][1])  # a NaN stays NaN, never 0
    assert pg3.points == ((1764617000.0, 1.5e6),)


def test_the_request_carries_the_query_range_and_step(prom):
    PrometheusClient(prom.url + "/").range_query('rate(pg_stat_database_xact_commit{job="postgres"}[30s])',
                                                 1764617000.25, 1764617060, 2.5)
    ((path, params),) = prom.requests
    assert path == "/api/v1/query_range"
    assert params == {"query": 'rate(pg_stat_database_xact_commit{job="postgres"}[30s])',
                      "start": "1764617000.25", "end": "1764617060", "step": "2.5"}


def test_the_monitoring_host_down_is_server_metrics_unavailable_not_an_error(closed_port):
    started = time.monotonic()
    result = PrometheusClient(f"http://127.0.0.1:{closed_port}", timeout_s=2).range_query("up", 0, 60, 5)
    assert time.monotonic() - started < 2
    assert not result.available and result.series == ()
    assert result.note.startswith(f"{UNAVAILABLE}: cannot reach Prometheus at http://127.0.0.1:{closed_port}")
    assert "refused" in result.note


def test_a_slow_prometheus_is_given_up_on_at_the_timeout(prom):
    prom.delay_s = 3.0
    started = time.monotonic()
    result = PrometheusClient(prom.url, timeout_s=0.3).range_query("up", 0, 60, 5)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5, elapsed
    assert not result.available and ("within 0.3s" in result.unavailable or "timed out" in result.unavailable)


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        (400, {"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected <EOF>"},
         "Prometheus answered HTTP 400: 1:5: parse error: unexpected <EOF>"),
        (503, b"Service Unavailable", "Prometheus answered HTTP 503"),
        (200, b"<html>nginx</html>", "unexpected answer (not JSON): is that Prometheus?"),
        (200, {"status": "error", "error": "query timed out in expression evaluation"},
         "query failed (query timed out in expression evaluation)"),
        (200, {"status": "success", "data": {"resultType": "vector", "result": []}},
         "unexpected answer (resultType 'vector')"),
        (200, {"status": "success", "data": {"resultType": "matrix", "result": [{"values": [[1, "x"]]}]}},
         "unexpected answer (malformed samples)"),
    ],
)
def test_every_bad_answer_is_one_line_of_unavailable(prom, status, body, says):
    prom.answer(status, body)
    result = PrometheusClient(prom.url).range_query("up", 0, 60, 5)
    assert not result.available and result.unavailable == says
    assert result.note == f"{UNAVAILABLE}: {says}" and "\n" not in result.note


def test_no_samples_is_available_but_says_so_instead_of_drawing_zero(prom):
    prom.answer(200, {"status": "success", "data": {"resultType": "matrix", "result": []},
                      "warnings": ["some targets were slow"]})
    result = PrometheusClient(prom.url).range_query("pg_locks_count", 0, 60, 5)
    assert result.available and result.series == ()
    assert result.note == "no samples for pg_locks_count" and result.warnings == ("some targets were slow",)


@pytest.mark.parametrize(("start", "end", "step", "says"), [
    (0, (MAX_POINTS) * 5.0, 5, "Prometheus allows 11000: use a larger step"),
    (60, 0, 5, "need start <= end"),
    (0, 60, 0, "a positive step"),
])
def test_a_range_prometheus_would_refuse_is_refused_before_any_request(prom, start, end, step, says):
    with pytest.raises(ValueError, match=says):
        PrometheusClient(prom.url).range_query("up", start, end, step)
    assert prom.requests == []


def test_the_largest_allowed_range_is_sent(prom):
    assert PrometheusClient(prom.url).range_query("up", 0, (MAX_POINTS - 1) * 5.0, 5).available


def test_ready_is_true_only_when_prometheus_answers(prom, closed_port):
    assert PrometheusClient(prom.url).ready() and prom.requests[-1][0] == "/-/ready"
    prom.answer(503, b"Service Unavailable")
    assert not PrometheusClient(prom.url).ready()
    assert not PrometheusClient(f"http://127.0.0.1:{closed_port}", timeout_s=1).ready()


def test_the_lab_client_uses_the_port_published_on_loopback(tmp_path):
    from careflow_ha.settings import load_settings

    client = for_settings(load_settings(tmp_path, environ={"CAREFLOW_MON1_PROM_PORT": "19090"}), timeout_s=2)
    assert client.base_url == "http://127.0.0.1:19090" and client.timeout_s == 2
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        PrometheusClient("http://127.0.0.1:1", timeout_s=0)
