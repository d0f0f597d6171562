"""A small SQL tokenizer for deciding whether a user input carries SQL syntax.

It understands the lexical rules that matter for injection across the common dialects (MySQL,
PostgreSQL, SQL Server, Oracle, SQLite): single/double/backtick quoting with doubled quotes and
backslash escapes, ``N''``/``X''``/``B''``/``E''`` literals, PostgreSQL dollar quotes, ``--``,
``#`` and ``/* */`` comments, MySQL executable comments (``/*!50000 ... */``, whose content is
tokenized as SQL), numbers (decimal, float, hex, binary), ``@`` / ``@@`` variables, multi-char
operators, and a keyword table that classifies words into token types.

Each token has a one-character type, as in libinjection's fingerprints:

====  ======================================================================
s     string literal (possibly unterminated)
1     number or literal value (``NULL``, ``TRUE``, ``CURRENT_USER``...)
n     bare word or quoted identifier
k     other SQL keyword (``FROM``, ``WHERE``, ``AS``, ``CASE``...)
E     statement keyword (``SELECT``, ``INSERT``, ``DROP``, ``EXEC``...)
U     set operator (``UNION``, ``INTERSECT``, ``EXCEPT``)
B     clause (``ORDER BY``, ``GROUP BY``, ``HAVING``, ``LIMIT``, ``PROCEDURE``, ``INTO``)
&     logical operator (``AND``, ``OR``, ``XOR``, ``&&``, ``||``)
o     other operator (``=``, ``<>``, ``LIKE``, ``IN``, ``NOT``, ``+``...)
f     function call (a word followed by ``(``)
v     variable (``@x``, ``@@version``)
c     comment
( ) , ; .   themselves
X     anything else (``{``, ``[``, ``\\``...)
====  ======================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


def words(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text`` as a set (keeps the keyword tables compact)."""
    return frozenset(text.split())


