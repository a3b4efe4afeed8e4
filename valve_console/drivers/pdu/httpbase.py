"""Shared plumbing for PDUs with an HTTP API: config, one httpx.AsyncClient per driver, errors."""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import httpx
from pydantic import Field, field_validator

from .base import BatchFallback, DriverConfig, DriverError, parse_config

REBOOT_OFF_SECONDS = 5  # how long a device-side power cycle keeps the outlet off


def base_url(hostname: str) -> str:
    """``host``, ``host:port`` or ``http(s)://host[:port]`` → a base URL; ValueError if unreadable."""
    text = hostname.strip().rstrip("/")
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"use HOST, HOST:PORT or http(s)://HOST[:PORT], not {hostname!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"the port in {hostname!r} must be a number between 1 and 65535") from None
    return url


def _reason(exc: BaseException) -> str:
    """The operating system's reason under an httpx error (e.g. "Connection refused"), if any."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    text = str(exc) or type(exc).__name__
    return "Connection refused" if "refused" in text.lower() else text


class HttpConfig(DriverConfig):
    hostname: str = Field(description="the device: HOST, HOST:PORT or http(s)://HOST[:PORT]")
    user: str | None = Field(default=None, min_length=1, description="user name, if the device asks for one")
    password: str | None = Field(default=None, description="password, if the device asks for one")
    timeout: float = Field(default=3.0, gt=0, le=60, description="seconds to wait for each answer")
    verify_tls: bool = Field(default=True, description="check the certificate of an https:// device")

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        base_url(value)
        return value.strip()


class HttpPDU(BatchFallback):
    """Base of the HTTP drivers; subclasses set ``name``, ``model`` and ``config_model``."""

    name: ClassVar[str]
    model: ClassVar[str]
    config_model: ClassVar[type[HttpConfig]] = HttpConfig

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.url = base_url(config.hostname)
        self.hostname = urlsplit(self.url).netloc
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:  # the driver class it is called on
        cfg = parse_config(cls.config_model, config, cls.name)
        assert isinstance(cfg, HttpConfig)
        return cls(cfg)

    def auth(self) -> httpx.Auth | None:
        return None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # made on first use, so a driver that is never used holds nothing
            self._client = httpx.AsyncClient(
                base_url=self.url, timeout=self.config.timeout, auth=self.auth(), verify=self.config.verify_tls,
                follow_redirects=False,
            )
        return self._client

    async def request_json(self, path: str, params: dict[str, Any] | None, what: str, missing_ok: bool = False) -> Any:
        """GET ``path`` and return its JSON; every failure becomes a DriverError naming ``what``."""
        who = f"{self.model} at {self.hostname}"
        try:
            reply = await self.client.get(path, params=params)
        except httpx.TimeoutException:
            raise DriverError(f"{who} did not answer within {self.config.timeout:g} s ({what})") from None
        except httpx.ConnectError as exc:
            raise DriverError(f"{who} is unreachable ({what}): {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise DriverError(f"{who} failed ({what}): {type(exc).__name__}: {exc}") from None
        if reply.status_code == 404 and missing_ok:
            return None
        if reply.status_code == 401:
            raise DriverError(f"{who} refused the credentials (HTTP 401, {what}): check user and password")
        try:
            body = reply.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if reply.status_code >= 400:
            detail = self.error_text(body) or reply.text.strip()[:200] or reply.reason_phrase
            raise DriverError(f"{who} answered HTTP {reply.status_code} ({what}): {detail}")
        if body is None:
            raise DriverError(f"{who} did not answer with JSON ({what}): {reply.text.strip()[:100]!r}")
        return body

    def error_text(self, body: Any) -> str | None:
        return None

    def bad_answer(self, what: str, body: Any) -> DriverError:
        return DriverError(f"{self.model} at {self.hostname} gave an unexpected answer ({what}): {str(body)[:200]}")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
