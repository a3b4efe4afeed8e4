"""ConsoleHub: console streams → association with a machine → per-machine console.

A *stream* is one source of console bytes: a TCP connection to the netconsole port (QEMU DUTs,
Vivian's simulated DUTs), a serial device (a USB adapter found by a device source, or a path
given with ``--serial``), or a machine's remote console server (ser2net, raw TCP or RFC 2217).
A line holding ``SALAD.machine_id=<mac>`` binds the stream to that machine; a line ending in
``SALAD.ping`` is answered ``SALAD.pong\n``. A serial device's binding (its stable identity →
MAC) is stored, so after a restart or a re-plug the device is that machine's console at once.

Each machine's *console* keeps a bounded ring buffer of timestamped chunks, a rotated log file
(byte offsets in the machine's whole stream survive rotation and restarts: ``mark``/``slice``),
any number of live viewers (API streams, and TCP clients on the machine's fixed port), and at
most one writer. Bytes are stored raw; sanitising is the viewer's job. Every buffer on the way is
bounded: a slow viewer loses bytes (and is told how many), never stalls the hub.

The DUT network is hostile (DUTs run merge requests' code), so a binding is earned (``ConsolePolicy``):
a marker never takes a live binding over; a netconsole stream binds only from the machine's
registered address, from a local source (the gateway itself: QEMU and Vivian DUTs), or anywhere
under the "free" policy; the others wait as *unbound streams* the operator sees and binds by hand.
Consoles of machines that never registered are *provisional*: capped (overall and per source),
with a small ring, removed with their logs when unused. Connections are capped and time out; all
console logs together stay under a farm-wide cap (``LogBudget``), the oldest rotated files going first.

The package: ``hub`` (ConsoleHub, with its parts ``netconsole``, ``binding``, ``sources`` (and
build_device_sources), ``tcpport``; ``host``: HubHost, what the parts use of the hub, for the type checker),
``console`` (Console), ``streams`` (Stream, DeviceState), ``viewers`` (Subscriber, TcpViewer, Writer), ``policy``
(ConsolePolicy), ``logstore`` (RotatingLog, SliceReader, LogBudget) and ``limits`` (bounds and intervals); this face
re-exports what other modules use.
"""

from __future__ import annotations

from .console import Console
from .hub import ConsoleHub
from .limits import MARKER, MAX_LINE, PENDING_MAX, SLICE_MAX
from .logstore import LogBudget, RotatingLog, SliceReader
from .policy import ConsolePolicy, same_address
from .sources import build_device_sources
from .streams import DeviceState, Stream
from .viewers import Subscriber, TcpViewer, Writer

__all__ = [
    "Console",
    "ConsoleHub",
    "ConsolePolicy",
    "DeviceState",
    "LogBudget",
    "MARKER",
    "MAX_LINE",
    "PENDING_MAX",
    "RotatingLog",
    "SLICE_MAX",
    "SliceReader",
    "Stream",
    "Subscriber",
    "TcpViewer",
    "Writer",
    "build_device_sources",
    "same_address",
]