# Statement keywords: a word of this class right after `;` starts a stacked statement.
STATEMENTS: Final = words(
    """
    SELECT INSERT UPDATE DELETE DROP CREATE ALTER TRUNCATE EXEC EXECUTE DECLARE SHUTDOWN GRANT
    REVOKE HANDLER MERGE UPSERT WAITFOR
    """
)
# Words that also start a statement after `;` but are ordinary English elsewhere.
WEAK_STATEMENTS: Final = words(
    """
    SET BEGIN IF USE SHOW COPY LOAD WITH DESC DESCRIBE KILL CALL RENAME REPLACE VALUES ATTACH
    PRAGMA VACUUM ANALYZE EXPLAIN COMMIT ROLLBACK LOCK UNLOCK PREPARE DEALLOCATE OPEN FETCH
    CLOSE PRINT RAISERROR DBCC BACKUP RESTORE RECONFIGURE
    """
)
SET_OPERATORS: Final = frozenset({"UNION", "INTERSECT", "EXCEPT"})
LOGIC: Final = frozenset({"AND", "OR", "XOR"})
WORD_OPERATORS: Final = words(
    """
    LIKE RLIKE ILIKE REGEXP GLOB IS IN BETWEEN DIV MOD SOUNDS NOT COLLATE ESCAPE SIMILAR MATCH
    AGAINST BINARY
    """
)
CLAUSES: Final = frozenset({"HAVING", "LIMIT", "PROCEDURE", "INTO", "OFFSET"})
VALUES_KW: Final = words(
    """
    NULL TRUE FALSE CURRENT_USER SESSION_USER SYSTEM_USER CURRENT_DATE CURRENT_TIME
    CURRENT_TIMESTAMP LOCALTIME LOCALTIMESTAMP UNKNOWN
    """
)
KEYWORDS: Final = words(
    """
    FROM WHERE AS ALL DISTINCT CASE WHEN THEN ELSE END TOP JOIN ON INNER OUTER CROSS NATURAL
    USING ASC BY ORDER GROUP ANY SOME EXISTS CAST CONVERT INTERVAL OUTFILE DUMPFILE DELAY FOR
    """
)
# Functions whose call is itself the attack: time delays, file access, command execution,
# out-of-band channels and the usual error-based extraction tricks.
DANGEROUS_FUNCTIONS: Final = words(
    """
    SLEEP BENCHMARK PG_SLEEP PG_SLEEP_FOR PG_SLEEP_UNTIL LOAD_FILE PG_READ_FILE
    PG_READ_BINARY_FILE PG_LS_DIR LO_IMPORT LO_EXPORT LO_GET XP_CMDSHELL XP_DIRTREE XP_FILEEXIST
    XP_REGREAD SP_OACREATE SP_EXECUTESQL SP_PASSWORD OPENROWSET OPENDATASOURCE OPENQUERY
    DBMS_PIPE.RECEIVE_MESSAGE DBMS_LOCK.SLEEP UTL_HTTP.REQUEST UTL_INADDR.GET_HOST_ADDRESS
    UTL_INADDR.GET_HOST_NAME DBMS_XMLGEN.GETXML CTXSYS.DRITHSX.SN SYS.DBMS_EXPORT_EXTENSION
    EXTRACTVALUE UPDATEXML NAME_CONST GTID_SUBSET GTID_SUBTRACT RANDOMBLOB FILETOCLOB
    FILETOBLOB DBMS_UTILITY.SQLID_TO_SQLHASH DBMS_JAVA.RUNJAVA
    """
)
# Functions that reveal the database (typical payload content; rare in ordinary text).
INFO_FUNCTIONS: Final = words(
    """
    VERSION DATABASE USER SCHEMA CURRENT_USER SYSTEM_USER SESSION_USER USER_NAME DB_NAME
    SUSER_NAME SUSER_SNAME HOST_NAME @@VERSION SQLITE_VERSION CURRENT_DATABASE CONNECTION_ID
    LAST_INSERT_ID UUID SERVERPROPERTY IS_SRVROLEMEMBER HAS_DBACCESS OBJECT_ID OBJECT_NAME
    COL_NAME
    """
)
# Ordinary SQL functions (string, numeric, conversion, aggregate, conditional).
FUNCTIONS: Final = (
    DANGEROUS_FUNCTIONS
    | INFO_FUNCTIONS
    | words(
        """
        ASCII CHAR CHR CONCAT CONCAT_WS GROUP_CONCAT STRING_AGG SUBSTRING SUBSTR MID LEFT
        RIGHT LENGTH LEN CHAR_LENGTH ORD HEX UNHEX BIN CONV LOWER UPPER LCASE UCASE TRIM LTRIM
        RTRIM REPLACE REVERSE INSTR LOCATE POSITION CHARINDEX CAST CONVERT COUNT SUM MIN MAX
        AVG ABS FLOOR CEIL CEILING ROUND RAND RANDOM MD5 SHA1 SHA2 COMPRESS UNCOMPRESS IF IIF
        IFNULL NULLIF COALESCE NVL ISNULL EXP POW POWER LOG SQRT ELT FIELD MAKE_SET EXPORT_SET
        BIT_LENGTH OCTET_LENGTH QUOTE SPACE REPEAT LPAD RPAD NOW SYSDATE GETDATE DATE_FORMAT
        TO_CHAR TO_NUMBER DECODE ENCODE UTL_RAW CAST_TO_VARCHAR2 XMLTYPE EXTRACT JSON_EXTRACT
        JSON_KEYS ROW_COUNT FOUND_ROWS STRCMP SOUNDEX UNICODE NCHAR QUOTENAME TYPEOF ZEROBLOB
        LIKELIHOOD PRINTF GLOB CHECKSUM DATALENGTH SUBSTRING_INDEX WAITFOR LEAST GREATEST
        FORMAT INET_ATON FIND_IN_SET
        """
    )
)

_WORD_TYPE: Final[dict[str, str]] = {
    **{w: "k" for w in KEYWORDS},
    **{w: "E" for w in STATEMENTS},
    **{w: "U" for w in SET_OPERATORS},
    **{w: "&" for w in LOGIC},
    **{w: "o" for w in WORD_OPERATORS},
    **{w: "B" for w in CLAUSES},
    **{w: "1" for w in VALUES_KW},
}

