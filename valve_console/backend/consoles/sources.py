"""Console sources other than the netconsole: serial devices (found by device sources, or given) and machines'
remote console servers (ser2net, raw TCP, RFC 2217), each read into a Stream; ``build_device_sources``.

A part of ConsoleHub (hub.py): its methods, on the hub's state."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .console import Console
from .limits import (
    RETRY_MAX,
    RETRY_MIN,
)
from .streams import DeviceState, Stream

if TYPE_CHECKING:
    from ...drivers.serial import ConsoleLink, DeviceSource, SerialDeviceInfo
    from .host import HubHost
else:
    HubHost = object  # a part of ConsoleHub: its host's interface is for the type checker only

log = logging.getLogger(__package__)


class SourcesMixin(HubHost):
    """Console sources other than the netconsole: serial devices (found by device sources, or given) and machines'"""

    # ---------------------------------------------------------------- serial devices
    async def _consume(self, source: DeviceSource) -> None:
        async for event in source.events():
            try:
                if event.action == "add":
                    self._device_added(event.device)
                else:
                    self._device_removed(event.device)
            except Exception:  # noqa: BLE001 - one odd device must not stop discovery
                log.exception("serial device event %s failed", event)

    def _device_added(self, info: SerialDeviceInfo) -> None:
        from dataclasses import replace

        real = os.path.realpath(info.devnode)
        for ident, present in self.devices.items():
            if os.path.realpath(present.info.devnode) == real and ident != info.identity:
                log.info("%s is already open as %s; ignoring it as %s", info.devnode, ident, info.identity)
                return
        ident = info.identity
        state = self.devices.get(ident)
        if state is not None and state.info.devnode != info.devnode and os.path.exists(state.info.devnode):
            alternative = info.path_identity or info.devnode
            log.warning(
                "two adapters report the identity %s (%s and %s): the second one is known as %s",
                ident,
                state.info.devnode,
                info.devnode,
                alternative,
            )
            info = replace(info, identity_override=alternative)
            ident = info.identity
            state = self.devices.get(ident)
        if state is not None:
            if state.info == info and state.task is not None and not state.task.done():
                return
            if state.task is not None:
                state.task.cancel()
        state = DeviceState(info)
        self.devices[ident] = state
        self._by_node[info.devnode] = ident
        state.task = asyncio.get_running_loop().create_task(self._serial_loop(state), name=f"serial-{ident}")
        log.info("serial device %s (%s) appeared", ident, info.devnode)

    def _device_removed(self, info: SerialDeviceInfo) -> None:
        ident = self._by_node.pop(info.devnode, info.identity)
        state = self.devices.pop(ident, None)
        if state is None:
            return
        if state.task is not None:
            state.task.cancel()
        log.info("serial device %s (%s) went away", ident, info.devnode)

    async def _serial_loop(self, state: DeviceState) -> None:
        from ...drivers.serial.transport import open_serial

        info = state.info
        ident = info.identity
        delay = RETRY_MIN
        while True:
            stream = Stream(f"serial:{ident}", self._closed_write, kind="serial", device=ident, baud=info.baud)
            stream.close = lambda: None  # a wire: it stays open (unbound) until unplugged
            link = None
            opened_at = None
            try:
                link = await open_serial(info.devnode, info.baud, functools.partial(self.feed, stream))
                opened_at = time.monotonic()
                stream.write = link.write
                stream.buffered = link.buffered
                state.link, state.stream, state.error = link, stream, None
                self.streams.add(stream)
                owner = self.device_owner.get(ident)
                if owner is not None:  # wired to that machine: its console at once, unless another stream is live
                    stream.announced = owner
                    reason = self._claim(stream, owner)
                    if reason is not None:
                        self._warn(("refused", stream.id), f"{stream.name} (stored for {owner}) waits: {reason}")
                log.info("%s opened (%s at %d baud)", stream.name, info.devnode, info.baud)
                exc = await asyncio.shield(link.closed)
                state.error = f"closed: {exc}" if exc else "closed"
                log.info("%s closed%s", stream.name, f": {exc}" if exc else "")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - SerialException, OSError, ValueError: try again later
                message = str(exc) or type(exc).__name__
                if message != state.error:
                    log.warning("cannot open serial device %s (%s): %s", ident, info.devnode, message)
                state.error = message
            finally:
                if link is not None:
                    self._close_link(link)
                state.link = state.stream = None
                self.close_stream(stream)
            if opened_at is not None and time.monotonic() - opened_at > 5:
                delay = RETRY_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _close_link(self, link: ConsoleLink) -> None:
        link.close()
        if not link.closed.done():
            self._closing.add(link.closed)
            link.closed.add_done_callback(self._closing.discard)

    @staticmethod
    def _closed_write(data: bytes) -> None:
        raise ConnectionError("not open yet")

    # ---------------------------------------------------------------- remote consoles
    def _start_remote(self, console: Console) -> None:
        if console.remote and console.mac not in self._remotes and not self._stopping:
            task = asyncio.get_running_loop().create_task(
                self._remote_loop(console.mac, console.remote), name=f"remote-console-{console.mac}"
            )
            mac = console.mac
            self._remotes[mac] = task

            def forget(done: asyncio.Task[None]) -> None:
                if self._remotes.get(mac) is done:
                    self._remotes.pop(mac, None)

            task.add_done_callback(forget)

    async def _remote_loop(self, mac: str, url: str) -> None:
        from ...drivers.serial.remote import open_remote, parse_console_url

        spec = parse_console_url(url)
        delay = RETRY_MIN
        last_error = None
        while True:
            stream = Stream(spec.url, self._closed_write, kind="remote", pinned=mac, baud=spec.baud)
            link = None
            opened_at = None
            try:
                link = await open_remote(spec, functools.partial(self.feed, stream))
                opened_at = time.monotonic()
                stream.write = link.write
                stream.buffered = link.buffered
                self.streams.add(stream)
                self.bind(stream, mac, persist=False)
                log.info("console %s: connected to %s", mac, spec.url)
                last_error = None
                exc = await asyncio.shield(link.closed)
                log.warning("console %s: %s closed%s", mac, spec.url, f": {exc}" if exc else "")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - refused, unreachable, timed out: try again later
                message = str(exc) or type(exc).__name__
                if message != last_error:
                    log.warning("console %s: cannot connect to %s: %s", mac, spec.url, message)
                last_error = message
            finally:
                if link is not None:
                    self._close_link(link)
                self.close_stream(stream)
            if opened_at is not None and time.monotonic() - opened_at > 5:
                delay = RETRY_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


def build_device_sources(settings: Any) -> list[DeviceSource]:
    """The device sources a farm's settings ask for: explicit ``--serial`` paths, then USB discovery."""
    from ...drivers.serial import ExplicitDeviceSource, PyudevDeviceSource

    sources: list[DeviceSource] = []
    if settings.serial:
        sources.append(ExplicitDeviceSource(settings.serial))
    if settings.console_discovery != "off":
        sources.append(PyudevDeviceSource(settings.console_discovery, baud=settings.console_serial_baud))
    return sources
