"""Web server decoy: Apache 2.4 on Debian with its default page, a login page and 404s.

Records the request line, headers and (bounded) body of each request. A POST to the login page
is recorded as a credential attempt and always fails. At most a few requests per connection.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs

from garrison.sensors.honeypot.services.httpwire import BadRequest, Request, read_request, response
from garrison.sensors.honeypot.session import Session, SessionEnd

SERVER: Final = b"Apache/2.4.62 (Debian)"
BANNER: Final = "Apache httpd 2.4.62 (Debian)"
MAX_REQUESTS: Final = 4

_INDEX: Final = b"""<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
  <head>
    <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
    <title>Apache2 Debian Default Page: It works</title>
  </head>
  <body>
    <div class="main_page">
      <div class="page_header floating_element">
        <span class="floating_element">Apache2 Debian Default Page</span>
      </div>
      <div class="section_header"><div id="about"></div>It works!</div>
      <p>This is the default welcome page used to test the correct operation of the Apache2
      server after installation on Debian systems. If you can read this page, it means that
      the Apache HTTP server installed at this site is working properly. You should
      <b>replace this file</b> (located at <tt>/var/www/html/index.html</tt>) before
      continuing to operate your HTTP server.</p>
    </div>
  </body>
</html>
"""

_LOGIN: Final = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body><form method="post" action="%s">
<h1>Administration</h1>%s
<label>Username <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button></form></body></html>
"""

_LOGIN_PATHS: Final = frozenset({b"/admin", b"/admin/", b"/login", b"/wp-login.php"})


def _error_page(code: bytes, title: bytes, text: bytes, host: bytes, port: int) -> bytes:
    return (
        b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n<title>' + code
        + b" " + title + b"</title>\n</head><body>\n<h1>" + title + b"</h1>\n<p>" + text
        + b"</p>\n<hr>\n<address>Apache/2.4.62 (Debian) Server at " + host + b" Port "
        + str(port).encode() + b"</address>\n</body></html>\n"
    )


def _credentials(s: Session, req: Request) -> None:
    form = parse_qs(req.body.decode("latin-1"), max_num_fields=8)
    user = (form.get("username") or form.get("log") or form.get("user") or [""])[0]
    password = (form.get("password") or form.get("pwd") or form.get("pass") or [""])[0]
    if user or password:
        s.credential(user, password)


def page(s: Session, req: Request, host: bytes) -> bytes:
    """The response to one request (pure: depends only on the request)."""
    head = req.method == b"HEAD"
    html = [(b"Content-Type", b"text/html; charset=UTF-8")]
    base = [(b"Server", SERVER)]
    if req.method not in (b"GET", b"HEAD", b"POST", b"OPTIONS"):
        body = _error_page(b"405", b"Method Not Allowed",
                           b"The requested method is not allowed for this URL.", host, s.local_port)
        return response(b"405 Method Not Allowed", [*base, (b"Allow", b"GET,POST,OPTIONS,HEAD"),
                        *html], body, head=head)
    if req.method == b"OPTIONS":
        return response(b"200 OK", [*base, (b"Allow", b"GET,POST,OPTIONS,HEAD"),
                        (b"Content-Type", b"text/html")], b"")
    if req.path in (b"/", b"/index.html"):
        return response(b"200 OK", [*base, (b"Last-Modified", b"Tue, 04 Jun 2024 08:16:21 GMT"),
                        (b"ETag", b'"29cd-61a0c0e24e340"'), (b"Accept-Ranges", b"bytes"),
                        (b"Vary", b"Accept-Encoding"), *html], _INDEX, head=head)
    if req.path == b"/robots.txt":
        return response(b"200 OK", [*base, (b"Content-Type", b"text/plain")],
                        b"User-agent: *\nDisallow: /admin/\n", head=head)
    if req.path in _LOGIN_PATHS:
        failed = b""
        if req.method == b"POST":
            _credentials(s, req)
            failed = b"<p class=\"error\">Invalid username or password.</p>"
        status = b"401 Unauthorized" if failed else b"200 OK"
        return response(status, [*base, (b"Cache-Control", b"no-store"), *html],
                        _LOGIN % (b"/admin/", failed), head=head)
    body = _error_page(b"404", b"Not Found", b"The requested URL was not found on this server.",
                       host, s.local_port)
    return response(b"404 Not Found", [*base, *html], body, head=head)


async def serve(s: Session) -> None:
    """Up to ``MAX_REQUESTS`` requests on one connection (keep-alive as the client asks)."""
    # Error pages name the server by our own address, never the visitor's Host header.
    host = (f"[{s.local_ip}]" if ":" in s.local_ip else s.local_ip or "localhost").encode()
    for _ in range(MAX_REQUESTS):
        try:
            req = await read_request(s)
        except BadRequest:
            body = _error_page(b"400", b"Bad Request",
                               b"Your browser sent a request that this server could not "
                               b"understand.<br />\n", host, s.local_port)
            await s.send(response(b"400 Bad Request", [(b"Server", SERVER), (b"Connection",
                                  b"close"), (b"Content-Type", b"text/html; charset=iso-8859-1")],
                                  body))
            return
        await s.send(page(s, req, host))
        keep = req.version == b"HTTP/1.1" and (req.header(b"connection") or b"").lower() != b"close"
        if not keep:
            raise SessionEnd("done")
