"""SnmpClient: GET and SET of var-binds, v1/v2c through the built-in BER codec (``ber``, ``transport``) or
pysnmp, v3 through pysnmp; error statuses in words (``SnmpStatusError``, with hints)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

from ..base import DriverError
from . import ber, transport
from .config import MAX_OUTLETS, SnmpConfig, _is_ipv6
from .engine import _engine, _release

T = TypeVar("T")
MAX_VARBINDS = 16  # per request in get_many/set_many; small enough for any PDU's buffer
# Error statuses that say the request as a whole may not be made (credentials), not that one var-bind is bad.
REQUEST_ERRORS = {"noAccess", "authorizationError", "readOnly", "genErr", "tooBig"}
# The engine used for v1/v2c GET and SET when the config says engine "auto": "ber" is the codec of
# ber.py, "pysnmp" is pysnmp (tests set this to run the same agent tests on both).
DEFAULT_ENGINE: Literal["ber", "pysnmp"] = "ber"
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


class SnmpStatusError(DriverError):
    """The agent answered with an error status; ``varbind`` is the 0-based position of the var-bind
    it blames, or None when the error concerns the whole request (e.g. credentials)."""

    def __init__(self, message: str, varbind: int | None, status: str = "") -> None:
        super().__init__(message)
        self.varbind = varbind
        self.status = status  # e.g. "noSuchName"


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
        self._endpoints: dict[asyncio.AbstractEventLoop, transport.Endpoint] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._communities = {write: self._community(write) for write in (False, True)}
        engine = DEFAULT_ENGINE if config.engine == "auto" else config.engine
        self.fast = config.version != "3" and engine == "ber"

    # -- the built-in BER codec (v1/v2c GET and SET)
    async def _endpoint(self) -> transport.Endpoint:
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
                    endpoint = self._endpoints[loop] = await transport.Endpoint.open(self.host, self.port)
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
            answer = await endpoint.request(ber.VERSIONS[cfg.version], self._communities[write], pdu, varbinds,
                                            cfg.timeout, cfg.retries)
        except transport.SnmpTimeout:
            raise DriverError(self._timeout_message()) from None
        except (OSError, ber.BerError) as exc:
            raise DriverError(f"SNMP request to {self.where} failed: {exc}") from None
        if answer.error_status:
            raise self._status(ber.error_name(answer.error_status), answer.error_index, oids, what, write=write)
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
            f"SNMP agent {self.where} refused {what} ({oid}): {name}" + (f" ({hint})" if hint else ""), blamed,
            name,
        )

    @staticmethod
    def _missing(value: Any) -> str | None:
        from pysnmp.hlapi.v3arch.asyncio import EndOfMibView, NoSuchInstance, NoSuchObject

        for cls, name in ((NoSuchInstance, "noSuchInstance"), (NoSuchObject, "noSuchObject"),
                          (EndOfMibView, "endOfMibView")):
            if isinstance(value, cls):
                return name
        return None

    async def _run(self, coro: Awaitable[T], pages: bool = False) -> T:
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
        return await self._get(oids, what, optional=False)

    async def get_optional(self, oids: list[str], what: str) -> list[Any]:
        """GET ``oids`` in one request where a missing object reads None, not an error (a meter this model
        lacks). SNMPv1 refuses a whole request for one missing object (noSuchName, naming it): that one
        reads None and the others are asked again, so such a request costs one more round per missing object."""
        values: list[Any] = [None] * len(oids)
        left = list(range(len(oids)))
        while left:
            try:
                answer = await self._get([oids[i] for i in left], what, optional=True)
            except SnmpStatusError as exc:
                if exc.status != "noSuchName" or exc.varbind is None or not 0 <= exc.varbind < len(left):
                    raise
                del left[exc.varbind]
                continue
            for i, value in zip(left, answer, strict=True):
                values[i] = value
            break
        return values

    async def _get(self, oids: list[str], what: str, optional: bool) -> list[Any]:
        if self.fast:
            answer = await self._ber(ber.GET, [(o, None) for o in oids], oids, f"to read {what}", write=False)
            if optional:
                return [None if tag in ber.EXCEPTIONS else value for tag, value in answer]
            for oid, (tag, _) in zip(oids, answer, strict=True):
                if tag in ber.EXCEPTIONS:
                    raise DriverError(f"SNMP agent {self.where} has nothing at {oid} ({ber.EXCEPTIONS[tag]}) "
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
            if missing and optional:
                value = None
            elif missing:
                raise DriverError(f"SNMP agent {self.where} has nothing at {oid} ({missing}) for {what}: "
                                  "wrong PDU model or no such outlet?")
            values.append(value)
        return values

    async def set_int(self, oid: str, value: int, what: str) -> None:
        await self.set_ints([(oid, value)], f"the write of {value} for {what}")

    async def set_ints(self, writes: list[tuple[str, int]], what: str) -> None:
        """SET integers in one request (the agent applies all or none)."""
        if self.fast:
            varbinds = [(oid, (ber.INTEGER, value)) for oid, value in writes]
            await self._ber(ber.SET, varbinds, [oid for oid, _ in writes], what, write=True)
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
