"""Redis decoy: an unprotected Redis 7.0 that agrees to everything and stores nothing.

Speaks RESP (arrays of bulk strings) and inline commands. Every command is recorded; writes
(``SET``, ``CONFIG SET``, ``SLAVEOF``, ``MODULE LOAD`` ...) are answered "OK" so an attacker
shows the next step of the playbook, but nothing is stored, configured or run.
"""

from __future__ import annotations

from typing import Final

from garrison.sensors.honeypot.session import Session, SessionEnd

BANNER: Final = "Redis 7.0.15"
MAX_COMMANDS: Final = 64
MAX_ARGS: Final = 64
MAX_BULK: Final = 4096

INFO: Final = (
    b"# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\nredis_git_dirty:0\r\n"
    b"redis_build_id:c0f3a4e5cd4b2bd8\r\nredis_mode:standalone\r\n"
    b"os:Linux 6.1.0-28-amd64 x86_64\r\narch_bits:64\r\nmonotonic_clock:POSIX clock_gettime\r\n"
    b"multiplexing_api:epoll\r\natomicvar_api:c11-builtin\r\ngcc_version:12.2.0\r\n"
    b"process_id:712\r\nprocess_supervised:systemd\r\nrun_id:4c1a9b7e0d3f2a6b8c5e1f7a9d2b4c6e8f0a1b3c\r\n"
    b"tcp_port:6379\r\nuptime_in_seconds:1209813\r\nuptime_in_days:14\r\nhz:10\r\n"
    b"configured_hz:10\r\nlru_clock:9345723\r\nexecutable:/usr/bin/redis-server\r\n"
    b"config_file:/etc/redis/redis.conf\r\nio_threads_active:0\r\n\r\n"
    b"# Clients\r\nconnected_clients:1\r\nblocked_clients:0\r\n\r\n"
    b"# Memory\r\nused_memory:1013512\r\nused_memory_human:989.76K\r\nmaxmemory:0\r\n\r\n"
    b"# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:0\r\n\r\n"
    b"# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n"
    b"# Keyspace\r\n"
)


def bulk(data: bytes | None) -> bytes:
    if data is None:
        return b"$-1\r\n"
    return b"$" + str(len(data)).encode() + b"\r\n" + data + b"\r\n"


def array(items: list[bytes]) -> bytes:
    return b"*" + str(len(items)).encode() + b"\r\n" + b"".join(bulk(i) for i in items)


async def read_command(s: Session) -> list[bytes]:
    """One command as a list of arguments, RESP or inline; bounds end the session."""
    line = await s.recv_line(MAX_BULK)
    if not line.startswith(b"*"):
        return line.split()
    count = int(line[1:]) if line[1:].isdigit() else -1
    if not 0 <= count <= MAX_ARGS:
        raise SessionEnd("done")
    args: list[bytes] = []
    for _ in range(count):
        head = await s.recv_line(32)
        size = int(head[1:]) if head[:1] == b"$" and head[1:].isdigit() else -1
        if not 0 <= size <= MAX_BULK:
            raise SessionEnd("done")
        args.append((await s.recv_exact(size + 2))[:size])
    return args


def _safe(name: bytes) -> bytes:
    return bytes(b for b in name[:64] if 0x20 <= b < 0x7F and b != 0x27)


#: Exact argument counts (after the name) of the commands we answer that have one.
_ARITY: Final = {b"GET": 1, b"ECHO": 1, b"HGET": 2, b"DBSIZE": 0, b"LASTSAVE": 0}


def reply(args: list[bytes], s: Session) -> bytes | None:
    """The answer to one command, or None to hang up (QUIT)."""
    cmd = args[0].upper()
    rest = args[1:]
    arity = _ARITY.get(cmd)
    if (arity is not None and len(rest) != arity) or (cmd in (b"SET", b"AUTH") and not rest):
        return b"-ERR wrong number of arguments for '" + cmd.lower() + b"' command\r\n"
    if cmd == b"PING":
        return bulk(rest[0]) if rest else b"+PONG\r\n"
    if cmd == b"ECHO":
        return bulk(rest[0][:512])
    if cmd == b"INFO":
        return bulk(INFO)
    if cmd == b"AUTH":
        s.credential(rest[0] if len(rest) > 1 else b"default", rest[-1] if rest else b"")
        return (b"-ERR AUTH <password> called without any password configured for the default "
                b"user. Are you sure your configuration is correct?\r\n")
    if cmd == b"QUIT":
        return None
    if cmd == b"COMMAND" or cmd in (b"KEYS", b"SLOWLOG"):
        return b"*0\r\n"
    if cmd == b"SCAN":
        return b"*2\r\n$1\r\n0\r\n*0\r\n"
    if cmd in (b"DBSIZE", b"EXISTS", b"DEL", b"LASTSAVE"):
        return b":0\r\n"
    if cmd in (b"GET", b"HGET", b"LPOP", b"RPOP"):
        return bulk(None)
    if cmd == b"CONFIG" and rest and rest[0].upper() == b"GET":
        return b"*0\r\n"
    if cmd == b"BGSAVE":
        return b"+Background saving started\r\n"
    if cmd in (b"SET", b"SELECT", b"CONFIG", b"SLAVEOF", b"REPLICAOF", b"FLUSHALL", b"FLUSHDB",
               b"SAVE", b"CLIENT", b"MODULE", b"HSET", b"LPUSH", b"RPUSH", b"EXPIRE"):
        return b"+OK\r\n"
    tail = b" ".join(b"'" + _safe(a) + b"'" for a in rest[:4])
    name = _safe(args[0])
    return b"-ERR unknown command '" + name + b"', with args beginning with: " + tail + b"\r\n"


async def serve(s: Session) -> None:
    """Commands until QUIT, the command cap or a bound."""
    for _ in range(MAX_COMMANDS):
        args = await read_command(s)
        if not args:
            continue
        s.command(b" ".join(args)[:200] if args[0].upper() != b"AUTH" else b"AUTH ****")
        answer = reply(args, s)
        if answer is None:
            await s.send(b"+OK\r\n")
            return
        await s.send(answer)
