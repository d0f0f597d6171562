"""Webhooks: each alert as a signed JSON POST, retried with exponential backoff.

The body is the alert's JSON (:meth:`Alert.to_dict`). Headers:

- ``X-Garrison-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` over ``"<t>." + body`` with the
  shared ``webhook_secret``; the receiver recomputes it (:func:`verify_signature`) and rejects
  stale timestamps, so a captured request cannot be replayed later.
- ``X-Garrison-Delivery: <alert id>``: the same on every retry, so a receiver can drop duplicates.

A failed delivery (connection error, timeout, HTTP 5xx or 429) is retried up to
``webhook_retries`` times, waiting ``webhook_backoff * 2**n`` seconds (capped at
``webhook_max_backoff``). Retries happen on the webhook's own worker thread; later alerts queue
behind (bounded) and go out once the receiver is back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from garrison import __version__
from garrison.respond.alerts import Alert

log = logging.getLogger("garrison.respond.webhook")

SIGNATURE_HEADER = "X-Garrison-Signature"
DELIVERY_HEADER = "X-Garrison-Delivery"


def sign(secret: str, body: bytes, ts: int) -> str:
    """The signature header value for ``body`` sent at ``ts`` (seconds since the epoch)."""
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str, now: float,
                     tolerance: float = 300.0) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and is at most ``tolerance`` s old."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - ts) > tolerance:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Webhook:
    """An alert handler that POSTs to ``url``. Use with ``AlertPipeline.add_handler``."""

    def __init__(
        self,
        url: str,
        *,
        secret: str = "",
        timeout: float = 5.0,
        retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http(s)://host/..., got {url!r}")
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.clock = clock
        self.stopping = threading.Event()
        self.sent = 0
        self.failed = 0
        self.attempts = 0
        self.__name__ = f"webhook {parts.scheme}://{parts.hostname}"

    def request(self, alert: Alert) -> urllib.request.Request:
        """The HTTP request for ``alert`` (signed now)."""
        body = json.dumps(alert.to_dict(), default=str, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"garrison/{__version__}",
            DELIVERY_HEADER: alert.id,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body, int(self.clock()))
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def __call__(self, alert: Alert) -> None:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                with urllib.request.urlopen(self.request(alert), timeout=self.timeout) as resp:
                    resp.read(65536)
                self.sent += 1
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    self.failed += 1
                    log.error("webhook %s rejected alert %s: HTTP %d", self.url, alert.id,
                              exc.code)
                    return
                err = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                err = str(exc)
            if attempt == self.retries or self.stopping.wait(delay):
                break
            log.warning("webhook %s failed (%s); retry %d in %.1f s", self.url, err,
                        attempt + 1, delay)
            delay = min(delay * 2, self.max_backoff)
        self.failed += 1
        log.error("webhook %s: giving up on alert %s after %d attempts", self.url, alert.id,
                  self.retries + 1)
