"""The built-in SNMP BER codec against pysnmp/pyasn1's message codec, its strictness, and its UDP client."""

from __future__ import annotations

import asyncio
import random

import pytest
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api

from tests.drivers.conftest import APC_OUTLETS
from valve_console.drivers.pdu import DriverError, PortState, create_driver
from valve_console.drivers.pdu.snmp import ber, transport as snmp_transport
from valve_console.drivers.pdu.snmp import driver as snmp_driver, engine as snmp_engine
from valve_console.drivers.pdu import DriverConfigError

OID = "1.3.6.1.4.1.318.1.1.4.4.2.1.3"
V2 = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
V1 = api.PROTOCOL_MODULES[api.SNMP_VERSION_1]

# (our tag, our value, pysnmp value) for every type the codec speaks
VALUES = [
    (ber.INTEGER, 0, V2.Integer(0)),
    (ber.INTEGER, 1, V2.Integer(1)),
    (ber.INTEGER, 128, V2.Integer(128)),
    (ber.INTEGER, -1, V2.Integer(-1)),
    (ber.INTEGER, -129, V2.Integer(-129)),
    (ber.INTEGER, 2**31 - 1, V2.Integer(2**31 - 1)),
    (ber.INTEGER, -(2**31), V2.Integer(-(2**31))),
    (ber.OCTET_STRING, b"", V2.OctetString(b"")),
    (ber.OCTET_STRING, b"outlet \xff\x00" * 40, V2.OctetString(b"outlet \xff\x00" * 40)),  # long-form length
    (ber.NULL, None, V2.Null("")),
    (ber.OID, "1.3.6.1.4.1.318", V2.ObjectIdentifier("1.3.6.1.4.1.318")),
    (ber.OID, "2.999.4294967295.0", V2.ObjectIdentifier("2.999.4294967295.0")),
    (ber.OID, "0.0", V2.ObjectIdentifier("0.0")),
    (ber.IP_ADDRESS, "10.42.0.255", V2.IpAddress("10.42.0.255")),
    (ber.COUNTER32, 2**32 - 1, V2.Counter32(2**32 - 1)),
    (ber.COUNTER32, 0, V2.Counter32(0)),
    (ber.GAUGE32, 2**31, V2.Gauge32(2**31)),
    (ber.TIMETICKS, 123456789, V2.TimeTicks(123456789)),
    (ber.COUNTER64, 2**64 - 1, V2.Counter64(2**64 - 1)),
    (ber.NO_SUCH_OBJECT, None, V2.NoSuchObject("")),
    (ber.NO_SUCH_INSTANCE, None, V2.NoSuchInstance("")),
    (ber.END_OF_MIB_VIEW, None, V2.EndOfMibView("")),
]
PDUS = [
    (ber.GET, V2.GetRequestPDU), (ber.GET_NEXT, V2.GetNextRequestPDU),
    (ber.SET, V2.SetRequestPDU), (ber.RESPONSE, V2.ResponsePDU),
]


def pysnmp_message(version, pdu_cls, request_id, varbinds, status=0, index=0, community="private"):
    module = V1 if version == 0 else V2
    pdu = pdu_cls()
    module.apiPDU.set_defaults(pdu)
    module.apiPDU.set_request_id(pdu, request_id)
    module.apiPDU.set_error_status(pdu, status)
    module.apiPDU.set_error_index(pdu, index)
    module.apiPDU.set_varbinds(pdu, varbinds)
    msg = module.Message()
    module.apiMessage.set_defaults(msg)
    module.apiMessage.set_community(msg, community)
    module.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg)


def pysnmp_decode(data, version=1):
    module = V1 if version == 0 else V2
    msg, rest = decoder.decode(data, asn1Spec=module.Message())
    assert rest == b""
    pdu = module.apiMessage.get_pdu(msg)
    return msg, pdu, module.apiPDU.get_varbinds(pdu)


@pytest.mark.parametrize("tag, value, theirs", VALUES, ids=[f"{v[2].__class__.__name__}-{i}" for i, v in
                                                             enumerate(VALUES)])
