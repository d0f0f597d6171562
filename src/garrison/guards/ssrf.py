"""SSRF guard: decide whether the application may fetch a URL, and fetch only what it decided.

``check_url(url)`` parses the URL strictly, resolves the host name once, and returns the address
it validated, or raises :class:`Blocked` with the reason. Refused: schemes and ports outside the
allowlists, userinfo (``http://good@evil/``), backslashes, whitespace and control characters
(parsers disagree on them), hosts outside a per-host allowlist when one is set, metadata host
names, and any address in :mod:`garrison.guards.netrules`' table (loopback, private, link-local,
CGNAT, multicast, reserved, unspecified, documentation, metadata, IPv4-embedding IPv6 forms).
When a name resolves to several addresses, every one must pass: a DNS answer that mixes a
public and a private address is an attack.

The transports -- :class:`HTTPTransport` and :class:`AsyncHTTPTransport` for httpx,
:class:`RequestsAdapter` for requests -- call the guard for every request, including every
redirect hop the client follows, and connect to the validated address itself (the Host header
and TLS server name keep the original name), so there is no second DNS lookup that a rebinding
name server could answer differently.

The resolver is a seam: ``Guard(resolver=...)`` takes a function ``(host, port) -> addresses``;
the default asks the system resolver (``getaddrinfo``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from garrison.events import SSRF_BLOCKED, Event, Severity, Technique
from garrison.guards.netrules import (
    METADATA_HOSTS,
    HostError,
    IPAddress,
    IPNetwork,
    forbidden_reason,
    normalize_host,
    parse_ip_host,
)

if TYPE_CHECKING:
    from garrison.bus import EventBus

# HTTPTransport, AsyncHTTPTransport and RequestsAdapter are loaded on first use (__getattr__).
__all__ = ["Blocked", "Destination", "Guard", "Policy", "check_url"]

Resolver = Callable[[str, int], Iterable[str | IPAddress]]
"""A name resolver: ``(host, port) -> addresses`` (strings or ``ipaddress`` objects)."""

MAX_URL: Final = 8192
"""Longest URL accepted, in characters."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_T1190: Final = Technique("T1190", "Exploit Public-Facing Application", "TA0001", "Initial Access")


class Blocked(Exception):
    """The URL or one of its addresses is not allowed; ``reason`` says why."""

    def __init__(self, reason: str, url: str = "", address: IPAddress | None = None) -> None:
        super().__init__(f"{reason} (url {url[:200]!r})" if url else reason)
        self.reason = reason
        self.url = url
        self.address = address


@dataclass(frozen=True, slots=True)
class Policy:
    """What may be fetched.

    ``schemes`` and ``ports`` are allowlists. ``allow_hosts``, when not empty, is the only set of
    host names (exact, or ``.example.com`` for a domain and its subdomains) that may be fetched.
    ``deny_hosts`` are names refused whatever they resolve to. ``trusted_networks`` are exempt
    from the address rules (an internal API the application is meant to call), never by default.
    ``max_redirects`` bounds the hops followed by the clients built with
    :func:`garrison.guards.ssrf_httpx.client` / :func:`garrison.guards.ssrf_requests.session`.
    """

    schemes: frozenset[str] = frozenset({"http", "https"})
    ports: frozenset[int] = frozenset({80, 443})
    allow_hosts: frozenset[str] = frozenset()
    deny_hosts: frozenset[str] = METADATA_HOSTS
    trusted_networks: tuple[IPNetwork, ...] = ()
    allow_userinfo: bool = False
    max_redirects: int = 5

    @classmethod
    def build(
        cls,
        *,
        schemes: Iterable[str] = ("http", "https"),
        ports: Iterable[int] = (80, 443),
        allow_hosts: Iterable[str] = (),
        deny_hosts: Iterable[str] = METADATA_HOSTS,
        trusted_networks: Iterable[str | IPNetwork] = (),
        allow_userinfo: bool = False,
        max_redirects: int = 5,
    ) -> Policy:
        """A policy from plain values (strings for networks and hosts)."""
        return cls(
            schemes=frozenset(s.lower() for s in schemes),
            ports=frozenset(int(p) for p in ports),
            allow_hosts=frozenset(
                "." + normalize_host(h[1:]) if h.startswith(".") else normalize_host(h)
                for h in allow_hosts
            ),
            deny_hosts=frozenset(h.lower() for h in deny_hosts),
            trusted_networks=tuple(ipaddress.ip_network(n, strict=False) for n in
                                   trusted_networks),
            allow_userinfo=allow_userinfo,
            max_redirects=max_redirects,
        )


