"""Tasmota smart plugs and relay boards: ``GET /cm?cmnd=Power<N> On|Off``; outlets "1".."N".

``get_many`` reads every relay with one ``State`` command. ``set_many`` goes relay by relay:
Tasmota's ``Backlog`` would carry several commands in one request, but runs them later, 200 ms
apart by default, and answers none of them.

``read_power`` sends ``Status 8`` (one request): ``StatusSNS.ENERGY`` ``Power`` (W), ``Voltage`` (V),
``Current`` (A), ``Total`` (kWh, → Wh). One energy channel is the device's: it is outlet 1's reading on a
one-relay device and the device total on a multi-relay one; a device whose firmware reports one value per
channel (arrays) gives relay N the Nth. A device without an energy monitor has no ``ENERGY``: not metered.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from pydantic import Field

from .base import TOTAL_LIMITS, DriverError, Outlet, OutletPower, PortState, PowerReading, checked_si, outlet_power
from .httpbase import REBOOT_OFF_SECONDS, HttpConfig, HttpPDU

TRUE_WORDS = {"ON": PortState.ON, "1": PortState.ON, "TRUE": PortState.ON,
              "OFF": PortState.OFF, "0": PortState.OFF, "FALSE": PortState.OFF}


class TasmotaConfig(HttpConfig):
    outlets: int = Field(default=1, ge=1, le=32, description="number of relays (Power1..PowerN)")


class TasmotaPDU(HttpPDU):
    name: ClassVar[str] = "tasmota"
    model: ClassVar[str] = "Tasmota"
    config_model = TasmotaConfig

    async def command(self, cmnd: str, what: str) -> dict[str, Any]:
        params = {"cmnd": cmnd}
        if self.config.user is not None or self.config.password is not None:
            # Tasmota takes its web credentials in the query string.
            params.update(user=self.config.user or "admin", password=self.config.password or "")
        body = await self.request_json("/cm", params, what)
        if not isinstance(body, dict):
            raise self.bad_answer(what, body)
        if "WARNING" in body:
            raise DriverError(f"Tasmota at {self.hostname} refused {what}: {body['WARNING']} (check user and password)")
        if str(body.get("Command", "")).lower() == "unknown":
            raise DriverError(f"Tasmota at {self.hostname} does not know {cmnd!r} ({what}): no such relay?")
        return body

    def _relay(self, port_id: str) -> int:
        text = str(port_id).strip()
        assert isinstance(self.config, TasmotaConfig)
        count = self.config.outlets
        if not text.isdigit() or not 1 <= int(text) <= count:
            raise DriverError(f"Tasmota at {self.hostname} has no outlet {port_id!r} (outlets 1..{count})")
        return int(text)

    def _state(self, body: dict[str, Any], relay: int, what: str) -> PortState:
        keys = [f"POWER{relay}"] + (["POWER"] if relay == 1 else [])
        for key in keys:
            for k, v in body.items():
                if k.upper() == key:
                    state = TRUE_WORDS.get(str(v).strip().upper())
                    if state is None:
                        raise self.bad_answer(what, body)
                    return state
        raise self.bad_answer(what, body)

    async def ports(self) -> list[Outlet]:
        assert isinstance(self.config, TasmotaConfig)
        outlets = []
        for relay in range(1, self.config.outlets + 1):
            label = ""
            if relay <= 8:  # FriendlyName1..8
                body = await self.command(f"FriendlyName{relay}", f"name of relay {relay}")
                label = str(next((v for k, v in body.items() if k.lower() == f"friendlyname{relay}"), ""))
            outlets.append(Outlet(str(relay), label))
        return outlets

    async def get(self, port_id: str) -> PortState:
        relay = self._relay(port_id)
        what = f"state of relay {relay}"
        return self._state(await self.command(f"Power{relay}", what), relay, what)

    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]:
        relays = [self._relay(p) for p in port_ids]
        if len(relays) < 2:
            return await super().get_many(port_ids)
        what = f"state of relays {','.join(map(str, relays))}"
        body = await self.command("State", what)
        return {p: self._state(body, relay, what) for p, relay in zip(port_ids, relays, strict=True)}

    async def read_power(self, port_ids: list[str]) -> PowerReading:
        relays = [self._relay(p) for p in port_ids]
        body = await self.command("Status 8", "power readings")
        sns = next((v for k, v in body.items() if k.lower() == "statussns"), None)
        energy = next((v for k, v in sns.items() if k.lower() == "energy"), None) if isinstance(sns, dict) else None
        if not isinstance(energy, dict):
            return PowerReading({})  # no energy monitor
        fields = {"watts": ("Power", 1.0), "volts": ("Voltage", 1.0), "amps": ("Current", 1.0),
                  "energy_wh": ("Total", 1000.0)}
        values = {name: (energy.get(key), scale) for name, (key, scale) in fields.items()}
        problems: list[str] = []
        outlets: dict[str, OutletPower] = {}
        assert isinstance(self.config, TasmotaConfig)
        channels = any(isinstance(v, list) for v, _ in values.values())
        if channels:
            for port_id, relay in zip(port_ids, relays, strict=True):
                raw = {name: (v[relay - 1] if isinstance(v, list) and relay <= len(v) else None, scale)
                       for name, (v, scale) in values.items()}
                reading = outlet_power(f"outlet {port_id}", raw, problems)
                if reading is not None:
                    outlets[port_id] = reading
            return PowerReading(outlets, problems=tuple(problems))
        if self.config.outlets == 1 and relays:
            reading = outlet_power(f"outlet {port_ids[0]}", values, problems)
            if reading is not None:
                outlets[port_ids[0]] = reading
        total = {name: checked_si(f"device total {name}", values[name][0], values[name][1], TOTAL_LIMITS[name],
                                     [] if self.config.outlets == 1 and relays else problems)
                 for name in ("watts", "energy_wh")}
        return PowerReading(outlets, total["watts"], total["energy_wh"], tuple(problems))

    async def set(self, port_id: str, state: PortState) -> None:
        relay = self._relay(port_id)
        if state == PortState.REBOOT:
            await self.set(port_id, PortState.OFF)
            await asyncio.sleep(REBOOT_OFF_SECONDS)
            await self.set(port_id, PortState.ON)
            return
        if state not in (PortState.ON, PortState.OFF):
            raise DriverError(f"cannot set outlet {relay} to {state.value}: use ON, OFF or REBOOT")
        word = "On" if state == PortState.ON else "Off"
        what = f"relay {relay} {state.value}"
        self._state(await self.command(f"Power{relay} {word}", what), relay, what)