def test_every_value_type_round_trips_with_pysnmp(tag, value, theirs):
    # ours -> pysnmp
    data = ber.encode_message(1, b"private", ber.RESPONSE, 7, [(f"{OID}.1", (tag, value)), (f"{OID}.2", None)],
                              error_status=0, error_index=0)
    msg, pdu, varbinds = pysnmp_decode(data)
    assert str(msg["community"]) == "private" and int(pdu["request-id"]) == 7
    assert [str(oid) for oid, _ in varbinds] == [f"{OID}.1", f"{OID}.2"]
    got = varbinds[0][1]
    assert type(got) is type(theirs) and got == theirs and got.tagSet == theirs.tagSet
    # pysnmp -> ours, byte for byte the same message too
    back = pysnmp_message(1, V2.ResponsePDU, 7, [(f"{OID}.1", theirs), (f"{OID}.2", V2.Null(""))])
    decoded = ber.decode_message(back)
    assert decoded.varbinds == [(f"{OID}.1", (tag, value)), (f"{OID}.2", (ber.NULL, None))]
    assert back == data


@pytest.mark.parametrize("ours, theirs", PDUS, ids=["get", "getnext", "set", "response"])
def test_every_pdu_round_trips_with_pysnmp(ours, theirs):
    varbinds = [(f"{OID}.{i}", (ber.INTEGER, i)) for i in range(1, 17)]
    data = ber.encode_message(1, b"private", ours, 2**31 - 1, varbinds, error_status=12, error_index=16)
    _, pdu, got = pysnmp_decode(data)
    assert isinstance(pdu, theirs)
    assert int(pdu["request-id"]) == 2**31 - 1 and int(pdu["error-status"]) == 12 and int(pdu["error-index"]) == 16
    assert [(str(o), int(v)) for o, v in got] == [(o, v) for o, (_, v) in varbinds]
    back = pysnmp_message(1, theirs, -5, [(o, V2.Integer(v)) for o, (_, v) in varbinds], status=12, index=16)
    message = ber.decode_message(back)
    assert (message.pdu, message.request_id, message.error_status, message.error_index) == (ours, -5, 12, 16)
    assert message.varbinds == varbinds
    assert ber.error_name(message.error_status) == "inconsistentValue"


def test_snmpv1_messages_round_trip_with_pysnmp():
    varbinds = [(f"{OID}.3", V1.Integer(2)), ("1.3.6.1.2.1.1.5.0", V1.OctetString(b"pdu")),
                ("1.3.6.1.2.1.4.20.1.1.1", V1.IpAddress("127.0.0.1")), ("1.3.6.1.2.1.1.3.0", V1.TimeTicks(42)),
                ("1.3.6.1.2.1.2.2.1.10.1", V1.Counter(7)), ("1.3.6.1.2.1.2.2.1.5.1", V1.Gauge(9))]
    theirs = pysnmp_message(0, V1.GetResponsePDU, 99, varbinds, status=2, index=1, community="public")
    message = ber.decode_message(theirs)
    assert (message.version, message.community, message.error_status, message.error_index) == (0, b"public", 2, 1)
    assert message.varbinds == [
        (f"{OID}.3", (ber.INTEGER, 2)), ("1.3.6.1.2.1.1.5.0", (ber.OCTET_STRING, b"pdu")),
        ("1.3.6.1.2.1.4.20.1.1.1", (ber.IP_ADDRESS, "127.0.0.1")), ("1.3.6.1.2.1.1.3.0", (ber.TIMETICKS, 42)),
        ("1.3.6.1.2.1.2.2.1.10.1", (ber.COUNTER32, 7)), ("1.3.6.1.2.1.2.2.1.5.1", (ber.GAUGE32, 9)),
    ]
    assert ber.error_name(message.error_status) == "noSuchName"
    ours = ber.encode_message(0, b"public", ber.GET, 99, [(f"{OID}.3", None)])
    msg, pdu, got = pysnmp_decode(ours, version=0)
    assert int(msg["version"]) == 0 and isinstance(pdu, V1.GetRequestPDU) and str(got[0][0]) == f"{OID}.3"


def test_oid_encodings_are_cached_and_bad_oids_refused():
    assert ber.encode_oid(f"{OID}.5") is ber.encode_oid(f"{OID}.5")
    for bad in ("", "1", "3.1", "1.40", "1.3.x", "1.3.-1"):
        with pytest.raises(ber.BerError):
            ber.encode_oid(bad)
    with pytest.raises(ber.BerError, match="out of range"):
        ber.encode_message(1, b"c", ber.SET, 1, [(OID, (ber.INTEGER, 2**31))])
    with pytest.raises(ber.BerError, match="out of range"):
        ber.encode_message(1, b"c", ber.SET, 1, [(OID, (ber.COUNTER32, -1))])


