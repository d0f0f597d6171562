"""A requests transport adapter that fetches only what the SSRF guard validated.

``session.mount("http://", RequestsAdapter())`` (and ``"https://"``). Each request, and each
redirect hop the session follows, is checked for scheme, port, userinfo and host spelling before
it is sent; the connection itself resolves the name once through the guard and opens the socket
to the validated address (urllib3 keeps the name for the Host header, SNI and certificate
checks). Proxies are ignored: a proxy would make the connection elsewhere than validated.
"""

from __future__ import annotations

import socket
from typing import Any

import urllib3
from requests import PreparedRequest, Response, Session
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from garrison.bus import EventBus
from garrison.guards.ssrf import Guard, Policy, Resolver

__all__ = ["RequestsAdapter", "session"]


def _pool_classes(guard: Guard) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pool classes whose connections dial only guard-validated addresses."""

    def dial(conn: HTTPConnection, scheme: str) -> socket.socket:
        host = conn.host if ":" not in conn.host else f"[{conn.host}]"
        dest = guard.resolve(f"{scheme}://{host}:{conn.port}/")
        try:
            return create_connection(
                (str(dest.address), dest.port), conn.timeout,
                source_address=conn.source_address, socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"connection to {dest.address} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"failed to connect to {dest.address}: {exc}") from exc

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return dial(self, "http")

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return dial(self, "https")

    class GuardedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


class RequestsAdapter(HTTPAdapter):
    """A :class:`requests.adapters.HTTPAdapter` guarded against SSRF."""

    def __init__(
        self,
        guard: Guard | None = None,
        *,
        policy: Policy | None = None,
        resolver: Resolver | None = None,
        bus: EventBus | None = None,
        **adapter_options: Any,
    ) -> None:
        self.guard = guard if guard is not None else Guard(policy, resolver=resolver, bus=bus)
        super().__init__(**adapter_options)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        manager: urllib3.PoolManager = self.poolmanager
        manager.pool_classes_by_scheme = _pool_classes(self.guard)

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        """Check the URL (each redirect hop comes through here), then send without proxies."""
        self.guard.check_syntax(request.url or "")
        args = args[:4]  # (stream, timeout, verify, cert); a positional proxies is dropped
        kwargs["proxies"] = None
        return super().send(request, *args, **kwargs)


def session(guard: Guard | None = None) -> Session:
    """A :class:`requests.Session` with the guarded adapter on ``http://`` and ``https://``,
    at most the policy's ``max_redirects`` hops, and no proxies from the environment."""
    adapter = RequestsAdapter(guard)
    s = Session()
    s.trust_env = False
    s.max_redirects = adapter.guard.policy.max_redirects
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
