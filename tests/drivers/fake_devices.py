"""Small HTTP servers (real sockets, a thread each) that answer like Tasmota and Shelly devices.

They follow the devices' documented APIs: Tasmota ``/cm?cmnd=...`` (credentials in the query),
Tasmota ``State`` for all relays, Shelly Gen1 ``/shelly``, ``/status``, ``/relay/<i>``,
``/settings/relay/<i>`` (HTTP basic auth), Shelly Gen2
``/rpc/<Method>`` (HTTP digest auth, SHA-256, user ``admin``).

``meters`` (set by a test) makes a device meter power: per relay a dict of the device's own fields, sent as
they are (Shelly Gen1 ``/status`` ``meters[i]``; Gen2 merged into ``switch:i``; Tasmota ``energy`` is the
``StatusSNS.ENERGY`` object of ``Status 8``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FakeDevice:
    def __init__(self, kind: str, relays: int = 1, names: list[str | None] | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        self.kind = kind
        self.on = [False] * relays
        self.names = names or [None] * relays
        self.user, self.password = user, password
        self.hang = 0.0  # seconds to sit on each request before answering
        self.meters: list[dict[str, Any] | None] | None = None  # per relay, the device's meter fields
        self.energy: dict[str, Any] | None = None  # Tasmota: StatusSNS.ENERGY
        self.requests: list[str] = []
        self.realm = "shellyplus2pm-a8032ab1c2d3"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.hostname = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---------------------------------------------------------------- request handling
    def _handler(self):
        device = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                device.requests.append(self.path)
                if device.hang:
                    time.sleep(device.hang)
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                status, body, headers = getattr(device, f"_{device.kind}")(self, url.path, query)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _relay(self, text: str) -> int | None:
        return int(text) if text.isdigit() and int(text) < len(self.on) else None

    # Tasmota: /cm?cmnd=Power1%20On[&user=U&password=P]
    def _tasmota(self, req, path: str, q: dict[str, str]):
        if path != "/cm":
            return 404, "Not Found", {}
        if self.password is not None and (q.get("user"), q.get("password")) != (self.user, self.password):
            return 401, {"WARNING": "Need user=<username>&password=<password>"}, {}
        words = q.get("cmnd", "").split()
        if words == ["Status", "8"]:
            sns: dict[str, Any] = {"Time": "2026-11-25T10:00:00"}
            if self.energy is not None:
                sns["ENERGY"] = self.energy
            return 200, {"StatusSNS": sns}, {}
        if words and words[0].lower() == "state":  # every relay at once, with other status fields
            powers = {("POWER" if len(self.on) == 1 else f"POWER{n}"): "ON" if on else "OFF"
                      for n, on in enumerate(self.on, 1)}
            return 200, {"Time": "2026-11-25T10:00:00", "Uptime": "0T00:01:00", **powers}, {}
        match = re.fullmatch(r"(?i)(power|friendlyname)(\d*)", words[0]) if words else None
        if not match:
            return 200, {"Command": "Unknown"}, {}
        n = int(match.group(2) or 1)
        if not 1 <= n <= len(self.on):
            return 200, {"Command": "Unknown"}, {}
        if match.group(1).lower() == "friendlyname":
            return 200, {f"FriendlyName{n}": self.names[n - 1] or f"Tasmota{n}"}, {}
        if len(words) > 1:
            word = words[1].lower()
            self.on[n - 1] = {"on": True, "1": True, "off": False, "0": False}.get(word, self.on[n - 1])
        key = "POWER" if len(self.on) == 1 else f"POWER{n}"
        return 200, {key: "ON" if self.on[n - 1] else "OFF"}, {}

    # Shelly Gen1
    def _gen1(self, req, path: str, q: dict[str, str]):
        if path == "/shelly":
            return 200, {"type": "SHSW-25", "mac": "A8032AB1C2D3", "auth": self.password is not None,
                         "fw": "20230913-112003/v1.14.0-gcb84623", "num_outputs": len(self.on)}, {}
        if self.password is not None:
            expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if req.headers.get("Authorization") != expected:
                return 401, "401 Unauthorized", {"WWW-Authenticate": 'Basic realm="shelly"'}
        if path == "/status":  # every relay at once
            body: dict[str, Any] = {"relays": [{"ison": on, "has_timer": False, "source": "http"} for on in self.on],
                                    "uptime": 60}
            if self.meters is not None:
                body["meters"] = [m for m in self.meters if m is not None]
            return 200, body, {}
        m = re.fullmatch(r"/(settings/)?relay/(\d+)", path)
        i = self._relay(m.group(2)) if m else None
        if i is None:
            return 404, "Not Found", {}
        if m.group(1):
            return 200, {"name": self.names[i], "appliance_type": "General", "default_state": "off"}, {}
        if q.get("turn") in ("on", "off"):
            self.on[i] = q["turn"] == "on"
            if "timer" in q:
                self._later(float(q["timer"]), i)
        return 200, {"ison": self.on[i], "has_timer": "timer" in q, "timer_duration": 0, "source": "http"}, {}

    def _later(self, seconds: float, i: int) -> None:
        """The device's flip-back timer (a daemon thread, so it never holds the test run)."""
        timer = threading.Timer(seconds, self._flip, args=(i,))
        timer.daemon = True
        timer.start()

    def _flip(self, i: int) -> None:
        self.on[i] = not self.on[i]

    def _meter(self, i: int) -> dict[str, Any]:
        meter = self.meters[i] if self.meters is not None and i < len(self.meters) else None
        return meter or {}

    # Shelly Gen2
    def _digest_ok(self, req) -> bool:
        header = req.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            return False
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header[7:]))
        h = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
        ha1 = h(f"{fields.get('username')}:{self.realm}:{self.password}")
        ha2 = h(f"GET:{fields.get('uri')}")
        expected = h(f"{ha1}:{fields.get('nonce')}:{fields.get('nc')}:{fields.get('cnonce')}:auth:{ha2}")
        return fields.get("username") == "admin" and fields.get("response") == expected

    def _gen2(self, req, path: str, q: dict[str, str]):
        if path == "/shelly":
            return 200, {"id": "shellyplus2pm-a8032ab1c2d3", "gen": 2, "auth_en": self.password is not None}, {}
        if self.password is not None and not self._digest_ok(req):
            challenge = (f'Digest qop="auth", realm="{self.realm}", nonce="{secrets.token_hex(8)}", '
                         "algorithm=SHA-256")
            return 401, {"code": 401, "message": "Unauthorized"}, {"WWW-Authenticate": challenge}
        method = path.removeprefix("/rpc/")
        if method == "Shelly.GetStatus":
            status: dict[str, Any] = {"sys": {"uptime": 1}, "wifi": {}}
            status.update({f"switch:{i}": {"id": i, "output": on, **self._meter(i)} for i, on in enumerate(self.on)})
            return 200, status, {}
        if not method.startswith("Switch."):
            return 404, {"code": 404, "message": f"No handler for {method}"}, {}
        i = self._relay(q.get("id", ""))
        if i is None:
            return 500, {"code": -105, "message": f"Argument 'id', value {q.get('id')} not found!"}, {}
        if method == "Switch.GetStatus":
            return 200, {"id": i, "source": "HTTP_in", "output": self.on[i], **self._meter(i)}, {}
        if method == "Switch.GetConfig":
            return 200, {"id": i, "name": self.names[i], "initial_state": "off"}, {}
        if method == "Switch.Set":
            was_on = self.on[i]
            self.on[i] = q.get("on") == "true"
            if "toggle_after" in q:
                self._later(float(q["toggle_after"]), i)
            return 200, {"was_on": was_on}, {}
        return 404, {"code": 404, "message": f"No handler for {method}"}, {}