GOOD = ber.encode_message(1, b"private", ber.RESPONSE, 1234, [(f"{OID}.{i}", (ber.INTEGER, 1)) for i in range(1, 5)]
                          + [(f"{OID}.9", (ber.NO_SUCH_INSTANCE, None))])


@pytest.mark.parametrize("data, why", [
    (b"", "truncated"),
    (b"\x30\x80" + GOOD[2:], "indefinite"),
    (GOOD + b"\x00", "trailing"),
    (GOOD.replace(b"\xa2", b"\xa7", 1), "unknown PDU tag"),  # a v2 trap is not something we answer to
    (GOOD.replace(b"\x81\x00", b"\x44\x00", 1), "unknown value tag"),  # Opaque
    (GOOD[:-2] + b"\x81\x01", "runs past the end"),  # the last value claims a byte it does not have
    (b"\x30\x03\x02\x01\x03", "not SNMPv1/v2c|truncated"),
    (b"\x30\x05\x02\x01\x03\x04\x00", "not SNMPv1/v2c"),  # v3
    (b"\x30\x84\xff\xff\xff\xff", "runs past"),
    (b"\x30\x85\x00\x00\x00\x00\x01", "bad length"),
])
def test_malformed_messages_are_refused_clearly(data, why):
    assert ber.decode_message(GOOD).varbinds[-1][1] == (ber.NO_SUCH_INSTANCE, None)
    with pytest.raises(ber.BerError, match=why):
        ber.decode_message(data)


def test_bad_values_inside_a_well_formed_message_are_refused():
    def message(value: bytes) -> bytes:
        vb = b"\x06\x02\x2b\x06" + value
        vbs = b"\x30" + bytes([len(vb)]) + vb
        pdu = b"\x02\x01\x01\x02\x01\x00\x02\x01\x00\x30" + bytes([len(vbs)]) + vbs
        body = b"\x02\x01\x01\x04\x01c\xa2" + bytes([len(pdu)]) + pdu
        return b"\x30" + bytes([len(body)]) + body

    assert ber.decode_message(message(b"\x02\x01\x05")).varbinds == [("1.3.6", (ber.INTEGER, 5))]
    v1 = ber.encode_message(0, b"c", ber.RESPONSE, 1, [("1.3.6", (ber.NO_SUCH_INSTANCE, None))])
    with pytest.raises(ber.BerError, match="does not exist in SNMPv1"):
        ber.decode_message(v1)
    negative_index = ber.encode_message(1, b"c", ber.RESPONSE, 1, [], error_status=2, error_index=-1)
    with pytest.raises(ber.BerError, match="out of range"):
        ber.decode_message(negative_index)
    for value, why in [(b"\x02\x00", "INTEGER"), (b"\x02\x05\x01\x00\x00\x00\x00", "out of range"),
                       (b"\x41\x01\xff", "out of range"), (b"\x40\x03\x01\x02\x03", "IpAddress"),
                       (b"\x05\x01\x00", "with content"), (b"\x06\x02\x2b\x86", "truncated OBJECT"),
                       (b"\x06\x03\x2b\x80\x01", "non-minimal"), (b"\x06\x00", "empty"),
                       (b"\x1f\x01\x00", "multi-byte tag")]:
        with pytest.raises(ber.BerError, match=why):
            ber.decode_message(message(value))


def test_random_and_truncated_bytes_only_ever_raise_ber_error():
    rng = random.Random(5)
    samples = [GOOD[:n] for n in range(len(GOOD))]
    for _ in range(3000):
        flipped = bytearray(GOOD)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        samples.append(bytes(flipped))
        samples.append(rng.randbytes(rng.randint(0, 80)))
        samples.append(b"\x30" + rng.randbytes(rng.randint(0, 40)))
    decoded = 0
    for data in samples:
        try:
            ber.decode_message(data)
            decoded += 1
        except ber.BerError:
            pass
    assert decoded < len(samples)  # most are refused; whatever decodes, decoded without another exception


