"""SQL-injection detection for single user inputs (query values, form fields, headers, cookies).

``inspect(value, paranoia=1)`` returns a :class:`Finding` or ``None``. The decision is lexical:
the input is tokenized as SQL (:mod:`garrison.guards.sqllex`) in each context it could be spliced
into -- as a bare value (a number or a name), and as the rest of a single- or double-quoted string
(the input is read as if a quote preceded it, the way libinjection does) -- and each token stream
is checked for the shapes an injection needs: breaking out of the value and continuing with a
logical or comparison operator and a well-formed operand, ``UNION SELECT``, a stacked statement
after ``;``, a comment that truncates the rest of the query, a clause (``ORDER BY``, ``HAVING``,
``INTO OUTFILE``) glued to the value, or calls of time-delay, file and system functions.
Functions are matched on tokens, never substrings: ``sleep_hours`` is a word, ``sleep(5)`` a call.

Besides these shapes, paranoia 1 has a few narrow rules for what the OWASP CRS rules of its
paranoia level 1 catch without a full SQL shape, each with its own reason: a whole value that is
a system catalog or database name (``pg_catalog``, ``tempdb``), an integer/float overflow
boundary (``4294967296``), a MongoDB operator (``$ne``, ``u_id[$where]``), MySQL's ``1.e(``
number gluing, an unclosed ``database(``, ``CASE WHEN ... THEN``, ``) LIKE (``, ``IF(2=``,
``DIV(23,-2)``, a leading ``;truncate t``, and short shapes right after the closing quote
(``'!x``, ``'select x``, `` ` REGEXP``, ``x';``).

Paranoia levels (1..4) trade false positives for reach: 1 is tuned to flag almost no ordinary
text; 2 also flags bare-operand logic on numbers (``1 or 1``), comments after a value,
information functions such as ``version()`` on their own, curly and escaped quotes (U+2018,
``\\'``) read as quotes, the part after a ``key=`` prefix, and SQL fragments (a value opening
with ``HAVING 1>``, ``OR 1 <``, ``FROM t LIMIT``, ``) AS c FROM``, ``EXECUTE x``; an unclosed
``concat(``; a constant tautology ``1=1``; SQL Server/Oracle system procedure names); 3 also
decodes one level of percent-encoding, flags any SQL function call with SQL arguments,
``SELECT ... FROM`` anywhere, function names hidden behind punctuation (``length||(``) and SQL
operators on their own; 4 flags any quote break-out followed by SQL syntax.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Final

from garrison.guards.sqllex import (
    DANGEROUS_FUNCTIONS,
    FUNCTIONS,
    INFO_FUNCTIONS,
    Token,
    tokenize,
    words,
)

__all__ = ["Finding", "inspect"]

MAX_INPUT: Final = 8192
"""Characters of an input that are inspected; the rest is ignored so the cost stays bounded."""

# Flags of a parsed expression (see _expr).
_OP, _CMP, _SQL = 1, 2, 4

_OPERAND: Final = frozenset("1snv")
_CONTINUE: Final = frozenset("c;)&UB,ko")
_COMPARE: Final = words(
    """
    = <> != < > <= >= <=> !< !> LIKE RLIKE ILIKE REGEXP GLOB IS IN BETWEEN SOUNDS NOT MATCH
    SIMILAR
    """
)
_BITWISE: Final = frozenset({"&", "|", "^", "DIV", "MOD", "<<", ">>", "||"})
_UNARY: Final = frozenset({"-", "+", "~", "!", "NOT", "BINARY"})
_AT_AT: Final = words(
    """
    @@VERSION @@DATADIR @@HOSTNAME @@BASEDIR @@SERVERNAME @@SPID @@LANGUAGE @@TMPDIR
    @@VERSION_COMPILE_OS @@GLOBAL @@SESSION @@PLUGIN_DIR
    """
)
_DDL_OBJECTS: Final = words(
    """
    TABLE DATABASE VIEW INDEX PROCEDURE FUNCTION TRIGGER SCHEMA USER LOGIN
    """
)
_CONTEXTS: Final = (
    ("value", ""), ("single-quote", "'"), ("double-quote", '"'), ("backtick", "`"),
)
_CATALOGS: Final = words(
    """
    INFORMATION_SCHEMA PG_CATALOG PG_SHADOW PG_USER MYSQL.USER MYSQL.DB SYSOBJECTS SYSCOLUMNS
    SQLITE_MASTER SQLITE_SCHEMA SQLITE_TEMP_MASTER MASTER.SYSDATABASES MSYSACCESSOBJECTS
    MSYSOBJECTS SYS.OBJECTS SYS.TABLES ALL_TABLES USER_TABLES DBA_USERS
    """
)
_PG_TYPES: Final = words(
    """
    INT INTEGER BIGINT SMALLINT TEXT BOOL BOOLEAN NUMERIC OID REAL DOUBLE VARCHAR CHAR JSON
    JSONB BYTEA REGCLASS DATE TIMESTAMP
    """
)
_ALTER_ACTIONS: Final = words("ADD CHANGE DROP MODIFY RENAME ALTER OWNER DISABLE ENABLE")
_END: Final = Token("", "")
_PAIR: Final = re.compile(r"[A-Za-z_][\w.\[\]-]{0,63}=")
_QUOTE_FOLD: Final = str.maketrans({"\u2018": "'", "\u2019": "'", "\uff07": "'"})
_ESCAPED_QUOTE: Final = re.compile(r"\\+(['\"`])")
# Names whose mere mention in a value is an attack at paranoia 2: SQL Server extended and
# system procedures, Oracle packages and OLE DB providers (CRS rules 942470, 942480).
_PROCEDURES: Final = words(
    """
    XP_CMDSHELL XP_DIRTREE XP_FILEEXIST XP_REGREAD XP_REGWRITE XP_REGDELETEKEY XP_REGENUMKEYS
    XP_SERVICECONTROL XP_AVAILABLEMEDIA XP_MAKECAB XP_NTSEC_ENUMDOMAINS XP_TERMINATE_PROCESS
    XP_LOGINCONFIG XP_FILELIST XP_ENUMDSN XP_EXECRESULTSET SP_EXECUTESQL SP_PASSWORD
    SP_OACREATE SP_MAKEWEBTASK SP_ADDEXTENDEDPROC SP_REPLWRITETOVARBIN SP_EXECUTE SP_PREPARE
    SP_IS_SRVROLEMEMBER UTL_HTTP UTL_FILE UTL_INADDR OPENROWSET OPENQUERY OPENDATASOURCE
    OPENOWA_UTIL DBMS_JAVA AUTONOMOUS_TRANSACTION MSDASQL SQLOLEDB SYS_CONTEXT
    """
)
# Extra SQL function names for the unclosed-call fragment rule (CRS rule 942410).
_MORE_FUNCTIONS: Final = words(
    """
    ABS ACOS ASIN ATAN ATAN2 COS COT SIN TAN PI LN LOG10 LOG2 SIGN DEGREES RADIANS DATE DAY
    DAYNAME DAYOFMONTH DAYOFWEEK DAYOFYEAR TIME HOUR MINUTE SECOND MONTH MONTHNAME YEAR
    QUARTER WEEK WEEKDAY DEFAULT LOCAL PASSWORD VALUES INSERT TRUNCATE MAX MIN TRIM STRCMP
    SUBSTR SUBSTRING SYSDATE UPPER LOWER VERSION XMLTYPE UPDATEXML UNHEX UNCOMPRESS
    """
)
_LONE_OPERATORS: Final = words(
    "= == != <> < > <= >= <=> >> << || && XOR RLIKE REGEXP LIKE ILIKE GLOB IS NULL NOT"
)
_TAUTOLOGY_EQ: Final = words("= == <=> LIKE GLOB REGEXP RLIKE")
_TAUTOLOGY_NE: Final = words("!= <>")
# System databases, catalogs and sample schemas that only an attacker probing the database sends
# as a whole value (``?table=pg_catalog``); as words inside prose they are left to paranoia 2.
_SYSTEM_OBJECTS: Final = _CATALOGS | words(
    """
    PG_TOAST TEMPDB MSDB NORTHWIND SCHEMA_NAME SYSAUX SYS.DATABASE_NAME MASTER..SYSDATABASES
    MSYSACCESSSTORAGE MSYSACCESSXML MSYSACES MSYSMODULES MSYSMODULES2 MSYSQUERIES
    MSYSRELATIONSHIPS
    """
)
# Integer- and float-boundary values sent to provoke overflow errors (CRS rule 942220); the
# whole value must be one of them.
_MAGIC_NUMBERS: Final = words(
    """
    4294967295 4294967296 2147483647 2147483648 -2147483648 -2147483649 0000012345 0000023456
    -0000023456 2.2250738585072007e-308 2.2250738585072011e-308 1e309
    """
)
# MongoDB query operators as a whole value (a JSON key) or in PHP/Express bracket syntax
# (``u_id[$ne]=1``): how NoSQL injection reaches a query (CRS rule 942290).
_NOSQL: Final = re.compile(
    r"(?:^|\[)\$(?:ne|nin|in|not|nor|eq|exists|elemmatch|lte?|gte?|like|mod|all|and|size|slice|"
    r"where|type|text|x?or|div|between|regex|jsonschema|expr)(?:\]|$)",
    re.I,
)
# MySQL reads ``1.e`` as the number 1 glued to what follows: ``1.e(ascii)`` and ``1.e.tables``
# hide SQL from word-boundary filters (CRS rule 942560).
_SCI_NOTATION: Final = re.compile(r"\d\.e[(),.][\w(]", re.I)
# ``6 as "x" from``: a number aliased with a quoted name and followed by FROM (CRS rule 942360).
_ALIAS_FROM: Final = re.compile(
    r"\b\d+\s+as\s*(?:[\"'`]\w*[\"'`]?|\w+[\"'`])\s*from\b", re.I
)
# Words that start a second statement after a leading ``;`` (CRS rule 942350).
_LEADING_STATEMENTS: Final = words(
    "ALTER CREATE TRUNCATE UPDATE RENAME DELETE DESC DROP INSERT SELECT LOAD"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """Why an input was judged to be SQL injection.

    ``fingerprint`` is the token-type string of the input in the context that matched (see
    :mod:`garrison.guards.sqllex`; at most 16 characters), ``context`` that context (``value``,
    ``single-quote`` or ``double-quote``), ``reason`` a short explanation, ``evidence`` the text
    of the tokens around the match (at most 120 characters) and ``paranoia`` the level used.
    """

    fingerprint: str
    context: str
    reason: str
    evidence: str
    paranoia: int


def inspect(value: str | bytes, paranoia: int = 1) -> Finding | None:
    """Judge one input value; a :class:`Finding` when it carries SQL injection, else ``None``."""
    if not 1 <= paranoia <= 4:
        raise ValueError(f"paranoia must be 1..4, got {paranoia!r}")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not value:
        return None
    value = value[:MAX_INPUT]
    finding = _inspect_text(value, paranoia)
    if finding is None and paranoia >= 2:
        # Quotes a charset conversion or a double-unescaping application turns into real ones:
        # U+2018/U+2019/U+FF07 become ', and \' \" \` lose their backslash (CRS 942440/942522).
        normal = value.translate(_QUOTE_FOLD)
        if "\\" in normal:
            normal = _ESCAPED_QUOTE.sub(r"\1", normal)
        if normal != value:
            finding = _inspect_text(normal, paranoia)
        pair = _PAIR.match(value)
        if finding is None and pair and pair.end() < len(value):
            # ``pay=AND 1=1`` arriving as one value (an encoded ``=`` in a parameter name, a
            # query string inside a value): judge what follows the key on its own as well.
            finding = _inspect_text(value[pair.end() :], paranoia)
    if finding is None and paranoia >= 3 and "%" in value:
        decoded = urllib.parse.unquote_plus(value)
        if decoded != value:
            finding = _inspect_text(decoded, paranoia)
    return finding


def _inspect_text(value: str, paranoia: int) -> Finding | None:
    whole = _whole_value(value, paranoia)
    if whole is not None:
        return whole
    if value.isalnum() and paranoia < 4:
        return None  # one plain word or number: no SQL syntax possible
    if "/*!" in value:
        # MySQL executable comments exist to hide SQL from everything but MySQL.
        return Finding("c", "value", "MySQL executable comment /*!", value[:120], paranoia)
    for context, quote in _CONTEXTS:
        if quote and quote not in value:
            continue  # the whole input stays inside the string literal
        toks = tokenize(quote + value)
        hit = _anywhere(toks, paranoia) or _breakout(toks, quote, paranoia)
        if hit is None and paranoia >= 2:
            hit = _fragments(toks, quote, paranoia)
        if hit is not None:
            reason, at = hit
            fp = "".join(t.type for t in toks)[:16]
            evidence = " ".join(t.text for t in toks[max(0, at - 2) : at + 4])[:120]
            return Finding(fp, context, reason, evidence, paranoia)
    return None


def _fragments(toks: list[Token], quote: str, paranoia: int) -> tuple[str, int] | None:
    """Paranoia 2 and up: pieces of SQL that are not a complete injection but that only SQL
    produces -- a value that starts with ``HAVING``, ``FROM t LIMIT``, ``EXECUTE x``,
    ``) AS c FROM``, ``OR 1 <``; an unclosed call ``concat(``; a constant tautology ``1=1``;
    the name of a system procedure (CRS's paranoia-2 rules 942120-942480)."""
    n = len(toks)
    if n == 0:
        return None
    for i, t in enumerate(toks):
        if t.type == "n" and t.text.strip("`'\"").upper() in _PROCEDURES:
            return f"system procedure name {t.text}", i
        if t.type == "f" and i + 1 < n and toks[i + 1].type == "(" and (
            _known(t.text) or t.text in _MORE_FUNCTIONS
        ) and _match_paren(toks, i + 1) == n - 1 and toks[-1].type != ")":
            return f"unclosed call of SQL function {t.text}(", i
    if quote:
        first = toks[1] if n > 1 else _END
        if first.type == "&":
            j = _skip_i(toks, 2, "o")
            if j + 1 < n and toks[j].type in _OPERAND and toks[j + 1].type == "o":
                return f"logic operator {first.text} with a dangling comparison", 1
            if j < n and toks[j].type == "c" and _strong_comment(toks[j].text):
                return f"logic operator {first.text} cut by a comment", 1
        if first.text in ("ALTER", "UNION") and len(toks[0].text) == 2 and n > 2 and (
            toks[2].type not in "sc" and toks[-1].type != "s"
        ):
            return f"{first.text} right after the closed string", 1
        return None
    head = toks[0]
    second = toks[1] if n > 1 else _END
    third = toks[2] if n > 2 else _END
    if head.type == "&" or head.text in ("DIV", "LIKE"):
        j = _skip_i(toks, 1, "(")
        nxt = toks[j] if j < n else _END
        after = toks[j + 1] if j + 1 < n else _END
        if head.type != "&" and nxt.type != "1":
            pass  # ``div role="x"`` is HTML
        elif nxt.type in _OPERAND and (after.type == "o" or (
            nxt.type == "1" and (after is _END or (
                after.type == "c" and _strong_comment(after.text)))
        )):
            return f"value opens with {head.text} and a comparison", 0
    for i in range(n - 1):
        if toks[i].type == "&" and i > 0 and toks[i + 1].type == "c" and _strong_comment(
            toks[i + 1].text
        ):
            return f"logic operator {toks[i].text} cut by a comment", i
    if head.text == "DROP" and second.type == "n" and (
        third is _END or third.type in ";c"
    ) and (n > 2 or any(t.type == "c" for t in toks)):
        return "DROP of a name", 0
    if paranoia >= 3 and head.type in "nf" and (
        _known(head.text) or head.text in _MORE_FUNCTIONS
    ) and n >= 3 and toks[-1].type == "(" and all(t.type in "oX&).;c(" for t in toks[1:]):
        return f"call of SQL function {head.text} hidden behind punctuation", 0
    if head.text == "HAVING":
        end, flags = _expr(toks, 1)
        if second is _END or second.type in "(f" or (
            second.type in "1s" and ((end > 0 and flags & _OP) or third.type == "o")
        ):
            return "HAVING clause fragment", 0
    if head.text in ("EXECUTE", "EXEC") and second.type in "nf(" and n <= 2:
        return f"{head.text} of a procedure", 0
    if head.text == "FROM" and second.type in "n(":
        k = 2
        while k < n and toks[k].type in ".n":
            k += 1
        if k < n and toks[k].text in ("LIMIT", "WHERE", "GROUP BY", "ORDER BY", "HAVING"):
            return f"FROM ... {toks[k].text} fragment", 0
    if head.type == "B" and head.text in ("ORDER BY", "GROUP BY") and n <= 2 and (
        second is _END or second.type == "1"
    ):
        return f"{head.text} fragment", 0
    if head.type == ")" and second.text == "AS" and third.type in "ns" and n > 3 and (
        toks[3].text == "FROM"
    ):
        return "column alias ... FROM fragment", 0
    if head.text in ("IN", "VALUES") and second.type == "(" and third.type in "1s":
        return f"{head.text} (list) fragment", 0
    if head.type == ")" and second.text == "WHEN":
        end = _expr(toks, 2)[0]
        if 0 < end < n and toks[end].text == "THEN":
            return "CASE ... WHEN ... THEN fragment", 0
    if head.type in "1s" and second.type == "o":
        hit = _tautology(toks)
        if hit:
            return hit, 0
    if paranoia >= 3 and all(t.type in "o&" or t.text in _LONE_OPERATORS for t in toks) and (
        any(t.text in _LONE_OPERATORS for t in toks)
    ):
        return "SQL operator on its own", 0
    return None


def _tautology(toks: list[Token]) -> str | None:
    """``1=1``, ``42 like 42``, ``11!=1``, ``'1' not regexp '2'``: a comparison of two constants
    that is always true (CRS rules 942130/942131)."""
    n = len(toks)
    k = 1
    ops = []
    while k < n and toks[k].type == "o":
        ops.append(toks[k].text)
        k += 1
    if k != n - 1 or toks[k].type not in "1s" or not ops:
        return None
    left, right = toks[0].text.strip("'\""), toks[k].text.strip("'\"")
    op = " ".join(ops)
    if op in _TAUTOLOGY_EQ and left == right:
        return f"constant tautology {toks[0].text} {op} {toks[k].text}"
    if (op in _TAUTOLOGY_NE or op in ("IS NOT", "NOT REGEXP", "NOT LIKE")) and left != right:
        return f"constant tautology {toks[0].text} {op} {toks[k].text}"
    return None


def _whole_value(value: str, paranoia: int) -> Finding | None:
    """Values that are an attack by themselves although they carry no SQL syntax: a system
    catalog name, an overflow boundary number, a MongoDB operator, ``1.e`` number gluing."""
    bare = value.strip()
    if bare.lower() in _MAGIC_NUMBERS:
        return Finding("1", "value", "integer/float boundary value (overflow probe)", bare,
                       paranoia)
    name = bare.strip("`[]\"'").upper()
    if name in _SYSTEM_OBJECTS:
        return Finding("n", "value", f"system database/catalog name {name} as the value",
                       bare[:120], paranoia)
    if paranoia >= 2 and name in _PROCEDURES:
        return Finding("n", "value", f"system procedure name {name} as the value", bare[:120],
                       paranoia)
    if "$" in value and _NOSQL.search(value):
        return Finding("X", "value", "MongoDB query operator (NoSQL injection)", value[:120],
                       paranoia)
    if "." in value and _SCI_NOTATION.search(value):
        return Finding("1", "value", "MySQL scientific-notation gluing 1.e", value[:120],
                       paranoia)
    if "from" in value.lower() and _ALIAS_FROM.search(value):
        return Finding("1ksk", "value", "number AS quoted alias FROM", value[:120], paranoia)
    return None


def _anywhere(toks: list[Token], paranoia: int) -> tuple[str, int] | None:
    """Shapes that are SQL wherever they appear: UNION SELECT, stacked statements, calls."""
    n = len(toks)
    if n >= 3 and toks[0].type in ";oX":
        hit = _leading_statement(toks)
        if hit:
            return hit, 1
    for i, t in enumerate(toks):
        ty = t.type
        if ty == "U" and _skip(toks, i + 1, "c(").type == "E":
            return "UNION SELECT grafted onto the query", i
        if ty == ";" and i > 0:
            hit = _stacked(toks, i, paranoia)
            if hit:
                return hit, i
        elif ty == "f" and i + 1 < n and toks[i + 1].type == "(":
            name = t.text.removeprefix("SYS.")
            if name in DANGEROUS_FUNCTIONS and _call_ok(toks, i + 1) and (
                name != "BENCHMARK" or any(x.type == "," for x in toks[i + 2 : i + 8])
            ):
                return f"call of time-delay/file/system function {t.text}()", i
            if name == "BENCHMARK" and _benchmark(toks, i + 1):
                return "call of time-delay function BENCHMARK(n, f())", i
            if name in INFO_FUNCTIONS and i + 2 == n:
                return f"unclosed call of database information function {t.text}(", i
            if name == "IF" and _if_compare(toks, i + 1):
                return "IF(number comparison", i
            if i == 1 and toks[0].type in ",)" and _known(name) and _call_ok(toks, i + 1):
                return f"SQL function call {t.text}() continuing a list", i
            if name in INFO_FUNCTIONS and i + 2 < n and toks[i + 2].type == ")" and (
                paranoia >= 2 or _sqlish_neighbours(toks, i)
            ):
                return f"call of database information function {t.text}()", i
            if paranoia >= 3 and _known(name) and _call_ok(toks, i + 1) and (
                i + 2 < n and toks[i + 2].type in "1svf)"
            ):
                return f"SQL function call {t.text}()", i
        elif ty == "E":
            hit = _statement(toks, i, paranoia)
            if hit:
                return hit, i
        elif ty == "k" and t.text == "FROM" and (
            _skip(toks, i + 1, "c(").text.strip("`").upper().split(".")[0] in _CATALOGS
            or _skip(toks, i + 1, "c(").text.strip("`").upper() in _CATALOGS
        ):
            return "FROM a system catalog", i
        elif ty == "o" and t.text == "LIKE" and i > 0 and toks[i - 1].type == ")" and (
            i + 1 < n and toks[i + 1].type == "("
        ):
            return "LIKE between parenthesised expressions", i
        elif ty == "k" and t.text == "CASE":
            hit = _case_when(toks, i)
            if hit:
                return hit, i
        elif ty == "o" and t.text == "DIV" and _div_call(toks, i):
            return "DIV( number, ...) MySQL operator used as a call", i
        elif ty == "o" and t.text == "::" and i > 0 and toks[i - 1].type in "n1s)" and (
            _skip(toks, i + 1, "c").text in _PG_TYPES
        ):
            return "PostgreSQL type cast ::", i
        elif ty == "B" and t.text == "PROCEDURE" and _skip(toks, i + 1, "c").text == "ANALYSE":
            return "PROCEDURE ANALYSE", i
        elif ty == "B" and t.text == "INTO" and _skip(toks, i + 1, "c").text in (
            "OUTFILE", "DUMPFILE",
        ):
            return "INTO OUTFILE file write", i
        elif paranoia >= 2 and ty == "n" and t.text.strip("`") in _CATALOGS:
            return f"system catalog name {t.text}", i
        elif paranoia >= 2 and ty == "f" and t.text in INFO_FUNCTIONS and (
            i + 1 < n and toks[i + 1].type == "("
        ):
            return f"database information function {t.text}(", i
        elif ty == "v" and t.text.upper().split(".")[0] in _AT_AT and (n > 1 or paranoia >= 2):
            return f"server variable {t.text}", i
    return None


def _leading_statement(toks: list[Token]) -> str | None:
    """The value opens with punctuation and a statement: ``;truncate[x`` (CRS rule 942350),
    ``/CREATE TABLE t`` -- the punctuation ends the application's statement or token."""
    word, nxt = toks[1], toks[2]
    if toks[0].type == ";" and word.text in _LEADING_STATEMENTS:
        k = 3 if nxt.text in ("[", "(") else 2
        name = toks[k] if k < len(toks) else _END
        after = toks[k + 1] if k + 1 < len(toks) else _END
        if name.type in "nf" and len(name.text) >= 2 and after.type != "n":  # not prose
            return f"statement {word.text} after a leading ';'"
    if word.text in ("CREATE", "DROP", "ALTER", "TRUNCATE") and nxt.text in _DDL_OBJECTS and (
        len(toks) > 3 and toks[3].type in "nf"
    ):
        return f"{word.text} {nxt.text} statement after leading punctuation"
    return None


def _case_when(toks: list[Token], i: int) -> str | None:
    """``CASE WHEN <expr> THEN <operand>`` with the CASE opening the value or SQL before it."""
    prev = toks[i - 1].type if i > 0 else ""
    if prev not in ("", "(", ",", "o", "&", "E", "s", "1", ")", "k") or (
        prev == "k" and toks[i - 1].text not in ("THEN", "ELSE", "WHERE")
    ):
        return None
    j = _skip_i(toks, i + 1, "c")
    if j >= len(toks) or toks[j].text != "WHEN":
        return None
    end, _ = _expr(toks, _skip_i(toks, j + 1, "c"))
    if end < 0 or end >= len(toks) or toks[end].text != "THEN":
        return None
    return "CASE WHEN ... THEN expression" if _expr(toks, end + 1)[0] >= 0 else None


def _div_call(toks: list[Token], i: int) -> bool:
    """``DIV(23,-2)``: MySQL's DIV operator written as a call of numbers (CRS rule 942320)."""
    j = i + 1
    if j >= len(toks) or toks[j].type != "(":
        return False
    j = _skip_i(toks, j + 1, "o")
    return j + 1 < len(toks) and toks[j].type == "1" and toks[j + 1].type == ","


def _if_compare(toks: list[Token], i: int) -> bool:
    """``IF(2=`` / ``IF(1234<``: MySQL's IF() testing a number, the boolean-blind probe."""
    n = len(toks)
    if i + 2 >= n or toks[i + 1].type != "1" or toks[i + 2].type != "o":
        return False
    op = toks[i + 2].text
    nxt = toks[i + 3] if i + 3 < n else _END
    if op == "=" and nxt.text == "=":
        return False  # ``if(1==x)`` is C-family code, not SQL
    return op in ("=", "<", ">", "<>", "!=", "<=", ">=", "<=>")


def _benchmark(toks: list[Token], i: int) -> bool:
    """``BENCHMARK(count, f(...))``: a comma and a known SQL function call inside the call."""
    close = _match_paren(toks, i)
    inner = toks[i + 1 : close + 1]
    comma = next((k for k, x in enumerate(inner) if x.type == ","), -1)
    return comma >= 0 and any(x.type == "f" and _known(x.text) for x in inner[comma:])


def _sqlish_neighbours(toks: list[Token], i: int) -> bool:
    """The empty call at ``i`` is joined to other SQL: an operator, comma or paren beside it."""
    before = toks[i - 1].type if i > 0 else ""
    after = toks[i + 3].type if i + 3 < len(toks) else ""
    return before in ("o", "&", ",", "(", "E", "k", "s", "1") or after in (
        "o", "&", ",", ")", "c", "k", "s",
    )


def _stacked(toks: list[Token], i: int, paranoia: int) -> str | None:
    """A second statement after the ``;`` at ``i``."""
    j = _skip_i(toks, i + 1, "c")
    if j >= len(toks):
        return None
    nxt = toks[j]
    after = _skip(toks, j + 1, "c")
    if nxt.type == "E":
        if _statement(toks, j, paranoia, after_semicolon=True) or ((
            after.type in "c;" or after is _END
        ) and nxt.text not in ("DECLARE", "REPLACE")):
            return f"stacked statement {nxt.text} after ';'"
        return None
    third = _skip(toks, j + 2, "c")
    weak = {
        "SET": after.type == "v" or (after.type == "n" and third.text in ("=", ":=")),
        "IF": after.type in "(f" or after.text in ("NOT", "EXISTS") or bool(
            after.type == "1" and _expr(toks, j + 1)[1] & _CMP
        ),
        "WHILE": bool(_expr(toks, j + 1)[1] & _CMP),
        "BEGIN": after.type == "E" or after.text in ("DECLARE", "TRAN", "TRANSACTION"),
        "LOAD": after.text in ("DATA", "XML"),
        "COPY": after.type == "n" and third.text in ("FROM", "TO"),
        "CALL": after.type == "f",
        "SHOW": after.text in ("TABLES", "DATABASES", "GRANTS", "VARIABLES", "PROCESSLIST"),
        "USE": after.type == "n" and third.type in "E;c",
    }
    if weak.get(nxt.text, False):
        return f"stacked statement {nxt.text} after ';'"
    return None


def _statement(
    toks: list[Token], i: int, paranoia: int, after_semicolon: bool = False
) -> str | None:
    """A statement keyword at ``i`` laid out as SQL (object keyword, names, clauses)."""
    t = toks[i].text
    prev = toks[i - 1].type if i > 0 else ""
    rest = [x for x in toks[i + 1 : i + 6] if x.type != "c"]
    first = rest[0] if rest else _END
    second = rest[1] if len(rest) > 1 else _END
    if t == "SELECT":
        return _select(toks, i, paranoia, after_semicolon)
    if t == "WAITFOR":
        return "WAITFOR time-delay statement" if first.text in ("DELAY", "TIME") else None
    if t == "DECLARE":
        return "DECLARE of a variable" if first.type == "v" else None
    if t == "UPDATE" and first.type == "n" and second.text == "SET":
        third = rest[2] if len(rest) > 2 else _END
        fourth = rest[3] if len(rest) > 3 else _END
        if third.type in "nv" and fourth.text == "=":
            return "UPDATE ... SET statement"
        return None
    opening = prev in ("", "(", ";", "c", "s", ")") or after_semicolon or paranoia >= 3
    if not opening:
        return None
    ended = after_semicolon or prev in ("s", ";", ")") or any(
        x.type in ";c" for x in toks[i + 1 :]
    )
    if t in ("EXEC", "EXECUTE") and (
        first.text in ("MASTER", "IMMEDIATE") or (first.type == "(" and second.type == "v")
    ):
        return f"{t} {first.text}"
    if t == "ALTER" and first.text == "TABLE" and second.type == "n" and len(rest) > 2 and (
        rest[2].text in _ALTER_ACTIONS
    ):
        return "ALTER TABLE statement"
    if t in ("EXEC", "EXECUTE") and first.type in "nfv":
        if first.text.startswith(("XP_", "SP_", "MASTER.", "SYS.")) or first.type == "v":
            return f"{t} of a stored procedure"
        if first.type == "v" or (first.type == "n" and second.type in "s1v(;c"):
            return f"{t} of a stored procedure" if after_semicolon else None
        return None
    if t == "SHUTDOWN":
        ends = first is _END or first.type in "c;" or first.text == "WITH"
        return "SHUTDOWN statement" if ends and (prev in (";", "s") or after_semicolon) else None
    if t in ("DROP", "TRUNCATE", "ALTER", "CREATE") and first.text in _DDL_OBJECTS:
        return f"{t} {first.text} statement" if ended or paranoia >= 2 else None
    if t == "TRUNCATE" and first.type == "n" and after_semicolon:
        return "TRUNCATE statement"
    if t == "DELETE":
        k = next((x for x in rest if x.text not in ("LOW_PRIORITY", "QUICK", "IGNORE")), _END)
        idx = rest.index(k) if k is not _END else -1
        if k.text == "FROM" and idx + 1 < len(rest) and rest[idx + 1].type == "n":
            return "DELETE FROM statement" if ended or paranoia >= 2 else None
    if t == "INSERT" and first.text == "INTO" and second.type in "nf":
        return "INSERT INTO statement" if ended or paranoia >= 2 else None
    return None


def _select(toks: list[Token], i: int, paranoia: int, after_semicolon: bool) -> str | None:
    """A ``SELECT`` with an SQL select list (calls, numbers, ``*``, several columns) or a
    ``FROM`` that is followed by SQL."""
    n = len(toks)
    prev = toks[i - 1].type if i > 0 else ""
    opening = prev in ("", "(", ";", "&", "o", ",", "s", "c") or after_semicolon
    j = _skip_i(toks, i + 1, "c")
    while j < n and toks[j].type == "o" and toks[j].text in _UNARY:
        j += 1
    nxt = toks[j] if j < n else _END
    if nxt.type in "vf(" or nxt.text in ("*", "DISTINCT", "TOP", "CASE"):
        return "SELECT subquery"
    if nxt.text in DANGEROUS_FUNCTIONS:
        return f"SELECT of {nxt.text}"
    if nxt.type in "1s" and (opening or after_semicolon):
        after = _skip(toks, j + 1, "c")
        if after is _END or after.type in (",)c;" if nxt.type == "s" else ",)c;&oUk"):
            return "SELECT subquery"
    listed = False
    for k in range(j, min(n, j + 16)):
        tk = toks[k]
        if tk.type in ",f":
            listed = True
        if tk.text == "FROM":
            table = _skip(toks, k + 1, "c")
            if not (opening or paranoia >= 3) or table.type not in "n(":
                return None
            if listed:
                return "SELECT ... FROM query"
            after = _skip(toks, k + 2, "c")
            if after is _END or after.type in "c;)UB&":
                return "SELECT ... FROM query"
            if after.text == "WHERE" and _expr(toks, _skip_i(toks, k + 3, "c"))[1] & _CMP:
                return "SELECT ... FROM ... WHERE query"
            return None
        if tk.type == "B" and tk.text in ("GROUP BY", "ORDER BY", "HAVING") and opening and (
            k > j and toks[k - 1].type in "n1)"
        ):
            return f"SELECT ... {tk.text} query"
        if tk.type in "E;U":
            return None
    return None


def _breakout(toks: list[Token], quote: str, paranoia: int) -> tuple[str, int] | None:
    """The value ends early (a closed quote, a number, a name) and SQL follows it."""
    n = len(toks)
    hflags = 0
    if quote:
        head, i = toks[0], 1
        hit = _after_quote(toks, quote)
        if hit:
            return hit, 1
    else:
        start = _skip_i(toks, 0, "o")
        if start >= n or toks[start].type not in "1nvf(":
            return None
        i, hflags = _expr(toks, 0)
        if i < 0:
            return None
        head = toks[start]
        if i == start + 1 and head.type == "1":
            hflags |= 8  # a single number: the classic numeric parameter
        if head.type in "1(":
            hflags |= 16  # an arithmetic or parenthesised expression
        if hflags & _SQL and hflags & _OP and i == n:
            return "SQL expression with function calls as the value", 0
    closers = 0
    while i < n and toks[i].type == ")":
        i += 1
        closers += 1
    if i >= n:
        return None
    t = toks[i]
    if t.type == "c":
        j = _skip_i(toks, i, "c")
        if j >= n:
            return _truncation(t.text, quote, hflags, closers, paranoia, i)
        i, t = j, toks[j]
    ty = t.type
    dq = quote == '"'
    if ty == "U":
        nxt = _skip(toks, i + 1, "c")
        if nxt is _END or nxt.type in "E(1vo":
            return "UNION after the value", i
        return None
    if ty == "&":
        return _logic(toks, i, quote, hflags, paranoia)
    if ty == "o":
        k = i + 1
        while k < n and toks[k].type == "o" and toks[k].text.isalpha():
            k += 1  # SOUNDS LIKE, NOT LIKE
        end, flags = _expr(toks, k)
        if end < 0 or (end < n and toks[end].type not in _CONTINUE):
            return None
        tail = end < n and _tail(toks, end)
        if flags & _SQL or tail:
            return f"operator {t.text} with SQL after the value", i
        if not quote or dq:
            return None
        last = toks[end - 1]
        if t.text in _COMPARE or t.text in _BITWISE:
            if not (t.text.isalpha() and last.type == "n"):
                return f"operator {t.text} after the closed string", i
        elif flags & _CMP or (last.type == "s" and last.text.startswith("'")):
            return f"operator {t.text} after the closed string", i
        return None
    if ty == ";" and quote:
        j = _skip_i(toks, i + 1, "c")
        if j > i + 1 or (j >= n and (toks[i - 1].type == "c" or paranoia >= 2)):
            return "statement terminated after the closed string", i
        if j < n and (toks[j].type == "E" or toks[j].text in ("IF", "WHILE", "BEGIN", "SET")):
            return f"stacked statement {toks[j].text} after the closed string", i
    if ty == "B":
        return _clause(toks, i, quote, hflags)
    if ty == "k" and t.text == "AS" and i + 2 < n and toks[i + 1].type in "ns" and (
        toks[i + 2].text == "FROM" and _skip(toks, i + 3, "c").type in "n("
    ):
        return "column alias ... FROM after the value", i
    if ty == "k" and t.text in ("WHERE", "FROM", "AS") and i + 1 < n:
        end, flags = _expr(toks, i + 1)
        if end >= 0 and flags & (_CMP | _SQL) and (quote or hflags & 8):
            return f"{t.text} clause after the value", i
    if paranoia >= 4 and quote and ty in "&oUB;ckE":
        return f"SQL syntax {t.text} after the closed string", i
    return None


def _after_quote(toks: list[Token], quote: str) -> str | None:
    """Short shapes right after the quote that closes the value (CRS rules 942100, 942190,
    942360, 942540): ``'!x``, ``'select x``, `` ` REGEXP``, ``' sleep(...)``, ``x';`` at the
    end, and ``" | ... | "`` concatenation that re-opens the string."""
    n = len(toks)
    if n < 2:
        return None
    t = toks[1]
    nxt = toks[2] if n > 2 else _END
    opened = len(toks[0].text) == 2  # the value starts with the quote itself
    if t.text == "!" and nxt.type in "sn1" and opened:
        return "! after the closed string"
    if opened and t.text in ("SELECT", "UNION", "HAVING") and nxt is not _END and (
        nxt.type not in "sc" and toks[-1].type != "s"  # not a quoted phrase: "union station"
    ):
        return f"{t.text} right after the closed string"
    if t.text in ("REGEXP", "RLIKE"):
        return f"{t.text} after the closed string"
    if t.type == "f" and t.text in DANGEROUS_FUNCTIONS and nxt.type == "(":
        return f"call of time-delay/file/system function {t.text}() after the closed string"
    if t.type == ";" and n == 2:
        return "statement terminated after the closed string"
    if n >= 4 and t.text in ("|", "||", "+") and toks[-2].text == t.text and (
        toks[-1].type == "s" and toks[-1].text == quote
    ):
        return f"concatenation {t.text} ... {t.text} that re-opens the string"
    return None


def _truncation(
    text: str, quote: str, hflags: int, closers: int, paranoia: int, at: int
) -> tuple[str, int] | None:
    """The input ends in a comment right after the value: it cuts off the rest of the query."""
    if quote:
        if _strong_comment(text) or text.upper().startswith("--SP_PASSWORD"):
            return "comment truncates the query after the closed string", at
        return None
    if _bare_comment(text) and (hflags & (8 | 16 | _CMP | _SQL) or closers):
        return "comment truncates the query after the value", at
    if paranoia >= 2 and _strong_comment(text):
        return "comment after the value", at
    return None


def _logic(
    toks: list[Token], i: int, quote: str, hflags: int, paranoia: int
) -> tuple[str, int] | None:
    """``AND``/``OR``/``XOR``/``&&``/``||`` at ``i`` followed by a well-formed operand."""
    n = len(toks)
    t = toks[i]
    end, flags = _expr(toks, i + 1)
    if end < 0 or (end < n and toks[end].type not in _CONTINUE):
        return None
    tail = end < n and _tail(toks, end)
    if quote:
        single = _skip_i(toks, i + 1, "o") == end - 1
        last = toks[end - 1]
        if quote == '"' and not (flags or tail or (single and last.text.startswith('"'))):
            return None
        if single and last.type == "n" and not tail:
            return None
        return f"logic operator {t.text} after the closed string", i
    if flags & (_CMP | _SQL) or tail or (paranoia >= 2 and hflags & 8):
        return f"logic operator {t.text} after the value", i
    if hflags & 8 and any(x.type == "c" for x in toks[i - 1 : end]):
        return f"logic operator {t.text} with comments inside", i
    if hflags & 8 and end < n and toks[end].type == "c" and _bare_comment(toks[end].text):
        return f"logic operator {t.text} after the value", i
    return None


def _clause(toks: list[Token], i: int, quote: str, hflags: int) -> tuple[str, int] | None:
    """``ORDER BY``/``GROUP BY``/``HAVING``/``LIMIT``/``PROCEDURE`` glued to the value."""
    n = len(toks)
    t = toks[i]
    first = _skip(toks, i + 1, "c")
    if t.text == "INTO":
        return None  # INTO OUTFILE is judged on its own
    if t.text in ("LIMIT", "OFFSET") and first.type != "1":
        return None
    if t.text == "PROCEDURE" and first.type != "f":
        return None
    end, flags = _expr(toks, _skip_i(toks, i + 1, "c"))
    if end < 0 or (end < n and toks[end].type not in _CONTINUE):
        return None
    tail = end < n and _tail(toks, end)
    if (quote == "'" and first.type in "1n(f") or flags & (_CMP | _SQL) or tail:
        return f"{t.text} clause after the value", i
    if first.type == "1" and (quote or hflags & 8):
        return f"{t.text} clause after the value", i
    return None


def _tail(toks: list[Token], end: int) -> bool:
    """What follows an expression proves SQL: a truncating comment, ``;``, more logic, UNION,
    another clause."""
    t = toks[end]
    if t.type == "c":
        return _bare_comment(t.text) or (_strong_comment(t.text) and end + 1 == len(toks))
    if t.type in ";U":
        return True
    if t.type in "&B":
        k = _skip_i(toks, end + 1, "c")
        e2, flags = _expr(toks, k)
        return e2 >= 0 and bool(
            flags & (_CMP | _SQL) or (e2 == k + 1 and toks[k].type in "1s" and t.type == "&")
        )
    return False


def _strong_comment(text: str) -> bool:
    """A comment that SQL engines accept as cutting off the rest of the query."""
    if text.startswith("/*"):
        return True
    if text.startswith("--"):
        return len(text) == 2 or text[2] in " \t\r\n-+#;'\"/"
    return _bare_comment(text) or text[1:2] in ("\r", "\n")


def _bare_comment(text: str) -> bool:
    """A comment with (almost) nothing in it, as used to cut a query: ``--``, ``#``, ``-- -``."""
    body = text[2:] if text.startswith(("--", "/*")) else text[1:]
    return len(body.strip(" \t\r\n-+#*/;")) == 0


def _expr(toks: list[Token], i: int) -> tuple[int, int]:
    """Parse ``operand (op operand)*`` from ``i``: (end index, flags) or (-1, 0).

    Flags: ``_OP`` an operator, ``_CMP`` a comparison, ``_SQL`` a call of a known SQL function,
    a subquery or logic inside parentheses. Trailing comments are not consumed.
    """
    n = len(toks)
    flags = 0
    while True:
        while i < n and (toks[i].type == "c" or (toks[i].type == "o" and toks[i].text in _UNARY)):
            i += 1
        if i >= n:
            return -1, 0
        t = toks[i]
        if t.type in _OPERAND:
            i += 1
        elif t.type in "f(":
            j = i + 1 if t.type == "f" else i
            if j >= n or toks[j].type != "(":
                if t.type != "f":
                    return -1, 0
                i += 1
            else:
                close = _match_paren(toks, j)
                inner = toks[j + 1 : close]
                if (t.type == "f" and _known(t.text)) or any(
                    x.type in "E&" or (x.type == "f" and _known(x.text)) for x in inner
                ):
                    flags |= _SQL
                elif any(x.type == "o" for x in inner):
                    flags |= _OP | (_CMP if any(x.text in _COMPARE for x in inner) else 0)
                i = close + 1
        elif t.text in ("EXISTS", "ANY", "ALL", "SOME") and i + 1 < n and toks[i + 1].type == "(":
            i += 1
            continue
        elif t.text == "CASE" and any(x.text == "WHEN" for x in toks[i : i + 6]):
            flags |= _SQL
            i += 1
        else:
            return -1, 0
        j = i
        while j < n and toks[j].type == "c":
            j += 1
        if j < n and toks[j].type == "o":
            flags |= _OP
            if toks[j].text in _COMPARE:
                flags |= _CMP
            i = j + 1
            while i < n and toks[i].type == "o" and toks[i].text.isalpha():
                i += 1  # SOUNDS LIKE, NOT LIKE, IS NOT
            continue
        return i, flags


def _known(name: str) -> bool:
    return name in FUNCTIONS or name.rsplit(".", 1)[-1] in FUNCTIONS


def _match_paren(toks: list[Token], i: int) -> int:
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].type == "(":
            depth += 1
        elif toks[j].type == ")":
            depth -= 1
            if depth == 0:
                return j
    return len(toks) - 1


def _call_ok(toks: list[Token], i: int) -> bool:
    """Arguments from the ``(`` at ``i`` look like SQL: no two operands side by side (which is
    how prose such as ``sleep (8 hours)`` reads)."""
    close = _match_paren(toks, i)
    prev = ""
    for t in toks[i + 1 : close]:
        if t.type in _OPERAND and prev in _OPERAND:
            return False
        if t.type != "c":
            prev = t.type
    return True


def _skip(toks: list[Token], i: int, types: str) -> Token:
    j = _skip_i(toks, i, types)
    return toks[j] if j < len(toks) else _END


def _skip_i(toks: list[Token], i: int, types: str) -> int:
    while i < len(toks) and toks[i].type in types:
        i += 1
    return i
