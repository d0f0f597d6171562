"""Webhooks against a real HTTP receiver on loopback: signed, deduplicated, survives downtime."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from garrison.respond.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, sign, verify_signature

from .conftest import ev

SECRET = "s3cret-for-tests"


class Receiver:
    """A stdlib HTTP server on 127.0.0.1 collecting POSTed alerts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def port() -> Iterator[int]:
    yield _free_port()


def test_signature_round_trip_and_rejections() -> None:
    body = b'{"a":1}'
    header = sign(SECRET, body, 1000)
    assert verify_signature(SECRET, body, header, now=1010)
    assert not verify_signature(SECRET, body + b" ", header, now=1010)  # tampered body
    assert not verify_signature("other", body, header, now=1010)        # wrong key
    assert not verify_signature(SECRET, body, header, now=1000 + 3600)  # replayed later
    assert not verify_signature(SECRET, body, "garbage", now=1000)


def test_receiver_gets_signed_deduplicated_alerts_after_downtime(
    engine_factory: Any, port: int
) -> None:
    url = f"http://127.0.0.1:{port}/hook"
    engine, svc, _ = engine_factory(alerts={
        "webhooks": [url], "webhook_secret": SECRET, "webhook_timeout": 2,
        "webhook_retries": 100, "webhook_backoff": 0.05, "webhook_max_backoff": 0.2,
        "cooldown": 10, "kinds": {"blocked": {"webhook": False}},
    })
    hook = svc.webhooks[0]
    # Receiver down: 5 scan updates from one address within the cooldown (one alert), and
    # one honeypot touch from an IPv6 address. Hostile strings ride along in the detail.
    for t in range(5):
        engine.emit(ev("scan", "203.0.113.50", 1000.0 + t, port_count=10 + t,
                       banner="$(rm -rf /); `reboot` | nc x 1 && \u202e" + "A" * 10_000))
    engine.emit(ev("honeypot", "2001:db8:2::50", 1001.0, service="ssh"))
    assert _wait(lambda: hook.attempts >= 3)  # it is retrying against a closed port
    assert hook.sent == 0
    receiver = Receiver(port)  # back up
    try:
        assert _wait(lambda: len(receiver.received) >= 2)
        assert svc.alerts.join(10)
        time.sleep(0.3)  # allow a would-be duplicate to arrive (none should)
        assert len(receiver.received) == 2
        kinds = []
        for headers, body in receiver.received:
            assert headers["Content-Type"] == "application/json"
            assert verify_signature(SECRET, body, headers[SIGNATURE_HEADER], now=time.time())
            doc = json.loads(body)
            assert doc["alert"]["id"] == headers[DELIVERY_HEADER]
            kinds.append((doc["alert"]["kind"], doc["alert"]["ip"]))
            assert doc["event"]["event"]["action"] == doc["alert"]["kind"]
        assert sorted(kinds) == [("honeypot", "2001:db8:2::50"), ("scan", "203.0.113.50")]
        # Later, past the cooldown, the next scan alert reports the 4 it folded in.
        engine.emit(ev("scan", "203.0.113.50", 1020.0))
        assert _wait(lambda: len(receiver.received) == 3)
        last = json.loads(receiver.received[-1][1])
        assert last["alert"]["suppressed"] == 4
    finally:
        receiver.close()


def test_client_errors_are_not_retried(port: int) -> None:
    from garrison.respond.alerts import Alert
    from garrison.respond.webhook import Webhook

    class Reject(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(400)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Reject)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = Webhook(f"http://127.0.0.1:{port}/", retries=5, backoff=0.01)
        hook(Alert("1", ev("scan", "203.0.113.5", 0), "203.0.113.5"))
        assert hook.attempts == 1 and hook.failed == 1
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_url_must_be_http() -> None:
    from garrison.respond.webhook import Webhook

    for bad in ("file:///etc/passwd", "ftp://x/", "http://", "javascript:alert(1)"):
        with pytest.raises(ValueError):
            Webhook(bad)
