"""An SNMP PDU's configuration (``SnmpConfig``: host, version 1/2c/3 and credentials, engine) and its checks."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..base import DriverConfig

ENTERPRISES = "1.3.6.1.4.1"
MAX_OUTLETS = 1024
OID_RE = re.compile(r"^\.?\d+(\.\d+)*$")

AUTH_PROTOCOLS = ("MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
PRIV_PROTOCOLS = ("DES", "3DES", "AES", "AES192", "AES256")


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


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False
