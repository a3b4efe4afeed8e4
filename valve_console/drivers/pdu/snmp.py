"""SNMP PDUs: the shared client, config model and base driver, plus ``snmp``.

v1/v2c GET and SET go through the built-in codec of :mod:`.snmp_ber` (one UDP endpoint per driver
and event loop) unless the config says ``engine: pysnmp``; SNMPv3 and column walks use pysnmp 7.

Each vendor driver is a table on :class:`SnmpPDU`: the column of outlet names, the column of outlet
states and how its values read, and the command written for ON, OFF and REBOOT. OIDs are numeric
and sent with ``lookupMib=False``, so no MIB files are needed. A port id is the outlet's SNMP index
("1".."N"); vendor tables indexed by unit (Raritan, Eaton, Server Technology) take the unit from
the config and keep the port id the outlet number.

One ``SnmpEngine`` serves every SNMP PDU of an event loop (an engine is bound to the loop that
first used it). It is closed when the last SNMP driver of that loop is closed, or by
:func:`close_engines`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from . import snmp_ber
from .base import BatchFallback, DriverConfig, DriverError, Outlet, OutletError, PortState, parse_config

ENTERPRISES = "1.3.6.1.4.1"
MAX_OUTLETS = 1024
MAX_VARBINDS = 16  # per request in get_many/set_many; small enough for any PDU's buffer
# Error statuses that say the request as a whole may not be made (credentials), not that one var-bind is bad.
REQUEST_ERRORS = {"noAccess", "authorizationError", "readOnly", "genErr", "tooBig"}
# The engine used for v1/v2c GET and SET when the config says engine "auto": "ber" is the codec of
# snmp_ber.py, "pysnmp" is pysnmp (tests set this to run the same agent tests on both).
DEFAULT_ENGINE: Literal["ber", "pysnmp"] = "ber"
REBOOT_PAUSE = 5.0  # seconds off when a table has no reboot command of its own
OID_RE = re.compile(r"^\.?\d+(\.\d+)*$")

AUTH_PROTOCOLS = ("MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
PRIV_PROTOCOLS = ("DES", "3DES", "AES", "AES192", "AES256")

WRITE_HINTS = {
    "noAccess": "is the community or user allowed to write?",
    "authorizationError": "is the community or user allowed to write?",
    "notWritable": "that object is read-only: wrong PDU model?",
    "noSuchName": "SNMPv1 says this for a read-only community and for a missing outlet alike",
    "readOnly": "is the community allowed to write?",
    "wrongValue": "the PDU does not accept that value here: wrong PDU model?",
    "badValue": "the PDU does not accept that value here: wrong PDU model?",
    "wrongType": "the PDU expects another type here: wrong PDU model?",
    "noCreation": "no such outlet?",
    "inconsistentValue": "the PDU cannot do that now",
    "resourceUnavailable": "the PDU is busy",
    "commitFailed": "the PDU could not carry the command out",
}
READ_HINTS = {
    "noSuchName": "no such object: wrong PDU model, or no such outlet?",
    "noAccess": "may this community or user read it?",
    "authorizationError": "may this community or user read it?",
}


# --------------------------------------------------------------------------- engines (one per loop)

_engines: dict[asyncio.AbstractEventLoop, Any] = {}
_users: dict[asyncio.AbstractEventLoop, set[int]] = {}
_shared_view: Any = None


def _engine(user: int) -> Any:
    """The running loop's SnmpEngine, created on first use; ``user`` is counted until released."""
    from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

    global _shared_view
    loop = asyncio.get_running_loop()
    for old in [lp for lp in _engines if lp.is_closed()]:  # its dispatcher cannot be closed any more
        _engines.pop(old, None)
        _users.pop(old, None)
    engine = _engines.get(loop)
    if engine is None:
        engine = _engines[loop] = SnmpEngine()
        # Resolving numeric OIDs needs only a MIB view, but the first one costs ~300 ms (pysmi
        # builds its parser). Share it between engines so a new loop does not pay again.
        if _shared_view is None:
            _shared_view = engine.cache.get("mibViewController")
        elif "mibViewController" in engine.cache:
            engine.cache["mibViewController"] = _shared_view
    _users.setdefault(loop, set()).add(user)
    return engine