def _with_varbinds(vbs: bytes, version: int = 1) -> bytes:
    """A RESPONSE around raw var-bind bytes (the list's own length in short form)."""
    pdu = b"\x02\x01\x01\x02\x01\x00\x02\x01\x00\x30" + bytes([len(vbs)]) + vbs
    body = b"\x02\x01" + bytes([version]) + b"\x04\x01c\xa2" + bytes([len(pdu)]) + pdu
    return b"\x30" + bytes([len(body)]) + body


def test_long_form_lengths_inside_var_binds_read_like_short_ones():
    oid, value = b"\x06\x03\x2b\x06\x01", b"\x02\x01\x05"
    short = _with_varbinds(b"\x30\x08" + oid + value)
    for vb in (b"\x30\x81\x08" + oid + value,  # net-snmp's redundant long forms
               b"\x30\x82\x00\x09" + b"\x06\x81\x03\x2b\x06\x01" + value,
               b"\x30\x84\x00\x00\x00\x09" + oid + b"\x02\x81\x01\x05"):
        for _ in range(2):  # decoded, then known
            assert ber.decode_message(_with_varbinds(vb)).varbinds == ber.decode_message(short).varbinds \
                == [("1.3.6.1", (ber.INTEGER, 5))]


@pytest.mark.parametrize("vbs, why", [
    (b"\x30\x09\x06\x03\x2b\x06\x01\x02\x01\x05", "runs past the end"),  # one byte longer than the list
    (b"\x30\x08\x06\x03\x2b\x06\x01\x02\x01\x05\x30", "truncated"),  # a lone byte after the last var-bind
    (b"\x30\x08\x06\x03\x2b\x06\x01\x02\x01\x05\x30\x00", "truncated"),  # an empty var-bind
    (b"\x30\x06\x06\x03\x2b\x06\x01\x02\x01\x05", "truncated"),  # the value's header half outside
    (b"\x30\x09\x06\x03\x2b\x06\x01\x02\x01\x05\x00", "trailing bytes in a var-bind"),
    (b"\x31\x08\x06\x03\x2b\x06\x01\x02\x01\x05", "expected tag 0x30"),  # a SET OF, not a SEQUENCE
    (b"\x30\x08\x04\x03\x2b\x06\x01\x02\x01\x05", "expected tag 0x06"),  # a name that is no OID
    (b"\x30\x80\x06\x03\x2b\x06\x01\x02\x01\x05\x00\x00", "indefinite"),
])
def test_truncated_or_odd_var_binds_are_refused(vbs, why):
    good = b"\x30\x08\x06\x03\x2b\x06\x01\x02\x01\x05"
    assert ber.decode_message(_with_varbinds(good)).varbinds == [("1.3.6.1", (ber.INTEGER, 5))]
    for _ in range(2):  # the good var-bind is known by now; the bad ones must still be refused
        with pytest.raises(ber.BerError, match=why):
            ber.decode_message(_with_varbinds(good + vbs))


def test_a_known_var_bind_is_still_checked_against_the_message_version():
    vb = b"\x30\x07\x06\x03\x2b\x06\x01\x80\x00"  # noSuchObject
    assert ber.decode_message(_with_varbinds(vb)).varbinds == [("1.3.6.1", (ber.NO_SUCH_OBJECT, None))]
    with pytest.raises(ber.BerError, match="does not exist in SNMPv1"):
        ber.decode_message(_with_varbinds(vb, version=0))


def test_sent_var_binds_are_remembered_by_oid_type_and_value():
    def sent(varbinds):
        return ber.decode_message(ber.encode_message(1, b"c", ber.SET, 1, varbinds)).varbinds

    for _ in range(2):
        assert sent([(f"{OID}.1", None), (f"{OID}.1", (ber.INTEGER, 1)), (f"{OID}.1", (ber.INTEGER, 2)),
                     (f"{OID}.1", (ber.GAUGE32, 2)), (f"{OID}.1", (ber.OCTET_STRING, b"2"))]) == [
            (f"{OID}.1", (ber.NULL, None)), (f"{OID}.1", (ber.INTEGER, 1)), (f"{OID}.1", (ber.INTEGER, 2)),
            (f"{OID}.1", (ber.GAUGE32, 2)), (f"{OID}.1", (ber.OCTET_STRING, b"2"))]
    assert sent([(f"{OID}.1", (ber.INTEGER, True))]) == [(f"{OID}.1", (ber.INTEGER, 1))]
    with pytest.raises(ber.BerError, match="out of range"):  # a refused value is not remembered either
        sent([(f"{OID}.1", (ber.INTEGER, 2**31))])
    with pytest.raises(ber.BerError, match="out of range"):
        sent([(f"{OID}.1", (ber.INTEGER, 2**31))])
    for n in range(ber.CACHE_SIZE + 10):  # bounded
        ber.encode_message(1, b"c", ber.GET, 1, [(f"{OID}.{n}", None)])
        ber.decode_message(ber.encode_message(1, b"c", ber.RESPONSE, 1, [(f"{OID}.{n}", (ber.INTEGER, 1))]))
    assert len(ber._sent_varbinds) <= ber.CACHE_SIZE and len(ber._known_varbinds) <= ber.CACHE_SIZE


