"""Fixtures for the guard tests: loopback HTTP servers (a redirector and a trap that records
hits) and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@dataclass
class Servers:
    """``legit`` on 127.0.0.1:port redirects (``/redirect?to=URL``) or answers ``/ok``;
    ``trap`` on 127.0.0.2 (same port) answers everything and records each hit."""

    port: int
    legit_hits: list[str] = field(default_factory=list)
    trap_hits: list[str] = field(default_factory=list)

    @property
    def legit(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def redirect(self, to: str, status: int = 302) -> str:
        return f"{self.legit}/redirect?status={status}&to={urllib.parse.quote(to, safe='')}"


def _handler(record: list[str], redirects: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            record.append(f"{self.headers.get('Host')} {self.path}")
            parsed = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parsed.query)
            if redirects and parsed.path == "/redirect":
                self.send_response(int(query.get("status", ["302"])[0]))
                # Raw UTF-8, as a hostile server would send it (send_header insists on latin-1).
                buffer = self._headers_buffer  # type: ignore[attr-defined]
                buffer.append(b"Location: " + query["to"][0].encode() + b"\r\n")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"trap" if not redirects else b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def servers() -> Iterator[Servers]:
    for _ in range(20):
        legit = ThreadingHTTPServer(("127.0.0.1", 0), _handler([], True))
        port = legit.server_address[1]
        try:
            trap = ThreadingHTTPServer(("127.0.0.2", port), _handler([], False))
        except OSError:
            legit.server_close()
            continue
        break
    else:
        pytest.skip("could not bind 127.0.0.1 and 127.0.0.2 on one port")
    s = Servers(port)
    legit.RequestHandlerClass = _handler(s.legit_hits, True)
    trap.RequestHandlerClass = _handler(s.trap_hits, False)
    threads = [
        threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
        for srv in (legit, trap)
    ]
    for t in threads:
        t.start()
    try:
        yield s
    finally:
        for srv in (legit, trap):
            srv.shutdown()
            srv.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL server in a temporary directory on a free loopback port (trust auth)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("needs PostgreSQL server binaries (Debian package postgresql)")
    bindir = Path(bins[-1]).parent
    root = os.geteuid() == 0
    if root:
        try:
            import pwd

            pg = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("needs the 'postgres' system user to run the server as root")
    tmp = tempfile.mkdtemp(prefix="gg-pg-")
    data = os.path.join(tmp, "data")
    if root:
        os.chown(tmp, pg.pw_uid, pg.pw_gid)
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, env=env, timeout=120,
        )
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", data, "-l", os.path.join(tmp, "log"),
             "-w", "-t", "60", "-o",
             f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
            check=True, capture_output=True, env=env, timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = Path(tmp, "log").read_text() if Path(tmp, "log").exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc}: {getattr(exc, 'stderr', b'')!r} {log}")
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    deadline = time.monotonic() + 30
    import psycopg

    while True:
        try:
            psycopg.connect(dsn).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield dsn
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True, env=env, timeout=60,
        )
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class TLSServer:
    """An HTTPS server on 127.0.0.1 whose certificate names only ``legit.test``."""

    port: int
    cafile: str


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    import ssl

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=legit.test",
         "-addext", "subjectAltName=DNS:legit.test"],
        check=True, capture_output=True, timeout=60,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler([], True))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield TLSServer(server.server_address[1], str(cert))
    finally:
        server.shutdown()
        server.server_close()
