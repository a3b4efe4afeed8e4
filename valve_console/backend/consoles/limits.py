"""The console hub's bounds, intervals and markers (every buffer on the way is bounded)."""

from __future__ import annotations

import re

MARKER = re.compile(rb"SALAD\.machine_id=(\S+)")
MAX_LINE = 4096  # bytes kept while waiting for a newline; longer "lines" are cut
PENDING_MAX = 64 * 1024  # bytes kept from a stream before it is bound to a machine
EVENT_HZ = 20
EVENT_MAX_TEXT = 256 * 1024
COALESCE = 4096  # ring chunks smaller than this, arriving within a second, are merged
RING_MAX_CHUNKS = 65536  # a trickle of tiny chunks cannot make the ring's index grow without bound
VIEWER_HIGH = 256 * 1024  # a TCP viewer's unsent bytes above which its output is dropped
VIEWER_LOW = 64 * 1024
SUBSCRIBER_MAX = 1024 * 1024  # an API stream's unsent bytes above which the oldest are dropped
WRITE_MAX = 1024 * 1024  # bytes waiting to go to a device before input is refused
NOTICE_INTERVAL = 1.0  # at most one refusal notice a second per TCP client
MAX_CONSOLES = 1024  # consoles of registered machines at most (each holds a listening socket)
UNKNOWN_RING = 256 * 1024  # ring buffer of a provisional console (a machine that never registered)
WARN_INTERVAL = 60.0  # the same refusal is logged at most once a minute (a flood must not flood the log)
WARN_BURST = 30  # and refusals of any kind at most this many times a minute
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 10, 3  # a dead DUT's connection goes in ~90 s
LOG_CAP_LOW = 0.9  # evicting console logs goes down to this share of the farm-wide cap
LOG_SCAN_INTERVAL = 2.0  # seconds between two scans of the console log directory
TAKEOVER = b"\x1dt"  # Ctrl-] then t: take write access over
RETRY_MIN, RETRY_MAX = 0.5, 30.0  # back-off when a device or a console server cannot be opened
SHARE_RETRY = 30.0  # seconds between attempts to listen on a machine's port when it is taken
SLICE_MAX = 64 * 1024 * 1024
