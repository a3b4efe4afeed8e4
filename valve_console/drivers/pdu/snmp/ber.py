"""A small, strict BER codec for SNMPv1/v2c messages (its asyncio UDP client is :mod:`.transport`).

Only what outlet control needs: a message (version, community, one PDU), the GetRequest,
GetNextRequest, Response and SetRequest PDUs, and var-binds of INTEGER, OCTET STRING, NULL,
OBJECT IDENTIFIER, IpAddress, Counter32, Gauge32, TimeTicks, Counter64 and the v2c exceptions
noSuchObject, noSuchInstance and endOfMibView. pysnmp/pyasn1 spend ~0.2 ms of CPU per var-bind;
this spends well under a microsecond for a var-bind it has seen before: it remembers the var-binds it
sends (an outlet's OID with NULL or a command) and the well-formed ones it receives (the same OIDs
with the same few states), both by exact value or bytes, in bounded caches.

Decoding is strict: definite lengths only, every length checked against what is left, no
trailing bytes, no unknown tags, integers in their type's range. Anything else is a
:class:`BerError`, and nothing else escapes :func:`decode_message`. Lengths in long form that are
longer than needed are accepted (net-snmp sends them).

A var-bind value is ``(tag, python value)``: INTEGER, Counter32, Gauge32, TimeTicks, Counter64 →
int; OCTET STRING → bytes; OBJECT IDENTIFIER and IpAddress → str (dotted); NULL and the three
exceptions → None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# Universal and application tags
INTEGER, OCTET_STRING, NULL, OID, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
IP_ADDRESS, COUNTER32, GAUGE32, TIMETICKS, COUNTER64 = 0x40, 0x41, 0x42, 0x43, 0x46
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 0x80, 0x81, 0x82
# PDU tags
GET, GET_NEXT, RESPONSE, SET = 0xA0, 0xA1, 0xA2, 0xA3
PDU_TAGS = {GET, GET_NEXT, RESPONSE, SET}

EXCEPTIONS = {NO_SUCH_OBJECT: "noSuchObject", NO_SUCH_INSTANCE: "noSuchInstance", END_OF_MIB_VIEW: "endOfMibView"}
UNSIGNED_BITS = {COUNTER32: 32, GAUGE32: 32, TIMETICKS: 32, COUNTER64: 64}
VALUE_TAGS = {INTEGER, OCTET_STRING, NULL, OID, IP_ADDRESS, *UNSIGNED_BITS, *EXCEPTIONS}
VERSIONS = {"1": 0, "2c": 1}

ERROR_NAMES = (
    "noError", "tooBig", "noSuchName", "badValue", "readOnly", "genErr", "noAccess", "wrongType", "wrongLength",
    "wrongEncoding", "wrongValue", "noCreation", "inconsistentValue", "resourceUnavailable", "commitFailed",
    "undoFailed", "authorizationError", "notWritable", "inconsistentName",
)
MAX_MESSAGE = 65535
MAX_OID_ARCS = 128


class BerError(ValueError):
    """A message that is not well-formed SNMP (or not one this codec speaks)."""


def error_name(status: int) -> str:
    return ERROR_NAMES[status] if 0 <= status < len(ERROR_NAMES) else str(status)


_TAGS = tuple(bytes((n,)) for n in range(256))  # one byte object per tag and short length, made once
CACHE_SIZE = 4096  # entries per cache below; a full cache starts again (outlet OIDs are a few hundred at most)
CACHED_VARBIND = 96  # bytes: longer var-binds (e.g. long strings) are never cached


def _length(n: int) -> bytes:
    if n < 0x80:
        return _TAGS[n]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return _TAGS[0x80 | len(body)] + body


def _tlv(tag: int, content: bytes) -> bytes:
    return _TAGS[tag] + _length(len(content)) + content


def _signed(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def _int_tlv(tag: int, value: int) -> bytes:
    return _tlv(tag, _signed(value))


@lru_cache(maxsize=4096)
def encode_oid(oid: str) -> bytes:
    """The TLV of a dotted OID (cached: outlet OIDs are sent again and again)."""
    try:
        arcs = [int(part) for part in oid.strip().lstrip(".").split(".")]
    except ValueError:
        raise BerError(f"{oid!r} is not a numeric OID") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0 or len(arcs) > MAX_OID_ARCS:
        raise BerError(f"{oid!r} is not a valid OID")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(OID, bytes(out))


def encode_value(tag: int, value: Any) -> bytes:
    if tag == INTEGER:
        if not -(2**31) <= value < 2**31:
            raise BerError(f"INTEGER {value} is out of range")
        return _int_tlv(INTEGER, value)
    if tag in UNSIGNED_BITS:
        if not 0 <= value < 2 ** UNSIGNED_BITS[tag]:
            raise BerError(f"{value} is out of range for tag 0x{tag:02x}")
        return _int_tlv(tag, value)
    if tag == OCTET_STRING:
        return _tlv(OCTET_STRING, value.encode() if isinstance(value, str) else bytes(value))
    if tag == OID:
        return encode_oid(str(value))
    if tag == IP_ADDRESS:
        parts = bytes(int(p) for p in str(value).split("."))
        if len(parts) != 4:
            raise BerError(f"{value!r} is not an IPv4 address")
        return _tlv(IP_ADDRESS, parts)
    if tag == NULL or tag in EXCEPTIONS:
        return bytes((tag, 0))
    raise BerError(f"cannot encode tag 0x{tag:02x}")


_NULL = bytes((NULL, 0))
_NO_ERRORS = _int_tlv(INTEGER, 0) * 2
# Whole var-bind TLVs sent before: a GET sends (oid, NULL) and a SET (oid, INTEGER) for the same outlets
# again and again, so each costs one dict look-up instead of three TLVs.
_sent_varbinds: dict[tuple[str, int, int] | str, bytes] = {}


def _encode_varbind(oid: str, value: tuple[int, Any] | None) -> bytes:
    if value is None:
        key: Any = oid
    else:
        tag, number = value
        # Only exact ints: True and 1.0 are equal to 1 as keys, but not the same value to encode (or refuse).
        key = (oid, tag, number) if type(number) is int else None
    if key is not None:
        tlv = _sent_varbinds.get(key)
        if tlv is not None:
            return tlv
    tlv = _tlv(SEQUENCE, encode_oid(oid) + (_NULL if value is None else encode_value(*value)))
    if key is not None:
        if len(_sent_varbinds) >= CACHE_SIZE:
            _sent_varbinds.clear()
        _sent_varbinds[key] = tlv
    return tlv


@lru_cache(maxsize=64)
def _head(version: int, community: bytes) -> bytes:
    """The version and community TLVs, the same in every message to one agent."""
    return _int_tlv(INTEGER, version) + _tlv(OCTET_STRING, community)


def encode_message(version: int, community: bytes, pdu: int, request_id: int,
                   varbinds: list[tuple[str, tuple[int, Any]]] | list[tuple[str, None]],
                   error_status: int = 0, error_index: int = 0) -> bytes:
    """One SNMP message. A var-bind is ``(oid, (tag, value))``, or ``(oid, None)`` for NULL."""
    if pdu not in PDU_TAGS:
        raise BerError(f"unknown PDU tag 0x{pdu:02x}")
    parts = [_encode_varbind(oid, value) for oid, value in varbinds]
    size = sum(map(len, parts))
    list_length = _length(size)
    head = _tlv(INTEGER, _signed(request_id)) + (
        _NO_ERRORS if error_status == 0 and error_index == 0
        else _int_tlv(INTEGER, error_status) + _int_tlv(INTEGER, error_index))
    size += len(head) + 1 + len(list_length)
    pdu_length = _length(size)
    prefix = _head(version, bytes(community) if type(community) is not bytes else community)
    size += len(prefix) + 1 + len(pdu_length)
    return b"".join((_TAGS[SEQUENCE], _length(size), prefix, _TAGS[pdu], pdu_length, head, _TAGS[SEQUENCE],
                     list_length, *parts))


@dataclass
class Message:
    version: int
    community: bytes
    pdu: int
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[tuple[str, tuple[int, Any]]] = field(default_factory=list)


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the TLV at ``pos``."""
    if pos + 2 > end:
        raise BerError("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise BerError(f"multi-byte tag at offset {pos}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise BerError("indefinite length")
        if count > 4 or pos + count > end:
            raise BerError("bad length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise BerError(f"length {length} at offset {pos} runs past the end")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    got, start, stop = _header(data, pos, end)
    if got != tag:
        raise BerError(f"expected tag 0x{tag:02x}, got 0x{got:02x} at offset {pos}")
    return start, stop


def _integer(content: bytes, limit: int = 9) -> int:
    if not content or len(content) > limit:
        raise BerError("bad INTEGER length")
    return int.from_bytes(content, "big", signed=True)


def _read_int(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """An INTEGER of at most 5 bytes (version, request-id, error status and index) and the offset after it."""
    if pos + 2 < end and data[pos] == INTEGER and 0 < data[pos + 1] <= 5:  # short form: the usual case, inline
        stop = pos + 2 + data[pos + 1]
        if stop <= end:
            return int.from_bytes(data[pos + 2:stop], "big", signed=True), stop
    start, stop = _expect(data, pos, end, INTEGER)
    return _integer(data[start:stop], 5), stop


@lru_cache(maxsize=4096)
def decode_oid(content: bytes) -> str:
    if not content:
        raise BerError("empty OBJECT IDENTIFIER")
    if content[-1] & 0x80:
        raise BerError("truncated OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in content:
        if fresh and byte == 0x80:
            raise BerError("non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    if len(arcs) > MAX_OID_ARCS:
        raise BerError("OBJECT IDENTIFIER too long")
    first = arcs[0]
    head = [first // 40, first % 40] if first < 80 else [2, first - 80]
    return ".".join(map(str, head + arcs[1:]))


def _value(tag: int, content: bytes) -> Any:
    if tag == INTEGER:
        value = _integer(content)
        if not -(2**31) <= value < 2**31:
            raise BerError(f"INTEGER {value} is out of range")
        return value
    if tag in UNSIGNED_BITS:
        value = _integer(content)
        if not 0 <= value < 2 ** UNSIGNED_BITS[tag]:
            raise BerError(f"{value} is out of range for tag 0x{tag:02x}")
        return value
    if tag == OCTET_STRING:
        return bytes(content)
    if tag == OID:
        return decode_oid(bytes(content))
    if tag == IP_ADDRESS:
        if len(content) != 4:
            raise BerError("IpAddress is not 4 bytes")
        return ".".join(map(str, content))
    if tag == NULL or tag in EXCEPTIONS:
        if content:
            raise BerError(f"tag 0x{tag:02x} with content")
        return None
    raise BerError(f"unknown value tag 0x{tag:02x}")


def decode_message(data: bytes) -> Message:
    """Decode one SNMPv1/v2c message; anything malformed raises :class:`BerError` (and only that)."""
    try:
        return _decode(bytes(data))
    except BerError:
        raise
    except Exception as exc:  # noqa: BLE001 - a guard: a bug here must not become a crash in the loop
        raise BerError(f"undecodable message ({type(exc).__name__})") from None


_NOT_IN_V1 = frozenset({COUNTER64, *EXCEPTIONS})
# Var-binds decoded before, by their bytes: an agent answers the same outlets with the same few values, so
# a repeated var-bind costs a slice and a dict look-up. Only well-formed ones get in (a var-bind's
# decoding depends on nothing but its own bytes; the SNMPv1 check, which depends on the message, is
# made on every var-bind, cached or not).
_known_varbinds: dict[bytes, tuple[str, tuple[int, Any]]] = {}


def _varbind(data: bytes, pos: int, end: int) -> tuple[str, tuple[int, Any]]:
    """The var-bind TLV at data[pos:end] (its outer length already checked to end exactly at ``end``)."""
    bstart, bend = _expect(data, pos, end, SEQUENCE)
    if bend != end:  # cannot happen when the caller found ``end`` from the same header; kept as a guard
        raise BerError(f"var-bind at offset {pos} does not end where its length says")
    ostart, opos = _expect(data, bstart, bend, OID)
    tag, tstart, tend = _header(data, opos, bend)
    if tend != bend:
        raise BerError("trailing bytes in a var-bind")
    varbind = (decode_oid(data[ostart:opos]), (tag, _value(tag, data[tstart:tend])))
    if end - pos <= CACHED_VARBIND:
        if len(_known_varbinds) >= CACHE_SIZE:
            _known_varbinds.clear()
        _known_varbinds[data[pos:end]] = varbind
    return varbind


def _decode(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE:
        raise BerError("message too long")
    start, end = _expect(data, 0, len(data), SEQUENCE)
    if end != len(data):
        raise BerError("trailing bytes after the message")
    version, pos = _read_int(data, start, end)
    if version not in (0, 1):
        raise BerError(f"not SNMPv1/v2c (version {version})")
    cstart, pos = _expect(data, pos, end, OCTET_STRING)
    community = data[cstart:pos]
    pdu, pstart, pend = _header(data, pos, end)
    if pdu not in PDU_TAGS:
        raise BerError(f"unknown PDU tag 0x{pdu:02x}")
    if pend != end:
        raise BerError("trailing bytes after the PDU")
    request_id, pos = _read_int(data, pstart, pend)
    error_status, pos = _read_int(data, pos, pend)
    error_index, pos = _read_int(data, pos, pend)
    if not -(2**31) <= request_id < 2**31 or not 0 <= error_status < 2**31 or not 0 <= error_index < 2**31:
        raise BerError("request-id, error-status or error-index out of range")
    vstart, vend = _expect(data, pos, pend, SEQUENCE)
    if vend != pend:
        raise BerError("trailing bytes after the var-binds")
    varbinds: list[tuple[str, tuple[int, Any]]] = []
    append = varbinds.append
    known = _known_varbinds.get
    v1 = version == 0
    pos = vstart
    while pos < vend:
        # The var-bind's extent: its short-form length inline, anything else by _header's checks.
        if pos + 2 <= vend and data[pos + 1] < 0x80:
            bend = pos + 2 + data[pos + 1]
            if bend > vend:
                raise BerError(f"length {data[pos + 1]} at offset {pos + 2} runs past the end")
        else:
            bend = _header(data, pos, vend)[2]
        varbind = known(data[pos:bend])
        if varbind is None:
            varbind = _varbind(data, pos, bend)
        if v1 and varbind[1][0] in _NOT_IN_V1:
            raise BerError(f"tag 0x{varbind[1][0]:02x} does not exist in SNMPv1")
        append(varbind)
        pos = bend
    return Message(version, community, pdu, request_id, error_status, error_index, varbinds)
