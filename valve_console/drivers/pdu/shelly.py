"""Shelly relays. Outlets are the device's switch ids, "0".."N-1".

* ``shelly_gen1``: ``/relay/<i>?turn=on|off`` (state ``ison``), ``/shelly`` for ``num_outputs``,
  ``/settings/relay/<i>`` for the name; HTTP basic auth if a user is set.
* ``shelly_gen2`` (Plus/Pro/Gen3): ``/rpc/Switch.Set``, ``Switch.GetStatus`` (``output``),
  ``Switch.GetConfig`` (``name``), ``Shelly.GetStatus`` to find the switches; HTTP digest auth
  (user ``admin``) if a password is set.

REBOOT uses the device's own flip-back timer: off, then on again after 5 s.

``get_many`` reads every relay in one request (Gen1 ``/status``, Gen2 ``Shelly.GetStatus``);
switching is one request per relay, as both APIs have no multi-relay command.

``read_power`` uses the same status request. Gen1: ``meters[i].power`` (W) and ``meters[i].total`` (watt-minutes:
Wh = total / 60; a meter with ``is_valid`` false is refused). Gen2: ``switch:N`` (or ``pm1:N`` of the PM Mini)
``apower`` (W), ``voltage`` (V), ``current`` (A), ``aenergy.total`` (Wh); one relay asks ``Switch.GetStatus``.
A relay without a meter (no ``meters`` entry, no ``apower``) is not metered. No device total.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
from pydantic import Field

from .base import DriverError, Outlet, OutletPower, PortState, PowerReading, outlet_power
from .httpbase import REBOOT_OFF_SECONDS, HttpConfig, HttpPDU


class ShellyConfig(HttpConfig):
    outlets: int | None = Field(default=None, ge=1, le=16, description="number of relays (default: ask the device)")


class ShellyGen2Config(ShellyConfig):
    user: str | None = Field(default="admin", min_length=1, description="user name (always admin on Gen2)")


class _Shelly(HttpPDU):
    config_model = ShellyConfig

    def _switch(self, port_id: str) -> int:
        text = str(port_id).strip()
        limit = getattr(self.config, "outlets", None)
        if not text.isdigit() or (limit is not None and int(text) >= limit) or int(text) > 255:
            span = f"0..{limit - 1}" if limit else "0..N-1"
            raise DriverError(f"{self.model} at {self.hostname} has no outlet {port_id!r} (outlets {span})")
        return int(text)


class ShellyGen1PDU(_Shelly):
    name: ClassVar[str] = "shelly_gen1"
    model: ClassVar[str] = "Shelly Gen1"

    def auth(self) -> httpx.Auth | None:
        if self.config.user is None:
            return None
        return httpx.BasicAuth(self.config.user, self.config.password or "")

    def _ison(self, body: Any, what: str) -> PortState:
        if not isinstance(body, dict) or not isinstance(body.get("ison"), bool):
            raise self.bad_answer(what, body)
        return PortState.ON if body["ison"] else PortState.OFF

    async def ports(self) -> list[Outlet]:
        count = self.config.outlets  # type: ignore[attr-defined]
        if count is None:
            info = await self.request_json("/shelly", None, "device information")
            if not isinstance(info, dict):
                raise self.bad_answer("device information", info)
            if isinstance(info.get("gen"), int) and info["gen"] >= 2:
                raise DriverError(f"{self.hostname} is a Gen{info['gen']} Shelly: use the driver shelly_gen2")
            count = info.get("num_outputs", 1)
            if not isinstance(count, int) or count < 1:
                raise self.bad_answer("device information", info)
        outlets = []
        for i in range(count):
            settings = await self.request_json(f"/settings/relay/{i}", None, f"settings of relay {i}", missing_ok=True)
            name = settings.get("name") if isinstance(settings, dict) else None
            outlets.append(Outlet(str(i), name or ""))
        return outlets

    async def get(self, port_id: str) -> PortState:
        i = self._switch(port_id)
        what = f"state of relay {i}"
        return self._ison(await self.request_json(f"/relay/{i}", None, what), what)

    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]:
        ids = [self._switch(p) for p in port_ids]
        if len(ids) < 2:
            return await super().get_many(port_ids)
        what = f"state of relays {','.join(map(str, ids))}"
        body = await self.request_json("/status", None, what)
        relays = body.get("relays") if isinstance(body, dict) else None
        if not isinstance(relays, list) or any(i >= len(relays) for i in ids):
            raise self.bad_answer(what, body)
        return {p: self._ison(relays[i], what) for p, i in zip(port_ids, ids, strict=True)}

    async def read_power(self, port_ids: list[str]) -> PowerReading:
        ids = [self._switch(p) for p in port_ids]
        body = await self.request_json("/status", None, "power readings")
        if not isinstance(body, dict):
            raise self.bad_answer("power readings", body)
        meters = body.get("meters")
        meters = meters if isinstance(meters, list) else []
        problems: list[str] = []
        outlets: dict[str, OutletPower] = {}
        for port_id, i in zip(port_ids, ids, strict=True):
            meter = meters[i] if i < len(meters) else None
            if not isinstance(meter, dict) or "power" not in meter:
                continue  # a relay without a meter
            if meter.get("is_valid") is False:
                problems.append(f"outlet {port_id}: the device says its meter reading is not valid")
                continue
            reading = outlet_power(f"outlet {port_id}", {
                "watts": (meter.get("power"), 1.0), "energy_wh": (meter.get("total"), 1 / 60)}, problems)
            if reading is not None:
                outlets[port_id] = reading
        return PowerReading(outlets, problems=tuple(problems))

    async def set(self, port_id: str, state: PortState) -> None:
        i = self._switch(port_id)
        if state == PortState.REBOOT:
            params: dict[str, Any] = {"turn": "off", "timer": REBOOT_OFF_SECONDS}
        elif state in (PortState.ON, PortState.OFF):
            params = {"turn": state.value.lower()}
        else:
            raise DriverError(f"cannot set outlet {i} to {state.value}: use ON, OFF or REBOOT")
        what = f"relay {i} {state.value}"
        self._ison(await self.request_json(f"/relay/{i}", params, what), what)


class ShellyGen2PDU(_Shelly):
    name: ClassVar[str] = "shelly_gen2"
    model: ClassVar[str] = "Shelly Gen2"
    config_model = ShellyGen2Config

    def auth(self) -> httpx.Auth | None:
        if self.config.password is None:
            return None
        return httpx.DigestAuth(self.config.user or "admin", self.config.password)

    def error_text(self, body: Any) -> str | None:
        if isinstance(body, dict) and "message" in body:
            return f"{body['message']} (code {body.get('code')})"
        return None

    async def rpc(self, method: str, params: dict[str, Any] | None, what: str) -> Any:
        body = await self.request_json(f"/rpc/{method}", params, what)
        if not isinstance(body, dict):
            raise self.bad_answer(what, body)
        return body

    async def ports(self) -> list[Outlet]:
        count = self.config.outlets  # type: ignore[attr-defined]
        if count is None:
            status = await self.rpc("Shelly.GetStatus", None, "device status")
            ids = sorted(int(k.split(":", 1)[1]) for k in status if k.startswith("switch:") and k[7:].isdigit())
            if not ids:
                raise DriverError(f"Shelly Gen2 at {self.hostname} has no switch (is it a relay device?)")
        else:
            ids = list(range(count))
        outlets = []
        for i in ids:
            config = await self.rpc("Switch.GetConfig", {"id": i}, f"config of switch {i}")
            outlets.append(Outlet(str(i), config.get("name") or ""))
        return outlets

    async def get(self, port_id: str) -> PortState:
        i = self._switch(port_id)
        what = f"state of switch {i}"
        body = await self.rpc("Switch.GetStatus", {"id": i}, what)
        if not isinstance(body.get("output"), bool):
            raise self.bad_answer(what, body)
        return PortState.ON if body["output"] else PortState.OFF

    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]:
        ids = [self._switch(p) for p in port_ids]
        if len(ids) < 2:
            return await super().get_many(port_ids)
        what = f"state of switches {','.join(map(str, ids))}"
        body = await self.rpc("Shelly.GetStatus", None, what)
        states: dict[str, PortState] = {}
        for port_id, i in zip(port_ids, ids, strict=True):
            entry = body.get(f"switch:{i}")
            output = entry.get("output") if isinstance(entry, dict) else None
            if not isinstance(output, bool):
                raise self.bad_answer(what, body)
            states[port_id] = PortState.ON if output else PortState.OFF
        return states

    async def read_power(self, port_ids: list[str]) -> PowerReading:
        ids = [self._switch(p) for p in port_ids]
        entries: dict[int, Any] = {}
        if len(ids) == 1:
            entries[ids[0]] = await self.rpc("Switch.GetStatus", {"id": ids[0]}, "power readings")
        elif ids:
            body = await self.rpc("Shelly.GetStatus", None, "power readings")
            entries = {i: body.get(f"switch:{i}", body.get(f"pm1:{i}")) for i in ids}
        problems: list[str] = []
        outlets: dict[str, OutletPower] = {}
        for port_id, i in zip(port_ids, ids, strict=True):
            entry = entries.get(i)
            if not isinstance(entry, dict) or "apower" not in entry:
                continue  # a switch without a meter
            energy = entry.get("aenergy")
            reading = outlet_power(f"outlet {port_id}", {
                "watts": (entry.get("apower"), 1.0), "volts": (entry.get("voltage"), 1.0),
                "amps": (entry.get("current"), 1.0),
                "energy_wh": (energy.get("total") if isinstance(energy, dict) else None, 1.0),
            }, problems)
            if reading is not None:
                outlets[port_id] = reading
        return PowerReading(outlets, problems=tuple(problems))

    async def set(self, port_id: str, state: PortState) -> None:
        i = self._switch(port_id)
        params: dict[str, Any] = {"id": i}
        if state == PortState.REBOOT:
            params.update(on="false", toggle_after=REBOOT_OFF_SECONDS)
        elif state in (PortState.ON, PortState.OFF):
            params["on"] = "true" if state == PortState.ON else "false"
        else:
            raise DriverError(f"cannot set outlet {i} to {state.value}: use ON, OFF or REBOOT")
        await self.rpc("Switch.Set", params, f"switch {i} {state.value}")