_TOKEN: Final = re.compile(
    r"""
     (?P<ws>[\s\x00-\x20\xa0\u2000-\u200b\u3000]+|\*/)
    |(?P<xc>/\*!\d*)
    |(?P<c>(?:--|\#)[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<s>[nN]?'(?:[^'\\]|\\.|'')*(?:'|\Z)
           |[xXbBeE]'[^']*(?:'|\Z)
           |"(?:[^"\\]|\\.|"")*(?:"|\Z)
           |\$(?P<tag>[A-Za-z_]*)\$.*?(?:\$(?P=tag)\$|\Z))
    |(?P<q>`(?:[^`]|``)*(?:`|\Z)|\[[^\]\s]*\])
    |(?P<num>\\N|0[xX][0-9a-fA-F]+|0[bB][01]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<v>@@?(?:[\w$.]+|`[^`]*`?|'[^']*'?|"[^"]*"?)?)
    |(?P<w>[^\W\d][\w$]*)
    |(?P<op>:=|<=>|<>|!=|!<|!>|<=|>=|\|\||&&|<<|>>|::|->>|->|[=<>+\-*/%^|&~!:])
    |(?P<p>[(),;.])
    |(?P<x>.)
    """,
    re.X | re.S,
)


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its type character (see module doc) and its text (upper-cased for words)."""

    type: str
    text: str


def tokenize(sql: str, max_tokens: int = 512) -> list[Token]:
    """Tokens of ``sql`` (comments kept as ``c``), at most ``max_tokens`` of them.

    Words followed by ``(`` become ``f``; ``ORDER BY`` / ``GROUP BY`` fold into one ``B``;
    ``a.b`` qualified names fold into one ``n`` (or ``f`` when called); ``UNION ALL`` /
    ``UNION DISTINCT`` fold into one ``U``.
    """
    out: list[Token] = []
    pos, end, last_end = 0, len(sql), -1
    match = _TOKEN.match
    while pos < end and len(out) < max_tokens:
        m = match(sql, pos)
        if m is None:  # pragma: no cover - the pattern ends with a catch-all
            break
        start, pos = pos, m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws" or kind == "xc":
            continue
        if kind == "tag":  # pragma: no cover - inner group of s
            kind = "s"
        if kind == "w":
            _add_word(out, text.upper(), sql, pos)
        elif kind == "num":
            out.append(Token("1", text))
        elif kind == "op":
            out.append(Token("&" if text in ("&&", "||") else "o", text))
        elif kind == "p":
            if text == "(" and out and out[-1].type == "n" and start == last_end:
                out[-1] = Token("f", out[-1].text)
            if text == "." and out and out[-1].type in "nv":
                out.append(Token(".", text))
            elif text != "." or not out or out[-1].type != ".":
                out.append(Token(text, text))
        elif kind == "q":
            _add_name(out, text)
        elif kind in ("s", "c", "v", "x"):
            out.append(Token("X" if kind == "x" else kind, text))
        last_end = pos
    return out


def _add_name(out: list[Token], name: str) -> None:
    if len(out) >= 2 and out[-1].type == "." and out[-2].type == "n":
        out.pop()
        prev = out.pop()
        out.append(Token("n", prev.text + "." + name))
    else:
        out.append(Token("n", name))


def _add_word(out: list[Token], word: str, sql: str, pos: int) -> None:
    if len(out) >= 2 and out[-1].type == "." and out[-2].type in "nv":
        out.pop()
        prev = out.pop()
        word = prev.text + "." + word
        out.append(Token(prev.type, word))
        return
    kind = _WORD_TYPE.get(word, "n")
    if word == "BY" and out and out[-1].text in ("ORDER", "GROUP"):
        out[-1] = Token("B", out[-1].text + " BY")
        return
    if kind == "k" and word in ("ALL", "DISTINCT") and out and out[-1].type == "U":
        return
    if word in FUNCTIONS and _next_is_paren(sql, pos):
        kind = "f"
    out.append(Token(kind, word))


def _next_is_paren(sql: str, pos: int) -> bool:
    """True when the next non-blank, non-comment character after ``pos`` is ``(``."""
    end = len(sql)
    while pos < end:
        ch = sql[pos]
        if ch.isspace():
            pos += 1
        elif sql.startswith("/*", pos):
            close = sql.find("*/", pos + 2)
            if close < 0:
                return False
            pos = close + 2
        else:
            return ch == "("
    return False
