"""BootService: the dnsmasq hosts file kept from machine events (one pin per machine, rewritten only when a pin
changed, coalesced per burst) and the optional managed dnsmasq process."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from .dnsmasq import dnsmasq_command, dnsmasq_test, find_dnsmasq, prepare_tftp_root
from .files import write_atomically
from .hosts import DhcpHost, _pin, _render_pins

_log = logging.getLogger(__package__)


class BootService:
    """Keeps ``<root>/hosts.dhcp`` in line with the machines and runs an optional managed dnsmasq.

    - ``machines()``: the machines as JSON mappings (``MachineService.list_json().values()``), read once at
      start (and again only if the event subscription lost events);
    - ``bus``: the event bus; each ``machine`` event carries the machine's JSON (None when removed), from
      which that machine's pin is updated. Only a change of a pin (MAC, IP, name, retired) marks the file
      dirty; a burst of events is coalesced into one write ``debounce`` seconds after its first (written
      only when the text changes, atomically in a thread, then SIGHUP to the managed dnsmasq). Nothing
      here rebuilds the machine list's JSON per event: the cost of an event is that one machine's pin;
    - ``dnsmasq_conf``: the managed dnsmasq's config text, or None (off, the default).

    ``state``/``reason`` are for the health report (``ok``, ``degraded``).
    """

    def __init__(
        self,
        bus: Any,
        machines: Any,
        root: Union[str, os.PathLike[str]],
        debounce: float = 0.5,
        dnsmasq_conf: Optional[str] = None,
        on_health_change: Callable[[], None] = lambda: None,
        unavailable: Optional[str] = None,
    ) -> None:
        """``on_health_change()``: told when state/reason changed; ``unavailable``: why the managed dnsmasq
        cannot run here (the service is degraded with that reason from its start)."""
        self.bus = bus
        self.machines = machines
        self.root = Path(root)
        self.hosts_file = self.root / "hosts.dhcp"
        self.debounce = debounce
        self.dnsmasq_conf = dnsmasq_conf
        self.state = "starting"
        self.reason: Optional[str] = None
        self.writes = 0
        self.resyncs = 0  # full reads of machines() (at start, and after lost events)
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.on_health_change = on_health_change
        self.unavailable = unavailable
        self._last: Optional[str] = None
        self._pins: dict[str, DhcpHost] = {}  # MAC -> its pin (machines with one)
        self._invalid: dict[str, str] = {}  # MAC -> why it cannot be pinned
        self._dirty = True
        self._problems: set[str] = set()  # the problems already logged
        self._sub: Any = None
        self._task: Optional[asyncio.Task[None]] = None

    def _health(self, state: str, reason: Optional[str] = None) -> None:
        self.state, self.reason = state, reason
        self.on_health_change()

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        self._sub = self.bus.subscribe(["machine"])
        self._resync()
        await self.write_hosts()
        if self.dnsmasq_conf is not None:
            await self._start_dnsmasq()
        else:
            self._health("ok")
        if self.unavailable:
            self._health("degraded", self.unavailable)
        self._task = asyncio.create_task(self._follow(), name="boot-hosts")

    async def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 3)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    # ---------------------------------------------------------------- pins
    def _resync(self) -> None:
        """Every machine's pin from ``machines()``: at start, and after the subscription lost events."""
        self._pins.clear()
        self._invalid.clear()
        for machine in self.machines():
            self._set_pin(str(machine.get("mac_address")), machine)
        self._dirty = True
        self.resyncs += 1

    def _set_pin(self, mac: str, machine: Optional[Mapping[str, Any]]) -> None:
        pin = _pin(machine) if machine is not None else None
        old = self._pins.get(mac)
        self._invalid.pop(mac, None)
        if isinstance(pin, DhcpHost):
            self._pins[mac] = pin
        else:
            self._pins.pop(mac, None)
            if pin is not None:
                self._invalid[mac] = pin
        if self._pins.get(mac) != old:
            self._dirty = True

    def _apply(self, events: Iterable[Any]) -> None:
        for event in events:
            if event.type == "dropped":
                self._resync()
            elif event.type == "machine" and event.data.get("mac"):
                self._set_pin(str(event.data["mac"]), event.data.get("machine"))

    async def _follow(self) -> None:
        while not self._sub.closed:
            batch = await self._sub.get_batch()
            if not batch:
                continue
            self._apply(batch)
            if not self._dirty:
                continue  # last_seen, state, training...: nothing the hosts file shows
            await asyncio.sleep(self.debounce)  # coalesce the rest of the burst into this write
            self._apply(self._sub.drain())
            try:
                await self.write_hosts()
            except Exception:  # noqa: BLE001 - logged; the next change tries again
                _log.exception("cannot write %s", self.hosts_file)

    async def write_hosts(self) -> bool:
        """Rewrite the hosts file if the pins changed it; SIGHUP the managed dnsmasq. True if written."""
        self._dirty = False
        text, conflicts = _render_pins(self._pins.values())
        problems = {*self._invalid.values(), *conflicts}
        for problem in sorted(problems - self._problems):
            _log.warning("dnsmasq hosts file: %s", problem)
        self._problems = problems
        if text == self._last:
            return False
        try:
            await asyncio.to_thread(write_atomically, self.hosts_file, text)
        except BaseException:
            self._dirty = True
            raise
        self._last = text
        self.writes += 1
        if self.proc is not None and self.proc.returncode is None:
            import signal

            self.proc.send_signal(signal.SIGHUP)
        return True

    async def _start_dnsmasq(self) -> None:
        assert self.dnsmasq_conf is not None
        ok, out = await dnsmasq_test(self.dnsmasq_conf)
        if not ok:
            self._health("degraded", f"managed dnsmasq not started: the config check failed: {out[:300]}")
            return
        conf = self.root / "dnsmasq.conf"
        await asyncio.to_thread(write_atomically, conf, self.dnsmasq_conf)
        try:
            _, problems = await asyncio.to_thread(prepare_tftp_root, self.dnsmasq_conf)
        except OSError as exc:
            self._health("degraded", f"managed dnsmasq not started: cannot prepare its TFTP directory: {exc}")
            return
        for problem in problems:
            _log.warning("managed dnsmasq: %s", problem)
        executable = find_dnsmasq() or "dnsmasq"
        try:
            log_file = await asyncio.to_thread(open, self.root / "dnsmasq.log", "ab")
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *dnsmasq_command(conf, executable),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                )
            finally:
                log_file.close()
        except OSError as exc:
            self._health("degraded", f"cannot start dnsmasq: {exc}")
            return
        try:
            await asyncio.wait_for(self.proc.wait(), 0.5)
        except asyncio.TimeoutError:
            self._health("ok")
            return
        self._health(
            "degraded", f"dnsmasq exited at once with status {self.proc.returncode} (see {self.root / 'dnsmasq.log'})"
        )
