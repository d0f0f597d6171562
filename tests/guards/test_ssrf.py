"""SSRF guard: one test per bypass class, against real loopback servers.

Setup (see conftest): ``legit`` listens on 127.0.0.1:P and is the one trusted address; ``trap``
listens on 127.0.0.2:P and records every request that reaches it. Each test makes the guarded
client go for the trap in one spelling or another (directly or through a redirect from the
legit server) and asserts that the guard refused *and* that the trap recorded nothing. A control
test shows that an unguarded client following the same redirect does reach the trap.

Name resolution goes through the guard's resolver seam: tests pass a function that returns
fixed answers for names under ``.test`` (a real resolver answer for our purposes; the system
resolver is used only for literals). This is an injection point of the guard, not a mock of it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests

from garrison.bus import EventBus
from garrison.events import SSRF_BLOCKED, Event
from garrison.guards import ssrf
from garrison.guards.netrules import forbidden_reason, parse_ip_host

from .conftest import Servers

ANSWERS: dict[str, list[str]] = {
    "trap.test": ["127.0.0.2"],
    "legit.test": ["127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "aws6.test": ["fd00:ec2::254"],
    "cgnat.test": ["100.64.12.34"],
    "private.test": ["10.1.2.3"],
    "ula.test": ["fd12:3456::1"],
    "linklocal6.test": ["fe80::1"],
    "mapped.test": ["::ffff:127.0.0.2"],
    "nat64.test": ["64:ff9b::7f00:2"],
    "nat64local.test": ["64:ff9b:1::7f00:2"],
    "sixtofour.test": ["2002:7f00:2::1"],
    "teredo.test": ["2001:0:4136:e378:8000:63bf:80ff:fffd"],
    "multicast.test": ["224.0.0.1"],
    "reserved.test": ["240.0.0.1"],
    "unspecified.test": ["0.0.0.0"],
    "mixed.test": ["127.0.0.1", "127.0.0.2"],
}


def resolver(host: str, port: int) -> list[str]:
    try:
        return ANSWERS[host]
    except KeyError:
        raise OSError(f"test resolver has no answer for {host!r}") from None


def make_guard(servers: Servers, bus: EventBus | None = None,
               resolve: Callable[[str, int], list[str]] = resolver) -> ssrf.Guard:
    policy = ssrf.Policy.build(ports=[servers.port], trusted_networks=["127.0.0.1/32"])
    return ssrf.Guard(policy, resolver=resolve, bus=bus or EventBus())


def trap_spellings(port: int) -> dict[str, str]:
    """The trap (127.0.0.2) in every spelling, per bypass class."""
    return {
        "loopback": f"http://127.0.0.2:{port}/",
        "decimal": f"http://2130706434:{port}/",
        "octal": f"http://0177.0.0.02:{port}/",
        "hex": f"http://0x7f.0x0.0x0.0x2:{port}/",
        "hex-single": f"http://0x7f000002:{port}/",
        "short": f"http://127.2:{port}/",
        "octal-short": f"http://0177.2:{port}/",
        "mapped-ipv6": f"http://[::ffff:127.0.0.2]:{port}/",
        "mapped-ipv6-hex": f"http://[::ffff:7f00:2]:{port}/",
        "compatible-ipv6": f"http://[::127.0.0.2]:{port}/",
        "nat64": f"http://[64:ff9b::127.0.0.2]:{port}/",
        "sixtofour": f"http://[2002:7f00:2::]:{port}/",
        "teredo": f"http://[2001:0:4136:e378:8000:63bf:80ff:fffd]:{port}/",
        "userinfo": f"http://127.0.0.1:{port}@127.0.0.2:{port}/",
        "userinfo-name": f"http://legit.test@127.0.0.2:{port}/",
        "percent-encoded-host": f"http://%31%32%37.0.0.2:{port}/",
        "fullwidth-digits": f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff12:{port}/",
        "ideographic-dots": f"http://127\u30020\u30020\u30022:{port}/",
        "trailing-dot": f"http://127.0.0.2.:{port}/",
        "uppercase-hex": f"http://0X7F.0.0.2:{port}/",
        "dns-name": f"http://trap.test:{port}/",
        "dns-mixed-answer": f"http://mixed.test:{port}/",
        "dns-mapped": f"http://mapped.test:{port}/",
        "dns-nat64": f"http://nat64.test:{port}/",
    }


CLASSES = list(trap_spellings(1))


def test_control_unguarded_client_reaches_the_trap(servers: Servers) -> None:
    with httpx.Client(follow_redirects=True, trust_env=False) as client:
        r = client.get(servers.redirect(f"http://2130706434:{servers.port}/"))
    assert r.text == "trap" and len(servers.trap_hits) == 1


def test_guarded_client_reaches_the_trusted_server(servers: Servers) -> None:
    transport = ssrf.HTTPTransport(make_guard(servers))
    with httpx.Client(transport=transport, trust_env=False) as client:
        r = client.get(f"http://legit.test:{servers.port}/ok")
    assert r.text == "ok"
    assert servers.legit_hits == [f"legit.test:{servers.port} /ok"]  # Host header kept
    assert servers.trap_hits == []


@pytest.mark.parametrize("bypass", CLASSES)
def test_check_url_refuses_every_spelling(servers: Servers, bypass: str) -> None:
    bus = EventBus()
    events: list[Event] = []
    bus.on(SSRF_BLOCKED, events.append)
    url = trap_spellings(servers.port)[bypass]
    with pytest.raises(ssrf.Blocked) as err:
        make_guard(servers, bus).check_url(url)
    assert err.value.reason
    assert len(events) == 1 and events[0].detail["reason"] == err.value.reason


@pytest.mark.parametrize("bypass", CLASSES)
def test_httpx_redirect_to_trap_never_arrives(servers: Servers, bypass: str) -> None:
    target = trap_spellings(servers.port)[bypass]
    transport = ssrf.HTTPTransport(make_guard(servers))
    with httpx.Client(transport=transport, follow_redirects=True, trust_env=False) as client:
        try:
            client.get(servers.redirect(target))
        except ssrf.Blocked:
            pass
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.RemoteProtocolError):
            pass  # httpx itself refused the Location: also safe
        else:
            pytest.fail(f"redirect to {target!r} was followed")
    assert len(servers.legit_hits) == 1  # the redirect itself was fetched
    assert servers.trap_hits == []


@pytest.mark.parametrize("bypass", CLASSES)
def test_requests_redirect_to_trap_never_arrives(servers: Servers, bypass: str) -> None:
    target = trap_spellings(servers.port)[bypass]
    session = requests.Session()
    session.trust_env = False
    adapter = ssrf.RequestsAdapter(make_guard(servers))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        session.get(servers.redirect(target), timeout=10)
    except (ssrf.Blocked, requests.exceptions.InvalidURL):
        pass
    else:
        pytest.fail(f"redirect to {target!r} was followed")
    assert servers.trap_hits == []


@pytest.mark.parametrize("bypass", ["decimal", "mapped-ipv6", "userinfo", "dns-name", "short"])
async def test_async_httpx_redirect_to_trap_never_arrives(servers: Servers, bypass: str) -> None:
    target = trap_spellings(servers.port)[bypass]
    transport = ssrf.AsyncHTTPTransport(make_guard(servers))
    async with httpx.AsyncClient(transport=transport, follow_redirects=True,
                                 trust_env=False) as client:
        with pytest.raises(ssrf.Blocked):
            await client.get(servers.redirect(target))
    assert servers.trap_hits == []


def test_dns_rebinding_has_no_window(servers: Servers) -> None:
    """The first answer is the trusted address, every later one the trap on the same port: a
    guard that validated one lookup and let the client do another would land on the trap."""
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    transport = ssrf.HTTPTransport(make_guard(servers, resolve=rebinding))
    with httpx.Client(transport=transport, trust_env=False) as client:
        assert client.get(f"http://rebind.test:{servers.port}/ok").text == "ok"
        with pytest.raises(ssrf.Blocked, match="loopback"):
            client.get(f"http://rebind.test:{servers.port}/ok")
    assert len(calls) == 2  # one lookup per request, none behind the guard's back
    assert servers.trap_hits == []
    assert len(servers.legit_hits) == 1


def test_requests_adapter_resolves_once_per_connection(servers: Servers) -> None:
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    session = requests.Session()
    session.trust_env = False
    session.mount("http://", ssrf.RequestsAdapter(make_guard(servers, resolve=rebinding)))
    assert session.get(f"http://rebind.test:{servers.port}/ok", timeout=10).text == "ok"
    assert servers.trap_hits == [] and calls == ["rebind.test"]


@pytest.mark.parametrize(
    "name",
    ["metadata.test", "aws6.test", "cgnat.test", "private.test", "ula.test", "linklocal6.test",
     "nat64local.test", "sixtofour.test", "teredo.test", "multicast.test", "reserved.test",
     "unspecified.test"],
)
def test_resolver_answers_in_forbidden_ranges_are_refused(servers: Servers, name: str) -> None:
    transport = ssrf.HTTPTransport(make_guard(servers))
    with httpx.Client(transport=transport, trust_env=False) as client, \
            pytest.raises(ssrf.Blocked) as err:
        client.get(f"http://{name}:{servers.port}/")
    assert err.value.address == ipaddress.ip_address(ANSWERS[name][0])
    assert servers.trap_hits == [] and servers.legit_hits == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http://example.com:22/", "port"),
        ("http://1.1.1.1:8080/", "port"),
        ("http://example.com\\@1.1.1.1/", "backslash"),
        ("http://exa mple.com/", "whitespace"),
        ("http://metadata.google.internal/", "metadata"),
        ("http://[::1%25eth0]/", "zone"),
        ("http://1.2.3.4.5/", "four"),
        ("http://256.1.1.1/", "range"),
        ("http://example.com:0/", "port"),
        ("http://a:b:c/", "':'"),
        ("javascript:alert(1)", "scheme"),
    ],
)
def test_schemes_ports_and_malformed_urls(url: str, reason: str) -> None:
    with pytest.raises(ssrf.Blocked, match=reason):
        ssrf.check_url(url, resolver=resolver, bus=EventBus())


def test_public_addresses_pass_and_host_allowlist() -> None:
    public = {"api.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}

    def res(host: str, port: int) -> list[str]:
        return public[host]

    guard = ssrf.Guard(ssrf.Policy.build(allow_hosts=[".example"]), resolver=res,
                       bus=EventBus())
    assert str(guard.check_url("https://api.example/v1")) == "93.184.215.14"
    assert str(ssrf.check_url("http://8.8.8.8/", bus=EventBus())) == "8.8.8.8"
    with pytest.raises(ssrf.Blocked, match="allowlist"):
        guard.check_url("http://8.8.8.8/")
    with pytest.raises(ssrf.Blocked, match="allowlist"):
        guard.check_url("https://other.org/")


def test_special_purpose_table_beyond_is_global() -> None:
    # 100.64/10 is neither private nor global; 192.0.0.192 is Oracle's metadata address.
    for text in ("100.64.0.1", "100.127.255.254", "192.0.0.192", "198.18.0.1", "192.88.99.1",
                 "::", "::1", "fec0::1", "5f00::1", "3fff::1", "100::1", "2001:db8::1"):
        assert forbidden_reason(ipaddress.ip_address(text)) is not None, text
    for text in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert forbidden_reason(ipaddress.ip_address(text)) is None, text


@pytest.mark.parametrize(
    ("host", "address"),
    [("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("017700000001", "127.0.0.1"),
     ("127.1", "127.0.0.1"), ("10.1.258", "10.1.1.2"), ("0", "0.0.0.0"),
     ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"), ("example.com", None), ("1e100.net", None)],
)
def test_ipv4_spellings(host: str, address: str | None) -> None:
    parsed = parse_ip_host(host)
    assert (str(parsed) if parsed else None) == address


def test_ready_clients_bound_redirects_and_ignore_proxies(servers: Servers) -> None:
    policy = ssrf.Policy.build(ports=[servers.port], trusted_networks=["127.0.0.1/32"],
                               max_redirects=2)
    guard = ssrf.Guard(policy, resolver=resolver, bus=EventBus())
    loop3 = servers.redirect(servers.redirect(servers.redirect(f"{servers.legit}/ok")))
    with ssrf.client(guard) as client:
        assert client.get(servers.redirect(f"{servers.legit}/ok")).text == "ok"
        with pytest.raises(httpx.TooManyRedirects):
            client.get(loop3)
    s = ssrf.session(guard)
    assert s.get(servers.redirect(f"{servers.legit}/ok"), timeout=10).text == "ok"
    with pytest.raises(requests.TooManyRedirects):
        s.get(loop3, timeout=10)
    assert servers.trap_hits == []


def test_blocked_event_redacts_credentials() -> None:
    bus = EventBus()
    events: list[Event] = []
    bus.on(SSRF_BLOCKED, events.append)
    with pytest.raises(ssrf.Blocked):
        ssrf.check_url("http://admin:hunter2@10.0.0.1/", bus=bus)
    assert "hunter2" not in events[0].detail["url"]
    assert events[0].detail["url"].startswith("http://***@10.0.0.1")


def test_tls_is_verified_against_the_name_while_connecting_to_the_pinned_address(
    tls_server: Any,
) -> None:
    """Pinning the address must not weaken TLS: the certificate (for legit.test only) is
    checked against the name in the URL, and a name it does not cover fails."""
    import ssl

    policy = ssrf.Policy.build(ports=[tls_server.port], trusted_networks=["127.0.0.1/32"])
    answers = {"legit.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    guard = ssrf.Guard(policy, resolver=lambda h, p: answers[h], bus=EventBus())
    ctx = ssl.create_default_context(cafile=tls_server.cafile)
    with ssrf.client(guard, verify=ctx) as client:
        assert client.get(f"https://legit.test:{tls_server.port}/ok").text == "ok"
        with pytest.raises(httpx.ConnectError, match=r"certificate|hostname"):
            client.get(f"https://other.test:{tls_server.port}/ok")
    s = ssrf.session(guard)
    assert s.get(f"https://legit.test:{tls_server.port}/ok", verify=tls_server.cafile,
                 timeout=10).text == "ok"
    with pytest.raises(requests.exceptions.SSLError):
        s.get(f"https://other.test:{tls_server.port}/ok", verify=tls_server.cafile, timeout=10)