@dataclass(frozen=True, slots=True)
class Destination:
    """A validated fetch target: connect to ``address`` on ``port``; ``host`` is the name to
    send as Host and TLS server name. ``addresses`` is everything the resolver answered."""

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress
    addresses: tuple[IPAddress, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class _Parsed:
    scheme: str
    host: str
    port: int


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Addresses for ``host`` from the system resolver (``getaddrinfo``, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


class Guard:
    """Validates URLs against a :class:`Policy`, resolving names with ``resolver`` and reporting
    refusals as ``ssrf-blocked`` events on ``bus`` (default: ``garrison.default_bus``).
    ``clock`` gives event timestamps in seconds since the epoch."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        resolver: Resolver | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy or Policy()
        self.resolver = resolver
        self._bus = bus
        self._clock = clock
        self.blocked = 0

    def resolve(self, url: str) -> Destination:
        """Validate ``url`` and resolve it once; the :class:`Destination` to connect to."""
        try:
            parsed = self._parse(url)
            literal = parse_ip_host(parsed.host)
            if literal is not None:
                answers: Sequence[IPAddress] = [literal]
            else:
                answers = self._lookup(parsed.host, parsed.port)
            return self._validate(url, parsed, answers)
        except Blocked as exc:
            self._report(exc)
            raise

    async def resolve_async(self, url: str) -> Destination:
        """:meth:`resolve` without blocking the event loop on DNS."""
        try:
            parsed = self._parse(url)
            literal = parse_ip_host(parsed.host)
            if literal is not None:
                answers: Sequence[IPAddress] = [literal]
            elif self.resolver is not None:
                answers = self._lookup(parsed.host, parsed.port)
            else:
                loop = asyncio.get_running_loop()
                try:
                    infos = await loop.getaddrinfo(parsed.host, parsed.port,
                                                   type=socket.SOCK_STREAM)
                except OSError as exc:
                    raise Blocked(f"cannot resolve {parsed.host!r}: {exc}", url) from None
                answers = [ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos]
            return self._validate(url, parsed, answers)
        except Blocked as exc:
            self._report(exc)
            raise

    def check_syntax(self, url: str) -> None:
        """Validate everything about ``url`` that needs no DNS (scheme, port, userinfo, host
        spelling, host allowlist, IP literals); raises :class:`Blocked`."""
        try:
            parsed = self._parse(url)
            literal = parse_ip_host(parsed.host)
            if literal is not None:
                self._validate(url, parsed, [literal])
        except Blocked as exc:
            self._report(exc)
            raise

    def check_url(self, url: str) -> IPAddress:
        """The validated address ``url`` will be fetched from; raises :class:`Blocked`."""
        return self.resolve(url).address

    def _lookup(self, host: str, port: int) -> list[IPAddress]:
        resolver = self.resolver or system_resolver
        try:
            answers = [ipaddress.ip_address(a) if isinstance(a, str) else a
                       for a in resolver(host, port)]
        except (OSError, ValueError) as exc:
            raise Blocked(f"cannot resolve {host!r}: {exc}") from None
        return answers

    def _parse(self, url: str) -> _Parsed:
        policy = self.policy
        if not isinstance(url, str):
            raise Blocked(f"URL must be a string, got {type(url).__name__}")
        if len(url) > MAX_URL:
            raise Blocked(f"URL longer than {MAX_URL} characters", url)
        if any(c <= " " or c == "\x7f" or c == "\\" for c in url):
            raise Blocked("URL contains whitespace, control characters or backslashes", url)
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or not scheme.isascii() or not scheme.isalpha():
            raise Blocked("URL has no scheme://authority", url)
        if scheme not in policy.schemes:
            raise Blocked(f"scheme {scheme!r} is not allowed", url)
        authority = rest
        for stop in "/?#":
            authority = authority.split(stop, 1)[0]
        if "@" in authority:
            if not policy.allow_userinfo:
                raise Blocked("URL has userinfo ('@' in the authority)", url)
            authority = authority.rsplit("@", 1)[1]
        host, port = _split_authority(authority, url)
        try:
            host = normalize_host(host)
        except (HostError, UnicodeError) as exc:
            raise Blocked(str(exc), url) from None
        if port is None:
            port = _DEFAULT_PORTS.get(scheme)
            if port is None:
                raise Blocked(f"scheme {scheme!r} has no default port", url)
        if port not in policy.ports:
            raise Blocked(f"port {port} is not allowed", url)
        if host in policy.deny_hosts:
            raise Blocked(f"host {host!r} is a denied (metadata) name", url)
        if policy.allow_hosts and not _host_allowed(host, policy.allow_hosts):
            raise Blocked(f"host {host!r} is not in the allowlist", url)
        try:
            parse_ip_host(host)
        except HostError as exc:
            raise Blocked(str(exc), url) from None
        return _Parsed(scheme, host, port)

    def _validate(self, url: str, parsed: _Parsed, answers: Sequence[IPAddress]) -> Destination:
        if not answers:
            raise Blocked(f"no address for {parsed.host!r}", url)
        for address in answers:
            if any(address in net for net in self.policy.trusted_networks):
                continue
            reason = forbidden_reason(address)
            if reason is not None:
                raise Blocked(reason, url, address)
        return Destination(url, parsed.scheme, parsed.host, parsed.port, answers[0],
                           tuple(answers))

    def _report(self, exc: Blocked) -> None:
        self.blocked += 1
        bus = self._bus
        if bus is None:
            from garrison import default_bus

            bus = default_bus
        address = exc.address
        bus.emit(
            Event(
                name=SSRF_BLOCKED,
                ts=self._clock(),
                severity=Severity.HIGH,
                destination_ip=str(address) if address is not None else None,
                detail={"url": redact(exc.url)[:512], "reason": exc.reason},
                techniques=(_T1190,),
                message=f"outbound request refused: {exc.reason}",
            )
        )


def redact(url: str) -> str:
    """``url`` with any userinfo (``user:password@``) replaced by ``***@``, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{rest[end:]}"


def _split_authority(authority: str, url: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise Blocked("unterminated IPv6 literal", url)
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise Blocked("junk after IPv6 literal", url)
        port_text = rest[1:] if rest else None
    else:
        if authority.count(":") > 1:
            raise Blocked("more than one ':' in the authority", url)
        host, _, port_text_ = authority.partition(":")
        port_text = port_text_ if ":" in authority else None
    if port_text is None or port_text == "":
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Blocked(f"invalid port {port_text!r}", url)
    return host, int(port_text)


def _host_allowed(host: str, allowed: frozenset[str]) -> bool:
    if host in allowed:
        return True
    return any(a.startswith(".") and (host.endswith(a) or host == a[1:]) for a in allowed)


_default_guard: Guard | None = None


def check_url(
    url: str,
    *,
    policy: Policy | None = None,
    resolver: Resolver | None = None,
    bus: EventBus | None = None,
) -> IPAddress:
    """The validated address ``url`` would be fetched from; raises :class:`Blocked` with the
    reason (and emits ``ssrf-blocked``). Without arguments the default :class:`Policy` is used."""
    global _default_guard
    if policy is None and resolver is None and bus is None:
        if _default_guard is None:
            _default_guard = Guard()
        return _default_guard.check_url(url)
    return Guard(policy, resolver=resolver, bus=bus).check_url(url)


def __getattr__(name: str) -> Any:
    # The transports need httpx / requests; import them only when asked for.
    if name in ("HTTPTransport", "AsyncHTTPTransport", "client", "async_client"):
        from garrison.guards import ssrf_httpx

        return getattr(ssrf_httpx, name)
    if name in ("RequestsAdapter", "session"):
        from garrison.guards import ssrf_requests

        return getattr(ssrf_requests, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
