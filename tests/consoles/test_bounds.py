"""Every buffer on a console's path is bounded, whatever a DUT or a viewer does; Telnet parsing is exact."""

from __future__ import annotations

from valve_console.backend.consoles import MAX_LINE, PENDING_MAX, ConsoleHub, Stream, Subscriber
from valve_console.backend.events import EventBus
from valve_console.drivers.serial.remote import COM_PORT, DO, IAC, SB, SE, WILL, WONT, TelnetCodec


async def test_an_unbound_stream_keeps_a_bounded_tail(tmp_path):
    hub = ConsoleHub(EventBus(), tmp_path, 4096, 0, 0, tcp_host=None)
    sent: list[bytes] = []
    stream = Stream("serial:x", sent.append)
    for _ in range(64):
        hub.feed(stream, b"B" * 65536)  # 4 MiB, no newline, no marker
    assert len(stream.pending) <= PENDING_MAX and len(stream.line) <= MAX_LINE
    hub.feed(stream, b"\nSALAD.machine_id=02:00:00:00:00:01\x00\x00\r\n")  # garbage after the MAC too
    assert stream.machine == "02:00:00:00:00:01"
    assert len(hub.consoles["02:00:00:00:00:01"].contents()) <= 4096


async def test_pongs_are_not_queued_without_bound(tmp_path):
    hub = ConsoleHub(EventBus(), tmp_path, 4096, 0, 0, tcp_host=None)
    sent: list[bytes] = []
    stream = Stream("netconsole@x", sent.append, buffered=lambda: 10 * 1024 * 1024)  # a peer that never reads
    hub.feed(stream, b"SALAD.ping\n" * 1000)
    assert sent == []
    stream.buffered = lambda: 0
    hub.feed(stream, b"SALAD.ping\r\n")
    assert sent == [b"SALAD.pong\n"]


async def test_a_slow_api_stream_loses_its_oldest_bytes_and_is_told():
    sub = Subscriber(limit=1024 * 1024)
    for i in range(80):
        sub.put(bytes([65 + i % 26]) * 65536)  # 5 MiB to a reader that does not read
    assert sub.size <= 1024 * 1024
    data = await sub.get(0)
    assert data.startswith(b"\r\n[valve-console: ") and b" bytes dropped]" in data[:80]
    assert len(data) <= 1024 * 1024 + 80
    sub.close()
    assert await sub.get(0) is None


def test_telnet_commands_are_removed_even_split_across_reads():
    sent: list[bytes] = []
    codec = TelnetCodec(sent.append, 115200)
    codec.start()
    assert bytes((IAC, WILL, COM_PORT)) in sent[0]
    sent.clear()
    stream = (
        b"boot"
        + bytes((IAC, DO, COM_PORT))  # the server accepts the COM port option: we configure the port
        + b"\xff\xff"  # a 0xFF data byte, doubled
        + bytes((IAC, SB, COM_PORT, 101, 0, 1, 0xC2, 0x00, IAC, SE))  # its answer to SET-BAUDRATE
        + bytes((IAC, DO, 24))  # an option we do not do (terminal type)
        + b"ok\r\n"
    )
    out = b""
    for i in range(len(stream)):  # one byte at a time: every state boundary is crossed
        out += codec.feed(stream[i : i + 1])
    assert out == b"boot\xffok\r\n"
    assert codec.port_configured and codec.replies == [bytes((COM_PORT, 101, 0, 1, 0xC2, 0x00))]
    configure = b"".join(sent)
    assert bytes((IAC, SB, COM_PORT, 1, 0, 1, 0xC2, 0x00, IAC, SE)) in configure  # 115200 baud
    assert bytes((IAC, WONT, 24)) in configure
    assert codec.feed(b"plain bytes") == b"plain bytes"
