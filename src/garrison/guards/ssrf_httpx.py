"""httpx transports that fetch only what the SSRF guard validated.

Every request (each redirect hop the client follows comes through here again) is checked by a
:class:`~garrison.guards.ssrf.Guard`; the connection then goes to the validated address, with
the original name kept in the Host header and as the TLS server name (``sni_hostname``), so
certificates are still checked against the name and DNS is asked only once.

Mount them with ``httpx.Client(transport=HTTPTransport(), trust_env=False)``: with
``trust_env=True`` httpx mounts proxy transports from the environment in front of this one.
"""

from __future__ import annotations

from typing import Any

import httpx

from garrison.bus import EventBus
from garrison.guards.ssrf import Destination, Guard, Policy, Resolver

__all__ = ["AsyncHTTPTransport", "HTTPTransport", "async_client", "client"]


def _pinned(request: httpx.Request, dest: Destination) -> httpx.Request:
    """``request`` aimed at the validated address, Host header and TLS name unchanged."""
    extensions = dict(request.extensions)
    if dest.scheme == "https":
        extensions["sni_hostname"] = dest.host
    url = request.url.copy_with(host=str(dest.address), port=dest.port)
    pinned = httpx.Request(
        request.method, url, headers=request.headers, stream=request.stream,
        extensions=extensions,
    )
    return pinned


def _guard(guard: Guard | None, policy: Policy | None, resolver: Resolver | None,
           bus: EventBus | None) -> Guard:
    return guard if guard is not None else Guard(policy, resolver=resolver, bus=bus)


class HTTPTransport(httpx.BaseTransport):
    """A synchronous httpx transport guarded against SSRF; extra keyword arguments go to the
    wrapped :class:`httpx.HTTPTransport` (``verify``, ``timeout`` via the client, ...)."""

    def __init__(
        self,
        guard: Guard | None = None,
        *,
        policy: Policy | None = None,
        resolver: Resolver | None = None,
        bus: EventBus | None = None,
        **transport_options: Any,
    ) -> None:
        self.guard = _guard(guard, policy, resolver, bus)
        self._inner = httpx.HTTPTransport(**transport_options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        dest = self.guard.resolve(str(request.url))
        return self._inner.handle_request(_pinned(request, dest))

    def close(self) -> None:
        self._inner.close()


class AsyncHTTPTransport(httpx.AsyncBaseTransport):
    """The asynchronous twin of :class:`HTTPTransport` (DNS off the event loop)."""

    def __init__(
        self,
        guard: Guard | None = None,
        *,
        policy: Policy | None = None,
        resolver: Resolver | None = None,
        bus: EventBus | None = None,
        **transport_options: Any,
    ) -> None:
        self.guard = _guard(guard, policy, resolver, bus)
        self._inner = httpx.AsyncHTTPTransport(**transport_options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        dest = await self.guard.resolve_async(str(request.url))
        return await self._inner.handle_async_request(_pinned(request, dest))

    async def aclose(self) -> None:
        await self._inner.aclose()


# Options that belong to the transport, not the client, when a transport is given.
_TRANSPORT_OPTIONS = ("verify", "cert", "http1", "http2", "limits")


def client(guard: Guard | None = None, **client_options: Any) -> httpx.Client:
    """An :class:`httpx.Client` that follows redirects through the guard (at most the policy's
    ``max_redirects`` hops), ignores proxy settings from the environment, and passes other
    keyword arguments on (``verify``/``cert``/``http2``/``limits`` to the transport, the rest,
    such as ``timeout`` and ``headers``, to the client)."""
    guard = guard if guard is not None else Guard()
    options = {"follow_redirects": True, "max_redirects": guard.policy.max_redirects,
               **client_options, "trust_env": False}
    transport_options = {k: options.pop(k) for k in _TRANSPORT_OPTIONS if k in options}
    return httpx.Client(transport=HTTPTransport(guard, **transport_options), **options)


def async_client(guard: Guard | None = None, **client_options: Any) -> httpx.AsyncClient:
    """The asynchronous twin of :func:`client`."""
    guard = guard if guard is not None else Guard()
    options = {"follow_redirects": True, "max_redirects": guard.policy.max_redirects,
               **client_options, "trust_env": False}
    transport_options = {k: options.pop(k) for k in _TRANSPORT_OPTIONS if k in options}
    return httpx.AsyncClient(transport=AsyncHTTPTransport(guard, **transport_options), **options)
