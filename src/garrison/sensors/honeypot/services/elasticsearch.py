"""Elasticsearch decoy: the REST root of an open 7.10 node, and empty answers to the rest.

Records every request (line, headers, bounded body). Nothing is indexed or searched.
"""

from __future__ import annotations

from typing import Final

from garrison.sensors.honeypot.services.httpwire import BadRequest, Request, read_request, response
from garrison.sensors.honeypot.session import Session, SessionEnd

BANNER: Final = "Elasticsearch REST API 7.10.2"
MAX_REQUESTS: Final = 4
_JSON: Final = (b"content-type", b"application/json; charset=UTF-8")

ROOT: Final = b"""{
  "name" : "es-node-1",
  "cluster_name" : "elasticsearch",
  "cluster_uuid" : "Xk2fBqV1TvOa0ZB1b8DmTw",
  "version" : {
    "number" : "7.10.2",
    "build_flavor" : "default",
    "build_type" : "deb",
    "build_hash" : "747e1cc71def077253878a59143c1f785afa92b9",
    "build_date" : "2021-01-13T00:42:12.435326Z",
    "build_snapshot" : false,
    "lucene_version" : "8.7.0",
    "minimum_wire_compatibility_version" : "6.8.0",
    "minimum_index_compatibility_version" : "6.0.0-beta1"
  },
  "tagline" : "You Know, for Search"
}
"""

_HEALTH: Final = (
    b'{"cluster_name":"elasticsearch","status":"green","timed_out":false,"number_of_nodes":1,'
    b'"number_of_data_nodes":1,"active_primary_shards":0,"active_shards":0,'
    b'"relocating_shards":0,"initializing_shards":0,"unassigned_shards":0,'
    b'"delayed_unassigned_shards":0,"number_of_pending_tasks":0,'
    b'"number_of_in_flight_fetch":0,"task_max_waiting_in_queue_millis":0,'
    b'"active_shards_percent_as_number":100.0}'
)


def _not_found(index: bytes) -> bytes:
    name = bytes(b for b in index[:64] if 0x21 <= b < 0x7F and b not in b'"\\')
    reason = b'"no such index [' + name + b']"'
    cause = (b'{"type":"index_not_found_exception","reason":' + reason
             + b',"index":"' + name + b'"}')
    return (b'{"error":{"root_cause":[' + cause + b'],"type":"index_not_found_exception",'
            b'"reason":' + reason + b'},"status":404}')


def answer(req: Request) -> tuple[bytes, bytes]:
    """(status, JSON body) for one request."""
    path = req.path.rstrip(b"/") or b"/"
    if path == b"/":
        return b"200 OK", ROOT
    if path == b"/_cluster/health":
        return b"200 OK", _HEALTH
    if path.startswith(b"/_cat/"):
        return b"200 OK", b"[]" if b"format=json" in req.target else b""
    if path in (b"/_nodes", b"/_search", b"/_all/_search"):
        return b"200 OK", (b'{"took":1,"timed_out":false,"_shards":{"total":0,"successful":0,'
                           b'"skipped":0,"failed":0},"hits":{"total":{"value":0,"relation":"eq"},'
                           b'"max_score":0.0,"hits":[]}}')
    return b"404 Not Found", _not_found(path.lstrip(b"/").split(b"/", 1)[0])


async def serve(s: Session) -> None:
    """Up to ``MAX_REQUESTS`` requests; answers in the HTTP version the client used."""
    for _ in range(MAX_REQUESTS):
        try:
            req = await read_request(s)
        except BadRequest:
            await s.send(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        status, body = answer(req)
        version = b"HTTP/1.0" if req.version == b"HTTP/1.0" else b"HTTP/1.1"
        await s.send(response(status, [_JSON], body, head=req.method == b"HEAD",
                              version=version, date=False, length_name=b"content-length"))
        if version == b"HTTP/1.0" or (req.header(b"connection") or b"").lower() == b"close":
            raise SessionEnd("done")
