"""Gateway guards: decisions on single inputs, used from the web middleware and from
application code.

- :mod:`garrison.guards.sqli` -- SQL-injection detection on user input (lexical).
- :mod:`garrison.guards.sqlfirewall` -- SQL firewall at the database (parsed, learn/enforce).
- :mod:`garrison.guards.ssrf` -- SSRF guard for outbound URLs, with httpx/requests transports.
- :mod:`garrison.guards.paths` -- path-traversal and connection-string injection checks.

Import the submodule you need (``from garrison.guards import sqli, ssrf, paths``); the optional
dependencies (sqlglot, httpx, requests, SQLAlchemy) load only with the parts that use them.
"""