# --------------------------------------------------------------------------- the UDP client


class FakeAgent(asyncio.DatagramProtocol):
    """Answers each GET after sending junk first: garbage, a wrong request-id, a wrong community, a trap."""

    def __init__(self) -> None:
        self.transport = None
        self.requests = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.requests += 1
        request = ber.decode_message(data)
        answer = [(oid, (ber.INTEGER, 1)) for oid, _ in request.varbinds]

        def reply(**kw):
            args = {"version": request.version, "community": request.community, "pdu": ber.RESPONSE,
                    "request_id": request.request_id, "varbinds": answer} | kw
            self.transport.sendto(ber.encode_message(**args), addr)

        self.transport.sendto(b"\x30\x03garbage", addr)
        self.transport.sendto(data[:-3], addr)  # truncated
        reply(request_id=request.request_id + 1000)
        reply(community=b"other")
        reply(version=1 - request.version)
        reply(pdu=ber.GET)  # not a response
        reply()


async def test_stray_datagrams_are_ignored_and_the_answer_matched():
    loop = asyncio.get_running_loop()
    transport, agent = await loop.create_datagram_endpoint(FakeAgent, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    drv = create_driver("apc_masterswitch", {"hostname": f"127.0.0.1:{port}", "version": "2c", "engine": "ber"})
    try:
        states = await asyncio.gather(drv.get_many(["1", "2", "3"]), drv.get("4"), drv.get("5"))
        assert states == [{"1": PortState.ON, "2": PortState.ON, "3": PortState.ON}, PortState.ON, PortState.ON]
        assert agent.requests == 3  # no resends
        (endpoint,) = drv.client._endpoints.values()
        assert endpoint.stray == 3 * 6
        assert not snmp_engine._engines  # pysnmp was never started
    finally:
        await drv.close()
        transport.close()


class SilentAgent(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def datagram_received(self, data, addr):
        self.requests.append(data)


async def test_timeout_resends_the_same_request_and_says_what_pysnmp_says():
    loop = asyncio.get_running_loop()
    transport, agent = await loop.create_datagram_endpoint(SilentAgent, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    drv = create_driver("apc_masterswitch", {"hostname": f"127.0.0.1:{port}", "timeout": 0.2, "retries": 2})
    try:
        with pytest.raises(DriverError) as err:
            await drv.set("1", PortState.ON)
        assert str(err.value) == (f"SNMP agent 127.0.0.1:{port} did not answer (wrong community or host down; "
                                  "waited 0.2 s x 3 tries)")
        assert len(agent.requests) == 3 and len(set(agent.requests)) == 1
        message = ber.decode_message(agent.requests[0])
        assert (message.version, message.community, message.pdu) == (0, b"private", ber.SET)
        assert message.varbinds == [(f"{OID}.1", (ber.INTEGER, 1))]
    finally:
        await drv.close()
        transport.close()


class LateAgent(asyncio.DatagramProtocol):
    """Answers only the first try of each request, after ``delay`` (longer than the client's timeout)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests: list[bytes] = []
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.requests.append(data)
        if data in self.requests[:-1]:
            return
        request = ber.decode_message(data)
        answer = ber.encode_message(request.version, request.community, ber.RESPONSE, request.request_id,
                                    [(oid, (ber.INTEGER, 1)) for oid, _ in request.varbinds])
        asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, answer, addr)


async def test_a_late_answer_to_the_first_try_is_taken():
    loop = asyncio.get_running_loop()
    transport, agent = await loop.create_datagram_endpoint(lambda: LateAgent(0.3), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    drv = create_driver("apc_masterswitch", {"hostname": f"127.0.0.1:{port}", "timeout": 0.1, "retries": 10})
    try:
        assert await drv.get_many(["1", "2"]) == {"1": PortState.ON, "2": PortState.ON}
        assert 2 <= len(agent.requests) < 11 and len(set(agent.requests)) == 1  # resent, the same request-id
        (endpoint,) = drv.client._endpoints.values()
        assert endpoint.pending == {}
    finally:
        await drv.close()
        transport.close()


async def test_a_cancelled_request_stops_resending_and_is_forgotten():
    loop = asyncio.get_running_loop()
    transport, agent = await loop.create_datagram_endpoint(SilentAgent, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    drv = create_driver("apc_masterswitch", {"hostname": f"127.0.0.1:{port}", "timeout": 0.05, "retries": 10})
    try:
        task = asyncio.create_task(drv.get("1"))
        while len(agent.requests) < 2:
            await asyncio.sleep(0.01)
        (endpoint,) = drv.client._endpoints.values()
        assert len(endpoint.pending) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert endpoint.pending == {}
        sent = len(agent.requests)
        await asyncio.sleep(0.2)  # four timeouts: a resend timer left behind would have sent by now
        assert len(agent.requests) == sent
    finally:
        await drv.close()
        transport.close()


async def test_closing_the_socket_ends_a_waiting_request():
    loop = asyncio.get_running_loop()
    transport, agent = await loop.create_datagram_endpoint(SilentAgent, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    endpoint = await snmp_transport.Endpoint.open("127.0.0.1", port)
    try:
        task = asyncio.create_task(endpoint.request(1, b"c", ber.GET, [(OID, None)], 5.0, 3))
        while not agent.requests:
            await asyncio.sleep(0.01)
        endpoint.close()
        with pytest.raises(ConnectionError, match="closed"):
            await task
        assert endpoint.pending == {}
        with pytest.raises(ConnectionError, match="closed"):
            await endpoint.request(1, b"c", ber.GET, [(OID, None)], 5.0, 3)
    finally:
        endpoint.close()
        transport.close()


class RecordingAgent(asyncio.DatagramProtocol):
    """Answers every request at once with INTEGER 7 for each var-bind, and keeps what it was asked."""

    def __init__(self) -> None:
        self.requests: list[ber.Message] = []
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        request = ber.decode_message(data)
        self.requests.append(request)
        self.transport.sendto(ber.encode_message(request.version, request.community, ber.RESPONSE,
                                                 request.request_id,
                                                 [(oid, (ber.INTEGER, 7)) for oid, _ in request.varbinds]), addr)


async def test_set_many_sends_each_outlet_its_command_and_a_reboot_without_one_alone(monkeypatch):
    monkeypatch.setattr(snmp_driver, "REBOOT_PAUSE", 0)
    loop = asyncio.get_running_loop()
    transport, agent = await loop.create_datagram_endpoint(RecordingAgent, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    drv = create_driver("snmp", {"hostname": f"127.0.0.1:{port}", "outlet_labels": "1.3.6.9.1",
                                 "outlet_status": "1.3.6.9.2", "outlet_ctrl": "1.3.6.9.3",
                                 "state_mapping": {"on": 7, "off": 8}})
    try:
        with pytest.raises(DriverError, match="cannot set outlet 5 to UNKNOWN"):
            await drv.set_many({"1": PortState.ON, "5": PortState.UNKNOWN})
        assert agent.requests == []  # refused before anything was sent
        await drv.set_many({"01": PortState.ON, "2": PortState.OFF, "3": PortState.REBOOT, "4": PortState.OFF,
                            " 6": PortState.ON})
        assert [(m.pdu, m.varbinds) for m in agent.requests] == [
            (ber.SET, [("1.3.6.9.3.1", (ber.INTEGER, 7)), ("1.3.6.9.3.2", (ber.INTEGER, 8)),
                       ("1.3.6.9.3.4", (ber.INTEGER, 8)), ("1.3.6.9.3.6", (ber.INTEGER, 7))]),
            (ber.SET, [("1.3.6.9.3.3", (ber.INTEGER, 8))]),
            (ber.SET, [("1.3.6.9.3.3", (ber.INTEGER, 7))]),
        ]
        assert await drv.get_many(["01", "1", " 6"]) == {"01": PortState.ON, "1": PortState.ON, " 6": PortState.ON}
        assert [oid for oid, _ in agent.requests[-1].varbinds] == ["1.3.6.9.2.1", "1.3.6.9.2.1", "1.3.6.9.2.6"]
        for bad in ("0", "x", "01x"):
            for _ in range(2):  # a refused id is not remembered
                with pytest.raises(DriverError, match=f"has no outlet '{bad}'"):
                    await drv.get_many(["1", bad])
    finally:
        await drv.close()
        transport.close()


async def test_unresolvable_host_is_named():
    drv = create_driver("apc_masterswitch", {"hostname": "no-such-host.invalid", "engine": "ber"})
    try:
        with pytest.raises(DriverError, match=r"SNMP agent no-such-host.invalid:161: cannot resolve 'no-such-host"):
            await drv.get("1")
    finally:
        await drv.close()


def test_engine_key():
    assert create_driver("apc_masterswitch", {"hostname": "h"}).client.fast
    assert create_driver("apc_masterswitch", {"hostname": "h", "version": "2c", "engine": "ber"}).client.fast
    assert not create_driver("apc_masterswitch", {"hostname": "h", "engine": "pysnmp"}).client.fast
    v3 = {"hostname": "h", "version": "3", "username": "u"}
    assert not create_driver("apc_masterswitch", v3).client.fast
    with pytest.raises(DriverConfigError, match='engine "ber" only speaks SNMP versions 1 and 2c'):
        create_driver("apc_masterswitch", {**v3, "engine": "ber"})
    with pytest.raises(DriverConfigError, match="engine"):
        create_driver("apc_masterswitch", {"hostname": "h", "engine": "fast"})


@pytest.mark.parametrize("engine", ["ber", "pysnmp"])
async def test_both_engines_read_and_switch_the_same_agent(snmpd, engine):
    drv = create_driver("apc_masterswitch", {"hostname": snmpd.hostname, "version": "2c", "engine": engine})
    try:
        ids = [str(i) for i in range(1, APC_OUTLETS + 1)]
        await drv.set_many(dict.fromkeys(ids[::2], PortState.ON))
        assert snmpd.outlets("apc") == [True, False] * (APC_OUTLETS // 2)
        assert list((await drv.get_many(ids)).values()) == [PortState.ON, PortState.OFF] * (APC_OUTLETS // 2)
        (count,) = await drv.client.get(["1.3.6.1.4.1.318.1.1.4.4.1.0"], "outlet count")
        assert int(count) == APC_OUTLETS
        assert bool(drv.client._endpoints) is (engine == "ber")
        assert bool(snmp_engine._engines) is (engine == "pysnmp")
    finally:
        await drv.close()


async def test_ipv6_agent():
    loop = asyncio.get_running_loop()
    try:
        transport, agent = await loop.create_datagram_endpoint(FakeAgent, local_addr=("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    port = transport.get_extra_info("sockname")[1]
    drv = create_driver("apc_rpdu", {"hostname": f"[::1]:{port}", "version": "2c"})
    try:
        assert await drv.get_many(["7", "8"]) == {"7": PortState.ON, "8": PortState.ON}
        assert drv.client._endpoints
    finally:
        await drv.close()
        transport.close()


@pytest.mark.parametrize("version", ["1", "2c"])
async def test_both_engines_fail_with_the_same_errors(snmpd, version):
    """A missing outlet read and written, alone and in a batch: same exception, outlet and words."""
    outcomes = {}
    for engine in ("ber", "pysnmp"):
        drv = create_driver("apc_masterswitch", {"hostname": snmpd.hostname, "version": version, "engine": engine})
        got = []
        try:
            for name, arg in (("get", "99"), ("get_many", ["1", "99"]), ("set", ("99", PortState.ON)),
                              ("set_many", {"1": PortState.ON, "99": PortState.ON})):
                with pytest.raises(DriverError) as err:
                    await getattr(drv, name)(*(arg if name == "set" else (arg,)))
                got.append((type(err.value).__name__, getattr(err.value, "port_id", None), str(err.value)))
        finally:
            await drv.close()
        outcomes[engine] = got
    assert outcomes["ber"] == outcomes["pysnmp"]
    assert outcomes["ber"][3][:2] == ("OutletError", "99")
    assert ("noSuchName" if version == "1" else "noSuchInstance") in outcomes["ber"][0][2]
    assert snmpd.outlets("apc")[0] is False  # the batch was refused whole