def _release(user: int) -> None:
    """Forget ``user``; close the current loop's engine when it was the last one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    users = _users.get(loop)
    if users is None:
        return
    users.discard(user)
    if not users:
        engine = _engines.pop(loop, None)
        _users.pop(loop, None)
        if engine is not None:
            engine.close_dispatcher()


async def close_engines() -> None:
    """Close the running loop's SnmpEngine (call before the loop ends; the next request makes a new one)."""
    loop = asyncio.get_running_loop()
    engine = _engines.pop(loop, None)
    _users.pop(loop, None)
    if engine is not None:
        engine.close_dispatcher()


# --------------------------------------------------------------------------- config


def split_host(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address → (host, port or None)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"cannot read {value!r}: use HOST, HOST:PORT or [IPv6]:PORT")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"cannot read {value!r}: use HOST, HOST:PORT or [IPv6]:PORT")
    if port_text == "":
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"the port in {value!r} must be a number between 1 and 65535")
    return host, int(port_text)


def normalize_oid(value: Any) -> str:
    text = str(value).strip()
    if not OID_RE.fullmatch(text):
        raise ValueError(f"{value!r} is not a numeric OID such as 1.3.6.1.4.1.318.1.1.4.4.2.1.3")
    return text.lstrip(".")


class SnmpConfig(DriverConfig):
    """How to reach an SNMP agent. Version "1" and community "private" by default, like valve-infra."""

    hostname: str = Field(description="the PDU's address: HOST or HOST:PORT")
    port: int = Field(default=161, ge=1, le=65535, description="UDP port (or give it in hostname)")
    version: Literal["1", "2c", "3"] = Field(default="1", description='SNMP version: "1", "2c" or "3"')
    community: str = Field(default="private", min_length=1, description="v1/v2c community used for writes")
    read_community: str | None = Field(default=None, min_length=1, description="v1/v2c community for reads")
    username: str | None = Field(default=None, min_length=1, description="SNMPv3 user")
    auth_key: str | None = Field(default=None, description="SNMPv3 authentication passphrase (8+ characters)")
    priv_key: str | None = Field(default=None, description="SNMPv3 privacy passphrase (8+ characters)")
    auth_protocol: str | None = Field(default=None, description="MD5, SHA (default), SHA224, SHA256, SHA384, SHA512")
    priv_protocol: str | None = Field(default=None, description="DES, 3DES, AES (default), AES192, AES256")
    context: str = Field(default="", description="SNMPv3 context name")
    timeout: float = Field(default=2.0, gt=0, le=60, description="seconds to wait for each answer")
    retries: int = Field(default=1, ge=0, le=10, description="resends after a timeout")
    engine: Literal["auto", "ber", "pysnmp"] = Field(
        default="auto", description='v1/v2c GET/SET: "ber" (the fast built-in codec; the "auto" default) or "pysnmp"'
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        text = str(value).strip().lower().removeprefix("v")
        return {"1": "1", "2": "2c", "2c": "2c", "3": "3"}.get(text, value)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        split_host(value)
        return value.strip()

    @field_validator("auth_protocol", "priv_protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any, info: Any) -> Any:
        if value is None:
            return None
        text = str(value).strip().upper().replace("-", "")
        text = {"SHA1": "SHA", "AES128": "AES", "DES3": "3DES", "TRIPLEDES": "3DES"}.get(text, text)
        allowed = AUTH_PROTOCOLS if info.field_name == "auth_protocol" else PRIV_PROTOCOLS
        if text not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return text

    @model_validator(mode="after")
    def _consistent(self) -> "SnmpConfig":
        host_port = split_host(self.hostname)[1]
        if host_port is not None and "port" in self.model_fields_set and host_port != self.port:
            raise ValueError(f"hostname says port {host_port} but port says {self.port}: give it once")
        v3_keys = [k for k in ("username", "auth_key", "priv_key", "auth_protocol", "priv_protocol")
                   if getattr(self, k) is not None]
        if self.version == "3" and self.engine == "ber":
            raise ValueError('engine "ber" only speaks SNMP versions 1 and 2c: use "auto" or "pysnmp" with version 3')
        if self.version != "3":
            if v3_keys:
                verb = "applies" if len(v3_keys) == 1 else "apply"
                raise ValueError(f"{', '.join(v3_keys)} only {verb} to SNMP version 3 (version is {self.version!r})")
            if self.context:
                raise ValueError("context only applies to SNMP version 3")
            return self
        if "community" in self.model_fields_set or self.read_community is not None:
            raise ValueError("community and read_community do not apply to SNMP version 3: use username")
        if self.username is None:
            raise ValueError("SNMP version 3 needs a username")
        for key in ("auth_key", "priv_key"):
            secret = getattr(self, key)
            if secret is not None and len(secret) < 8:
                raise ValueError(f"{key} must be at least 8 characters (RFC 3414)")
        if self.auth_protocol is not None and self.auth_key is None:
            raise ValueError("auth_protocol needs an auth_key")
        if self.priv_key is not None and self.auth_key is None:
            raise ValueError("priv_key needs an auth_key: SNMPv3 has no privacy without authentication")
        if self.priv_protocol is not None and self.priv_key is None:
            raise ValueError("priv_protocol needs a priv_key")
        return self

    @property
    def address(self) -> tuple[str, int]:
        host, port = split_host(self.hostname)
        return host, port if port is not None else self.port


# --------------------------------------------------------------------------- client


class SnmpStatusError(DriverError):
    """The agent answered with an error status; ``varbind`` is the 0-based position of the var-bind
    it blames, or None when the error concerns the whole request (e.g. credentials)."""

    def __init__(self, message: str, varbind: int | None) -> None:
        super().__init__(message)
        self.varbind = varbind


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _text(value: Any) -> str:
    """An OctetString (or anything) as display text."""
    if isinstance(value, (int, str)):
        return str(value)
    try:
        raw = bytes(value)
    except Exception:  # noqa: BLE001 - not an octet string
        return str(value)
    return raw.decode("utf-8", "replace").replace("\x00", "").strip()


class SnmpClient:
    """GET, SET and column walks against one agent, with errors turned into DriverError."""

    def __init__(self, config: SnmpConfig) -> None:
        self.config = config
        host, port = config.address
        self.host, self.port = host, port
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._target: Any = None
        self._auth: dict[str, Any] = {}
        self._varbinds: dict[tuple[str, int | None], Any] = {}
        self._endpoints: dict[asyncio.AbstractEventLoop, snmp_ber.Endpoint] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._communities = {write: self._community(write) for write in (False, True)}
        engine = DEFAULT_ENGINE if config.engine == "auto" else config.engine
        self.fast = config.version != "3" and engine == "ber"

    # -- the built-in BER codec (v1/v2c GET and SET)
    async def _endpoint(self) -> snmp_ber.Endpoint:
        """This loop's UDP endpoint to the agent, opened on first use."""
        loop = asyncio.get_running_loop()
        endpoint = self._endpoints.get(loop)
        if endpoint is not None and not endpoint.closed:
            return endpoint
        for old in [lp for lp in self._endpoints if lp.is_closed()]:
            self._endpoints.pop(old, None)
            self._opening.pop(old, None)
        async with self._opening.setdefault(loop, asyncio.Lock()):
            endpoint = self._endpoints.get(loop)
            if endpoint is None or endpoint.closed:
                try:
                    endpoint = self._endpoints[loop] = await snmp_ber.Endpoint.open(self.host, self.port)
                except OSError as exc:
                    raise DriverError(f"SNMP agent {self.where}: cannot resolve {self.host!r} ({exc})") from None
            return endpoint

    def _community(self, write: bool) -> bytes:
        cfg = self.config
        text = cfg.community if write else (cfg.read_community or cfg.community)
        try:
            return text.encode("latin-1")  # as pysnmp (pyasn1's OctetString) sends it
        except UnicodeEncodeError:
            return text.encode()

    async def _ber(self, pdu: int, varbinds: list[Any], oids: list[str], what: str, write: bool) -> list[Any]:
        """One GET or SET with the built-in codec: the answer's values as (tag, value), errors as DriverError."""
        endpoint = self._endpoints.get(asyncio.get_running_loop())
        if endpoint is None or endpoint.closed:
            endpoint = await self._endpoint()
        cfg = self.config
        try:
            answer = await endpoint.request(snmp_ber.VERSIONS[cfg.version], self._communities[write], pdu, varbinds,
                                            cfg.timeout, cfg.retries)
        except snmp_ber.SnmpTimeout:
            raise DriverError(self._timeout_message()) from None
        except (OSError, snmp_ber.BerError) as exc:
            raise DriverError(f"SNMP request to {self.where} failed: {exc}") from None
        if answer.error_status:
            raise self._status(snmp_ber.error_name(answer.error_status), answer.error_index, oids, what, write=write)
        if len(answer.varbinds) != len(oids):
            raise DriverError(f"SNMP agent {self.where} answered {len(answer.varbinds)} values for {len(oids)} "
                              f"({what})")
        names = [name for name, _ in answer.varbinds]
        if names != oids:  # one list compare in the usual case; a leading "." in a request OID is fine
            for oid, name in zip(oids, names, strict=True):
                if name != oid.lstrip("."):
                    raise DriverError(f"SNMP agent {self.where} answered for {name} when asked for {oid} ({what})")
        return [value for _, value in answer.varbinds]

    # -- pysnmp objects
    def _auth_data(self, write: bool) -> Any:
        key = "write" if write else "read"
        if key in self._auth:
            return self._auth[key]
        import pysnmp.hlapi.v3arch.asyncio as api

        cfg = self.config
        if cfg.version == "3":
            auth = {
                "MD5": api.USM_AUTH_HMAC96_MD5, "SHA": api.USM_AUTH_HMAC96_SHA,
                "SHA224": api.USM_AUTH_HMAC128_SHA224, "SHA256": api.USM_AUTH_HMAC192_SHA256,
                "SHA384": api.USM_AUTH_HMAC256_SHA384, "SHA512": api.USM_AUTH_HMAC384_SHA512,
            }[cfg.auth_protocol or "SHA"] if cfg.auth_key else api.USM_AUTH_NONE
            priv = {
                "DES": api.USM_PRIV_CBC56_DES, "3DES": api.USM_PRIV_CBC168_3DES, "AES": api.USM_PRIV_CFB128_AES,
                "AES192": api.USM_PRIV_CFB192_AES, "AES256": api.USM_PRIV_CFB256_AES,
            }[cfg.priv_protocol or "AES"] if cfg.priv_key else api.USM_PRIV_NONE
            data = api.UsmUserData(cfg.username, cfg.auth_key, cfg.priv_key, authProtocol=auth, privProtocol=priv)
        else:
            community = cfg.community if write else (cfg.read_community or cfg.community)
            data = api.CommunityData(community, mpModel=0 if cfg.version == "1" else 1)
        self._auth[key] = data
        return data

    async def _transport(self) -> Any:
        if self._target is None:
            import pysnmp.hlapi.v3arch.asyncio as api

            cls = api.Udp6TransportTarget if _is_ipv6(self.host) else api.UdpTransportTarget
            try:
                self._target = await cls.create(
                    (self.host, self.port), timeout=self.config.timeout, retries=self.config.retries
                )
            except Exception as exc:  # noqa: BLE001 - pysnmp wraps resolver errors in PySnmpError
                raise DriverError(f"SNMP agent {self.where}: cannot resolve {self.host!r} ({exc})") from None
        return self._target

    @property
    def _budget(self) -> float:
        """Longest a request may take before pysnmp itself gives up, plus a margin."""
        return self.config.timeout * (self.config.retries + 1) + 2.0

    def _timeout_message(self) -> str:
        who = "wrong credentials" if self.config.version == "3" else "wrong community"
        tries = self.config.retries + 1
        return (
            f"SNMP agent {self.where} did not answer ({who} or host down; "
            f"waited {self.config.timeout:g} s x {tries} tr{'y' if tries == 1 else 'ies'})"
        )

    def _indication(self, indication: Any) -> DriverError:
        kind = type(indication).__name__
        user = self.config.username
        text = {
            "RequestTimedOut": self._timeout_message(),
            "UnknownUserName": f"SNMP agent {self.where} does not know the SNMPv3 user {user!r}",
            "WrongDigest": f"SNMP agent {self.where} rejected the SNMPv3 authentication (wrong auth_key "
            "or auth_protocol)",
            "DecryptionError": f"SNMP agent {self.where}: SNMPv3 decryption failed (wrong priv_key or priv_protocol)",
            "UnsupportedSecurityLevel": f"SNMP agent {self.where} does not allow this SNMPv3 security level for "
            f"user {user!r} (check auth_key/priv_key)",
            "NotInTimeWindow": f"SNMP agent {self.where}: SNMPv3 time window mismatch (the agent rebooted?)",
        }.get(kind)
        if text is None:
            detail = str(indication)
            if "Ciphering services not available" in detail:
                text = "SNMPv3 privacy needs the Python package 'cryptography', which is not installed"
            else:
                text = f"SNMP request to {self.where} failed: {detail}"
        return DriverError(text)

    def _status(self, status: Any, index: Any, oids: list[str], what: str, write: bool) -> DriverError:
        name = status.prettyPrint() if hasattr(status, "prettyPrint") else str(status)
        position: int | None
        try:
            position = int(index) - 1
            oid = oids[position] if position >= 0 else oids[0]
        except (ValueError, IndexError, TypeError):
            position, oid = None, oids[0]
        hint = (WRITE_HINTS if write else READ_HINTS).get(name)
        blamed = None if position is None or position < 0 or name in REQUEST_ERRORS else position
        return SnmpStatusError(
            f"SNMP agent {self.where} refused {what} ({oid}): {name}" + (f" ({hint})" if hint else ""), blamed
        )

    @staticmethod
    def _missing(value: Any) -> str | None:
        from pysnmp.hlapi.v3arch.asyncio import EndOfMibView, NoSuchInstance, NoSuchObject

        for cls, name in ((NoSuchInstance, "noSuchInstance"), (NoSuchObject, "noSuchObject"),
                          (EndOfMibView, "endOfMibView")):
            if isinstance(value, cls):
                return name
        return None

    async def _run(self, coro: Any, pages: bool = False) -> Any:
        """Await a pysnmp call with a safety net (pysnmp has its own per-request timeout)."""
        try:
            return await asyncio.wait_for(coro, self._budget * (4 if pages else 1))
        except TimeoutError:
            raise DriverError(self._timeout_message()) from None
        except DriverError:
            raise
        except Exception as exc:  # noqa: BLE001 - pysnmp raises PySnmpError/PyAsn1Error for odd input
            raise DriverError(f"SNMP request to {self.where} failed: {type(exc).__name__}: {exc}") from None

    # -- operations
    async def get(self, oids: list[str], what: str) -> list[Any]:
        """GET ``oids`` in one request and return their values; a missing one is a DriverError.

        With the built-in codec the values are plain Python (int, bytes, str); with pysnmp, pysnmp's types."""
        if self.fast:
            answer = await self._ber(snmp_ber.GET, [(o, None) for o in oids], oids, f"to read {what}", write=False)
            for oid, (tag, _) in zip(oids, answer, strict=True):
                if tag in snmp_ber.EXCEPTIONS:
                    raise DriverError(f"SNMP agent {self.where} has nothing at {oid} ({snmp_ber.EXCEPTIONS[tag]}) "
                                      f"for {what}: wrong PDU model or no such outlet?")
            return [value for _, value in answer]
        import pysnmp.hlapi.v3arch.asyncio as api

        target = await self._transport()
        engine = _engine(id(self))
        varbinds = [self._varbind(oid) for oid in oids]
        context = api.ContextData(contextName=self.config.context)
        ei, es, ix, vbs = await self._run(
            api.get_cmd(engine, self._auth_data(False), target, context, *varbinds, lookupMib=False)
        )
        if ei:
            raise self._indication(ei)
        if es:
            raise self._status(es, ix, oids, f"to read {what}", write=False)
        if len(vbs) != len(oids):
            raise DriverError(f"SNMP agent {self.where} answered {len(vbs)} values for {len(oids)} ({what})")
        values = []
        for oid, (_, value) in zip(oids, vbs, strict=True):
            missing = self._missing(value)
            if missing:
                raise DriverError(f"SNMP agent {self.where} has nothing at {oid} ({missing}) for {what}: "
                                  "wrong PDU model or no such outlet?")
            values.append(value)
        return values

    async def set_int(self, oid: str, value: int, what: str) -> None:
        await self.set_ints([(oid, value)], f"the write of {value} for {what}")

    async def set_ints(self, writes: list[tuple[str, int]], what: str) -> None:
        """SET integers in one request (the agent applies all or none)."""
        if self.fast:
            varbinds = [(oid, (snmp_ber.INTEGER, value)) for oid, value in writes]
            await self._ber(snmp_ber.SET, varbinds, [oid for oid, _ in writes], what, write=True)
            return
        import pysnmp.hlapi.v3arch.asyncio as api

        target = await self._transport()
        engine = _engine(id(self))
        context = api.ContextData(contextName=self.config.context)
        varbinds = [self._varbind(oid, value) for oid, value in writes]
        ei, es, ix, _ = await self._run(
            api.set_cmd(engine, self._auth_data(True), target, context, *varbinds, lookupMib=False)
        )
        if ei:
            raise self._indication(ei)
        if es:
            raise self._status(es, ix, [oid for oid, _ in writes], what, write=True)

    def _varbind(self, oid: str, value: int | None = None) -> Any:
        """A request var-bind, resolved once and reused: pysnmp resolves every new one against
        its MIB view, which is a fifth of the cost of a GET."""
        key = (oid, value)
        varbind = self._varbinds.get(key)
        if varbind is None:
            import pysnmp.hlapi.v3arch.asyncio as api

            if len(self._varbinds) > 4096:
                self._varbinds.clear()
            args = (api.ObjectIdentity(oid),) if value is None else (api.ObjectIdentity(oid), api.Integer32(value))
            varbind = self._varbinds[key] = api.ObjectType(*args)
        return varbind

    async def walk(self, column: str, what: str) -> list[tuple[str, Any]]:
        """Rows of one column as (index suffix, value), in agent order; GETBULK with v2c and v3."""
        import pysnmp.hlapi.v3arch.asyncio as api

        target = await self._transport()
        engine = _engine(id(self))
        context = api.ContextData(contextName=self.config.context)
        start = api.ObjectType(api.ObjectIdentity(column))
        auth = self._auth_data(False)
        if self.config.version == "1":
            rows = api.walk_cmd(engine, auth, target, context, start, lexicographicMode=False, lookupMib=False)
        else:
            rows = api.bulk_walk_cmd(
                engine, auth, target, context, 0, 25, start, lexicographicMode=False, lookupMib=False
            )

        async def collect() -> list[tuple[str, Any]]:
            found: list[tuple[str, Any]] = []
            prefix = column + "."
            async for ei, es, ix, vbs in rows:
                if ei:
                    raise self._indication(ei)
                if es:
                    raise self._status(es, ix, [column], f"to list {what}", write=False)
                for name, value in vbs:
                    oid = str(name)
                    if not oid.startswith(prefix) or self._missing(value):
                        continue
                    found.append((oid[len(prefix):], value))
                    if len(found) > MAX_OUTLETS:
                        raise DriverError(f"SNMP agent {self.where} lists more than {MAX_OUTLETS} {what}")
            return found

        try:
            return await self._run(collect(), pages=True)
        finally:
            await rows.aclose()

    def close(self) -> None:
        _release(id(self))
        for endpoint in self._endpoints.values():
            endpoint.close()
        self._endpoints.clear()
        self._opening.clear()


# --------------------------------------------------------------------------- base driver


def as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(_text(value))
        except ValueError:
            return None


class SnmpPDU(BatchFallback):
    """An SNMP PDU described by a table. Subclasses set the class attributes below.

    Column and OID templates may use ``{field}`` placeholders filled from the config (e.g. a unit).
    """

    name: ClassVar[str]
    model: ClassVar[str]  # for messages, e.g. "APC MasterSwitch (sPDU)"
    config_model: ClassVar[type[SnmpConfig]] = SnmpConfig
    labels: ClassVar[str | None] = None  # column of outlet names
    count: ClassVar[str | None] = None  # scalar: number of outlets (used when the names are missing)
    status: ClassVar[str]  # column read for the state
    states: ClassVar[dict[int, PortState]]  # status value -> state; other values read UNKNOWN
    commands: ClassVar[dict[PortState, tuple[str, int]]]  # state -> (column, value) to write

    def __init__(self, config: SnmpConfig) -> None:
        self.config = config
        self.client = SnmpClient(config)
        self.hostname = self.client.where
        self._params = config.model_dump()
        # Filled on first use: a batch names the same outlets and columns cycle after cycle.
        self._oids: dict[str, str] = {}
        self._indexes: dict[str, str] = {}
        self._outlet_oids: dict[tuple[str, str], str] = {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SnmpPDU":
        cfg = parse_config(cls.config_model, config, cls.name)
        assert isinstance(cfg, SnmpConfig)
        return cls(cfg)

    def oid(self, template: str) -> str:
        oid = self._oids.get(template)
        if oid is None:
            oid = self._oids[template] = template.format(**self._params)
        return oid

    def _index(self, port_id: str) -> str:
        index = self._indexes.get(port_id) if type(port_id) is str else None
        if index is not None:
            return index
        text = str(port_id).strip()
        if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
            raise DriverError(f"{self.model} PDU at {self.hostname} has no outlet {port_id!r}: outlets are 1..N")
        index = str(int(text))
        if type(port_id) is str:
            if len(self._indexes) >= 4 * MAX_OUTLETS:
                self._indexes.clear()
            self._indexes[port_id] = index
        return index

    def _outlet_oid(self, column: str, index: str) -> str:
        """The OID of one outlet in a column template (``index`` from :meth:`_index`)."""
        key = (column, index)
        oid = self._outlet_oids.get(key)
        if oid is None:
            if len(self._outlet_oids) >= 4 * MAX_OUTLETS:
                self._outlet_oids.clear()
            oid = self._outlet_oids[key] = f"{self.oid(column)}.{index}"
        return oid

    async def ports(self) -> list[Outlet]:
        outlets: list[Outlet] = []
        if self.labels:
            rows = await self.client.walk(self.oid(self.labels), "outlet names")
            outlets = [Outlet(suffix, _text(value)) for suffix, value in rows if suffix.isdigit()]
        if not outlets and self.count:
            (value,) = await self.client.get([self.oid(self.count)], "outlet count")
            number = as_int(value)
            if number is None or not 0 <= number <= MAX_OUTLETS:
                raise DriverError(f"SNMP agent {self.hostname} gave an odd outlet count {value!r}")
            outlets = [Outlet(str(i), "") for i in range(1, number + 1)]
        if not outlets:
            raise DriverError(
                f"SNMP agent {self.hostname} lists no outlets: is it a {self.model} PDU, "
                "and may this community or user read it?"
            )
        return outlets

    def decode(self, value: Any) -> PortState:
        if type(value) is int:  # what the built-in codec gives for an INTEGER
            return self.states.get(value, PortState.UNKNOWN)
        number = as_int(value)
        if number is None:
            raise DriverError(
                f"SNMP agent {self.hostname} answered {_text(value)!r} where an outlet state was expected: "
                f"is it a {self.model} PDU?"
            )
        return self.states.get(number, PortState.UNKNOWN)

    async def get(self, port_id: str) -> PortState:
        index = self._index(port_id)
        (value,) = await self.client.get([self._outlet_oid(self.status, index)], f"the state of outlet {index}")
        return self.decode(value)

    async def set(self, port_id: str, state: PortState) -> None:
        index = self._index(port_id)
        if state not in (PortState.ON, PortState.OFF, PortState.REBOOT):
            raise DriverError(f"cannot set outlet {index} to {state.value}: use ON, OFF or REBOOT")
        if state == PortState.REBOOT and PortState.REBOOT not in self.commands:
            await self.set(port_id, PortState.OFF)
            await asyncio.sleep(REBOOT_PAUSE)
            await self.set(port_id, PortState.ON)
            return
        column, value = self.commands[state]
        await self.client.set_int(self._outlet_oid(column, index), value, f"outlet {index} {state.value}")

    # Optional batch operations: one request for many outlets (PowerService may use them when present).
    async def get_many(self, port_ids: list[str]) -> dict[str, PortState]:
        """The states of several outlets, MAX_VARBINDS per GET."""
        indexes = [self._index(p) for p in port_ids]
        status = self.status
        states: dict[str, PortState] = {}
        for start in range(0, len(indexes), MAX_VARBINDS):
            chunk = indexes[start:start + MAX_VARBINDS]
            values = await self.client.get([self._outlet_oid(status, i) for i in chunk],
                                           f"the state of outlets {','.join(chunk)}")
            states.update(zip(chunk, map(self.decode, values), strict=True))
        return {p: states[i] for p, i in zip(port_ids, indexes, strict=True)}

    async def set_many(self, states: dict[str, PortState]) -> None:
        """Switch several outlets, MAX_VARBINDS per SET (a REBOOT without a device command goes alone).

        The agent applies each SET whole or not at all. When it blames one var-bind, OutletError
        names that outlet and the outlets of the SETs before (``applied``); the rest were not sent.
        """
        ports: list[str] = []
        writes: list[tuple[str, int]] = []  # (oid, value), one per port in ``ports``
        alone: list[tuple[str, PortState]] = []
        last: Any = None  # the state of the outlet before, and its command: a batch mostly asks one state
        command: tuple[str, int] | None = None
        for port_id, state in states.items():
            if state is not last:
                last = state
                command = self.commands.get(state)
                if command is None and state != PortState.REBOOT:
                    raise DriverError(f"cannot set outlet {port_id} to {state.value}: use ON, OFF or REBOOT")
            if command is None:  # a REBOOT without a device command
                alone.append((port_id, state))
                continue
            ports.append(port_id)
            writes.append((self._outlet_oid(command[0], self._index(port_id)), command[1]))
        applied: list[str] = []
        for start in range(0, len(writes), MAX_VARBINDS):
            chunk = writes[start:start + MAX_VARBINDS]
            chunk_ports = ports[start:start + MAX_VARBINDS]
            if len(chunk) == 1:
                port_id = chunk_ports[0]
                what = f"the write of {chunk[0][1]} for outlet {self._index(port_id)} {states[port_id].value}"
            else:
                what = f"the write for {len(chunk)} outlets"
            try:
                await self.client.set_ints(chunk, what)
            except SnmpStatusError as exc:
                if exc.varbind is None or exc.varbind >= len(chunk):
                    raise
                raise OutletError(chunk_ports[exc.varbind], str(exc), applied) from None
            applied += chunk_ports
        for port_id, state in alone:
            await self.set(port_id, state)

    async def close(self) -> None:
        self.client.close()


def same_column(column: str, on: int, off: int, reboot: int | None = None) -> dict[PortState, tuple[str, int]]:
    """Commands that all write one control column."""
    table = {PortState.ON: (column, on), PortState.OFF: (column, off)}
    if reboot is not None:
        table[PortState.REBOOT] = (column, reboot)
    return table


# --------------------------------------------------------------------------- generic "snmp" driver

STATE_NAMES = {"on": PortState.ON, "off": PortState.OFF, "reboot": PortState.REBOOT, "unknown": PortState.UNKNOWN}


class GenericSnmpConfig(SnmpConfig):
    outlet_labels: str = Field(description="OID of the column of outlet names (walked)")
    outlet_status: str = Field(description="OID of the column read for an outlet's state")
    outlet_ctrl: str | None = Field(default=None, description="OID of the column written (default outlet_status)")
    outlet_count: str | None = Field(default=None, description="OID of the outlet count, if names are missing")
    system_id: str | None = Field(default=None, description="if set, the OIDs are relative to 1.3.6.1.4.1.<id>")
    state_mapping: dict[str, int] = Field(description="values written: {on, off[, reboot]}")
    inverse_state_mapping: dict[str, str] | None = Field(
        default=None, description="status value -> on|off|reboot|unknown (default: state_mapping reversed)"
    )

    @field_validator("outlet_labels", "outlet_status", "outlet_ctrl", "outlet_count", "system_id")
    @classmethod
    def _oid(cls, value: str | None) -> str | None:
        return None if value is None else normalize_oid(value)

    @field_validator("state_mapping", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, number in value.items():
            name = str(key).strip().lower()
            if name not in ("on", "off", "reboot"):
                raise ValueError(f"unknown state {key!r}: the keys are on, off and reboot")
            if isinstance(number, bool) or as_int(number) is None:
                raise ValueError(f"the value for {key!r} must be an integer, not {number!r}")
            out[name] = int(number)
        missing = {"on", "off"} - set(out)
        if missing:
            raise ValueError(f"needs {' and '.join(sorted(missing))}")
        if out["on"] == out["off"]:
            raise ValueError("on and off must be different values")
        return out

    @field_validator("inverse_state_mapping", mode="before")
    @classmethod
    def _inverse(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, str] = {}
        for key, state in value.items():
            if isinstance(key, bool) or as_int(key) is None:
                raise ValueError(f"the keys are status values (integers), not {key!r}")
            name = str(state).strip().lower()
            if name not in STATE_NAMES:
                raise ValueError(f"{state!r} is not on, off, reboot or unknown")
            out[str(int(key))] = name
        if "on" not in out.values() or "off" not in out.values():
            raise ValueError("needs at least one value that reads on and one that reads off")
        return out

    def full(self, oid: str | None) -> str | None:
        if oid is None or self.system_id is None:
            return oid
        return f"{ENTERPRISES}.{self.system_id}.{oid}"


class GenericSnmpPDU(SnmpPDU):
    """Any SNMP PDU, described entirely by its config (valve-infra's ``snmp`` key, done right)."""

    name: ClassVar[str] = "snmp"
    model: ClassVar[str] = "configured SNMP"
    config_model: ClassVar[type[SnmpConfig]] = GenericSnmpConfig

    def __init__(self, config: SnmpConfig) -> None:
        assert isinstance(config, GenericSnmpConfig)
        super().__init__(config)
        self.labels = config.full(config.outlet_labels)
        self.count = config.full(config.outlet_count)
        self.status = config.full(config.outlet_status) or ""
        ctrl = config.full(config.outlet_ctrl) or self.status
        self.commands = {STATE_NAMES[k]: (ctrl, v) for k, v in config.state_mapping.items()}
        if config.inverse_state_mapping is not None:
            self.states = {int(k): STATE_NAMES[v] for k, v in config.inverse_state_mapping.items()}
        else:
            self.states = {v: STATE_NAMES[k] for k, v in config.state_mapping.items()}

    def oid(self, template: str) -> str:
        return template  # configured OIDs are literal

