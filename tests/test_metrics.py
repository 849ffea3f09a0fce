"""Operators' metrics: Prometheus's /metrics, and each sandbox's own usage (sb.metrics())."""

from __future__ import annotations

import time

import httpx
import pytest

from hutch import Sandbox, SandboxNotFound
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


def _series(text: str, name: str) -> dict[str, float]:
    """`name{labels} value` lines of a Prometheus exposition, by their label text."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name) :].rpartition(" ")
            found[labels] = float(value)
    return found


def test_prometheus_metrics_need_a_key_and_count_what_happened(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/metrics").status_code == 401
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key, memory_mb=256)
    try:
        sb.exec("true")
        r = httpx.get(
            server.url + "/metrics", headers={"Authorization": f"Bearer {server.api_key}"}
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        running = _series(r.text, "hutch_sandboxes")['{state="running"}']
        listed = [s for s in Sandbox.list(base_url=server.url, api_key=server.api_key)]
        assert running == sum(1 for s in listed if s.status == "running") >= 1
        execs = _series(r.text, "hutch_http_request_duration_seconds_count")
        key = '{method="POST",route="/v1/sandboxes/{sandbox_id}/exec/stream",status="200"}'
        assert execs[key] >= 1  # by route template: no series per sandbox id
        assert not any(sb.id in labels for labels in execs)
        assert _series(r.text, "hutch_sandbox_create_duration_seconds_count")[""] >= 1
        assert _series(r.text, "hutch_storage_bytes")['{kind="total"}'] > 0
    finally:
        sb.destroy()


def test_a_sandbox_reports_what_it_uses(server: ServerProcess) -> None:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key, memory_mb=256, disk_mb=512)
    try:
        idle = sb.metrics()
        assert idle.memory_limit_bytes == 256 << 20 and idle.cpu_count == 1.0
        assert idle.disk_limit_bytes == 512 << 20
        sb.start_process("python3 -c 'b = bytearray(100 * 1024**2); import time; time.sleep(600)'")
        sb.start_process("python3 -c 'while True: pass'")
        sb.exec("head -c 30000000 /dev/urandom > /root/blob && sync")
        time.sleep(1.0)
        busy = sb.metrics()
        assert busy.memory_used_bytes >= idle.memory_used_bytes + (90 << 20)
        # A busy loop: how much CPU it gets depends on the host's load, but it gets some.
        assert busy.cpu_percent > 0 and busy.cpu_seconds > idle.cpu_seconds
        assert busy.disk_used_bytes is not None and busy.disk_used_bytes >= 25 << 20
        assert busy.pids >= idle.pids + 2
    finally:
        sb.destroy()
    with pytest.raises(SandboxNotFound):
        sb.metrics()
