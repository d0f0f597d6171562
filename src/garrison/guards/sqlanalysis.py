"""Structural analysis of one SQL text as the application sends it to the database.

:func:`analyze` parses the SQL with sqlglot and returns its normalised shape (literals replaced
by ``?``, ``IN`` lists collapsed) with a short fingerprint of that shape, and the injected
structure it finds:

- stacked statements (more than one statement in one ``execute``);
- always-true conditions added to a ``WHERE``/``HAVING``/``ON``: a constant branch of an ``OR``
  (``id = 5 OR 1=1``, ``name = '' OR ''=''``) or a column compared with itself;
- ``UNION SELECT`` grafted onto a query: a set operation whose branch selects only constants or
  reads a system catalog (``information_schema``, ``pg_catalog``, ``sqlite_master``...);
- comment truncation: a line comment (``--``, ``#``) that ends the text after code, or an
  unterminated ``/*``;
- time-delay, file and command functions (``sleep``, ``pg_sleep``, ``benchmark``,
  ``load_file``, ``pg_read_file``, ``xp_cmdshell``, ...), ``WAITFOR DELAY``, ``INTO OUTFILE``
  and ``COPY ... PROGRAM``.

Text that sqlglot cannot parse is fingerprinted lexically (:mod:`garrison.guards.sqllex`) and
still gets the lexical checks.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from garrison.guards.sqllex import tokenize, words

__all__ = ["Analysis", "analyze"]

DANGEROUS: Final = words(
    """
    sleep pg_sleep pg_sleep_for pg_sleep_until benchmark load_file pg_read_file
    pg_read_binary_file pg_ls_dir pg_stat_file lo_import lo_export xp_cmdshell xp_dirtree
    xp_fileexist xp_regread sp_oacreate openrowset opendatasource dbms_pipe.receive_message
    dbms_lock.sleep utl_http.request utl_inadr.get_host_address extractvalue updatexml
    load_extension readfile writefile edit fts3_tokenizer dblink dblink_exec dblink_connect
    """
)
SYSTEM_CATALOGS: Final = words(
    """
    information_schema pg_catalog mysql sys sysobjects syscolumns sqlite_master sqlite_schema
    sqlite_temp_master pg_shadow pg_user pg_authid all_tables user_tables dba_users master
    """
)
MAX_SQL: Final = 1_000_000
"""Longest SQL text analysed structurally, in characters (longer: lexical checks only)."""

# Placeholders of the DB-API paramstyles that sqlglot does not read: %s, %(name)s.
_PYFORMAT: Final = re.compile(r"%\((\w+)\)s|%s")


@dataclass(frozen=True, slots=True)
class Analysis:
    """The shape of one SQL text: ``fingerprint`` (16 hex digits of SHA-256 of ``shape``),
    ``shape`` (the normalised SQL), ``problems`` (injected structure found, empty when clean)
    and ``parsed`` (False when only the lexical fallback could read it)."""

    fingerprint: str
    shape: str
    problems: tuple[str, ...]
    parsed: bool


def analyze(sql: str, dialect: str | None = None) -> Analysis:
    """Fingerprint and check ``sql`` (see module doc); ``dialect`` is a sqlglot dialect name."""
    problems = list(_lexical_problems(sql, dialect))
    statements: list[exp.Expr] = []
    if len(sql) <= MAX_SQL:
        try:
            statements = [s for s in sqlglot.parse(_PYFORMAT.sub("?", sql), read=dialect) if s]
        except SqlglotError:
            statements = []
    if not statements:
        shape = _lexical_shape(sql)
        return Analysis(_digest(shape), shape, tuple(dict.fromkeys(problems)), False)
    if len(statements) > 1:
        problems.append(f"stacked statements ({len(statements)} in one execute)")
    for statement in statements:
        problems.extend(_structural_problems(statement))
    shape = ";\n".join(_normalise(s).sql(dialect=dialect) for s in statements)
    return Analysis(_digest(shape), shape, tuple(dict.fromkeys(problems)), True)


def _digest(shape: str) -> str:
    return hashlib.sha256(shape.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _lexical_problems(sql: str, dialect: str | None) -> list[str]:
    out: list[str] = []
    toks = tokenize(sql, max_tokens=100_000)
    code_seen = False
    for i, t in enumerate(toks):
        if t.type == "c":
            is_line = t.text.startswith("--") or (
                t.text.startswith("#") and dialect in (None, "mysql")
            )
            if is_line and code_seen and all(x.type == "c" for x in toks[i + 1 :]):
                out.append(f"comment truncates the query ({t.text[:20]!r} at the end)")
            elif t.text.startswith("/*") and not t.text.endswith("*/"):
                out.append("unterminated /* comment")
            continue
        code_seen = True
        nxt = toks[i + 1].text if i + 1 < len(toks) else ""
        if t.text == "WAITFOR" and nxt in ("DELAY", "TIME"):
            out.append("WAITFOR DELAY time delay")
        elif t.text == "INTO" and nxt in ("OUTFILE", "DUMPFILE"):
            out.append(f"INTO {nxt} file write")
        elif t.text == "PROGRAM" and any(x.text == "COPY" for x in toks[:i]):
            out.append("COPY ... PROGRAM command execution")
        elif t.type == "f" and t.text.lower() in DANGEROUS:
            out.append(f"call of {t.text.lower()}()")
    return out


def _lexical_shape(sql: str) -> str:
    parts = []
    for t in tokenize(sql, max_tokens=100_000):
        if t.type == "c":
            continue
        parts.append("?" if t.type in ("s", "1") and t.text not in ("NULL",) else t.text)
    return " ".join(parts)


def _func_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return ""


def _structural_problems(statement: exp.Expr) -> list[str]:
    out: list[str] = []
    for node in statement.walk():
        if isinstance(node, exp.Func):
            name = _func_name(node)
            if isinstance(node, exp.Anonymous) and isinstance(node.parent, exp.Dot):
                name = f"{node.parent.this.sql().lower()}.{name}"
            if name in DANGEROUS:
                out.append(f"call of {name}()")
            elif name == "randomblob" and _big_literal(node):
                out.append("randomblob() of a huge size (time delay)")
        elif isinstance(node, (exp.Where, exp.Having)):
            out.extend(_tautologies(node.this))
        elif isinstance(node, exp.Join) and node.args.get("on") is not None:
            out.extend(_tautologies(node.args["on"]))
        elif isinstance(node, exp.Union | exp.Intersect | exp.Except):
            for side in (node.left, node.right):
                reason = _grafted(side)
                if reason:
                    out.append(f"{node.key.upper()} {reason}")
    return out


def _big_literal(node: exp.Expr) -> bool:
    for lit in node.find_all(exp.Literal):
        if not lit.is_string and lit.this.isdigit() and int(lit.this) > 1_000_000:
            return True
    return False


def _tautologies(cond: exp.Expr) -> list[str]:
    out = []
    for branch in _or_branches(cond):
        if len(branch) < 2:
            continue
        for b in branch:
            # A constant branch, or a constant conjunct inside a branch (`x OR 'a'='a' AND y`),
            # is never how an application writes a condition.
            parts = list(b.unnest().flatten()) if isinstance(b.unnest(), exp.And) else [b]
            for part in parts:
                if _constant(part):
                    out.append(f"always-true condition OR {part.sql()[:60]}")
    for node in cond.walk():
        if isinstance(node, exp.EQ | exp.GTE | exp.LTE | exp.Like | exp.Is) and (
            isinstance(node.left, exp.Column) and node.left == node.right
        ):
            out.append(f"always-true condition {node.sql()[:60]}")
    return out


def _or_branches(cond: exp.Expr) -> list[list[exp.Expr]]:
    """Each OR chain in ``cond``, flattened into its operands."""
    chains = []
    for node in cond.walk():
        if isinstance(node, exp.Or) and not isinstance(node.parent, exp.Or):
            chains.append(list(node.flatten()))
    return chains


def _constant(node: exp.Expr) -> bool:
    """No column, placeholder or subquery: the branch is the same for every row."""
    for sub in node.walk():
        if isinstance(sub, exp.Column | exp.Placeholder | exp.Parameter | exp.Subquery |
                      exp.Select):
            return False
        if isinstance(sub, exp.Anonymous | exp.Func) and not isinstance(
            sub, exp.Binary | exp.Not | exp.Paren | exp.Cast
        ):
            return False
    return True


def _grafted(side: exp.Expr) -> str | None:
    if not isinstance(side, exp.Select):
        return None
    for table in side.find_all(exp.Table):
        names = {table.name.lower(), (table.db or "").lower(), (table.catalog or "").lower()}
        hit = names & SYSTEM_CATALOGS
        if hit:
            return f"SELECT from system catalog {sorted(hit)[0]}"
    if side.args.get("from_") is None and side.args.get("from") is None and all(
        _constant(e) for e in side.expressions
    ):
        return "SELECT of constants only"
    return None


def _normalise(statement: exp.Expr) -> exp.Expr:
    def replace(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Literal):
            return exp.Placeholder()
        if isinstance(node, exp.In) and node.expressions:
            return exp.In(this=node.this, expressions=[exp.Placeholder()])
        if isinstance(node, exp.Tuple) and node.expressions and all(
            isinstance(e, exp.Literal | exp.Placeholder) for e in node.expressions
        ):
            return exp.Tuple(expressions=[exp.Placeholder()])
        return node

    return statement.copy().transform(replace)
