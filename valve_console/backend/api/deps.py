"""What routes share: the farm (a FastAPI dependency), the operator check, MACs from paths, the
registration rate limit, and how values from the network are logged."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Optional, cast

from fastapi import Depends, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..auth import token_matches
from ..errors import BadRequest
from ..registration import SourceRateLimit, is_loopback, normalise_mac, peer_address

if TYPE_CHECKING:
    from ..farm import Farm

TOKEN_NEEDED = (
    "operator token required: send 'Authorization: Bearer <token>' (the token is in <data>/token), "
    "or call from a trusted network (the setting trusted_networks)"
)


def get_farm(request: Request) -> "Farm":
    """The farm whose API this is (``create_app`` puts it in ``app.state.farm``)."""
    return cast("Farm", request.app.state.farm)


if TYPE_CHECKING:
    FarmDep = Farm
else:
    FarmDep = Annotated[Any, Depends(get_farm)]


def is_operator(request: Request) -> bool:
    """The unix socket, a trusted source network (trust.py) or the operator token."""
    if request.scope.get("valve_trusted"):
        return True
    farm = get_farm(request)
    if farm.trust.is_trusted(request.client.host if request.client else None):
        return True
    return token_matches(farm.token, request.headers.get("authorization"))


def operator(request: Request) -> None:
    if not is_operator(request):
        raise StarletteHTTPException(401, TOKEN_NEEDED, headers={"WWW-Authenticate": "Bearer"})


OPERATOR = [Depends(operator)]
# Reads that carry secrets (console output and logs hold job share URLs with their keys, job texts,
# what the operator typed) need the operator as writes do. What DUTs and valve-infra's dashboard
# read stays open: machines, PDUs, boot scripts and files, a DUT's own share with its key, health.
SECRET_READ = OPERATOR


def mac_of(mac: str) -> str:
    try:
        return normalise_mac(mac)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def registration_limit(farm: "Farm") -> SourceRateLimit:
    """The per-source token bucket of open registration (one per app, kept in ``app.state``)."""
    return SourceRateLimit(farm.settings.registration_rate_per_minute, farm.settings.registration_burst)


def registering_source(request: Request) -> Optional[str]:
    """The DUT's address, or None when the gateway itself registers: loopback (its own programs:
    Vivian, QEMU DUTs on user networking, the operator's tools), a trusted network, the token."""
    host = request.client.host if request.client else None
    if is_loopback(host) or is_operator(request):
        return None
    return peer_address(host) or str(host)


def registration_rate(request: Request) -> Optional[str]:
    """Open registration is limited per source address (a token bucket; the gateway is not)."""
    source = registering_source(request)
    if source is not None:
        registrations: SourceRateLimit = request.app.state.registrations
        wait = registrations.take(source)
        if wait > 0:
            raise StarletteHTTPException(
                429, registrations.refusal(source, wait), headers={"Retry-After": str(math.ceil(wait))}
            )
    return source


def loggable(value: Optional[str]) -> str:
    """A value from the network as it may be logged: control characters (C0, DEL, C1), line and
    paragraph separators and format characters (bidi overrides) escaped as ``\\xNN``/``\\uNNNN``."""
    if value is None:
        return "None"
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                   for c in value)
