"""The farm's effective settings, for the operator: what each is, where it came from, and the few that
may change while the farm runs (``GET``/``PATCH /api/v1/settings``).

Every setting of ``config.Settings`` is listed with its value (secrets masked: never sent), its source
(``default``, ``environment`` — ``VALVE_CONSOLE_<NAME>`` —, ``command line``, ``start-up`` — given by the
program that started the farm, e.g. the demo or a test — or ``data dir file``), the variable that sets it
and whether it may change at run time.

The editable ones (``EDITABLE``) are validated by config.py's own rules (the field's type and bounds and
its validators, through pydantic's ``validate_assignment`` on a copy), plus ``training_qualify <=
training_loops``; a change is all or nothing: any error and nothing is stored or applied. Accepted
values are written to ``<data>/settings.toml`` (atomically, 0600), then set on the shared ``Settings``
and handed to ``apply`` (given by the farm: it tells the services that keep their own copy), then
published as a ``settings`` event. At start the file is read before the services are built: a stored
value wins over the environment (the answer says which variable it overrides). A value of ``null``
removes the stored value: the setting goes back to what the environment or the default gave at start.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from ..config import Settings
from .boot.files import write_atomically
from .errors import BadRequest
from .events import EventBus

log = logging.getLogger(__name__)

FILE_NAME = "settings.toml"
FILE_HEADER = (
    "# valve-console settings changed at run time (PATCH /api/v1/settings, the console's Settings view).\n"
    "# A value here wins over the environment (VALVE_CONSOLE_<NAME>). Written by the farm: edit it while\n"
    "# the farm is stopped, or through the API.\n"
)
PREFIX = "VALVE_CONSOLE_"

EDITABLE: tuple[str, ...] = (
    "training_loops",
    "training_qualify",
    "default_pdu_off_delay",
    "gitlab_sync_interval",
    "gitlab_retry_max",
    "gitlab_timeout",
    "gitlab_verify_interval",
    "trusted_networks",
)
"""The settings that may change while the farm runs (each service reads them at use time, or is told)."""

SECRET_NAME = re.compile(r"token|password|passwd|secret|key|credential", re.IGNORECASE)
MASK = "********"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(?P<tail>@)")

SOURCE_DEFAULT = "default"
SOURCE_ENV = "environment"
SOURCE_CLI = "command line"
SOURCE_START = "start-up"
SOURCE_FILE = "data dir file"


class SettingsFileError(Exception):
    """``settings.toml`` cannot be read or holds a value the rules refuse (the farm does not start)."""


def variable(name: str) -> str:
    return PREFIX + name.upper()


def _env_names(name: str) -> list[str]:
    """Every environment variable that sets ``name`` (its own, and the aliases config.py accepts)."""
    names = [variable(name)]
    alias = Settings.model_fields[name].validation_alias
    for choice in getattr(alias, "choices", ()):
        if isinstance(choice, str) and choice.upper().startswith(PREFIX):
            names.append(choice.upper())
    return list(dict.fromkeys(names))


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def mask(name: str, value: Any) -> tuple[Any, bool]:
    """``(value as sent, masked?)``: a secret's value is never sent. Secrets: a setting whose name says
    token/password/secret/key, a URL's password (database_url), a mapping's entries whose key says so."""
    if value is None:
        return None, False
    if SECRET_NAME.search(name):
        return MASK, True
    if isinstance(value, str):
        masked = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"], value)
        return masked, masked != value
    if isinstance(value, dict):
        out, hidden = {}, False
        for key, item in value.items():
            sent, secret = mask(str(key), item)
            out[str(key)] = sent
            hidden = hidden or secret
        return out, hidden
    return _json_value(value), False


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


class SettingsStore:
    """The settings answer, run-time changes and ``<data>/settings.toml``."""

    def __init__(
        self,
        settings: Settings,
        bus: EventBus,
        *,
        environ: Mapping[str, str] | None = None,
        apply: Callable[[list[str]], None] = lambda names: None,
    ) -> None:
        """``apply(names)``: told which settings changed at run time, after they are stored (the farm
        passes them on to the services that keep their own copy)."""
        self.settings = settings
        self.bus = bus
        self.path = settings.data_dir / FILE_NAME
        self.environ = dict(os.environ if environ is None else environ)
        self.apply = apply
        self.stored: dict[str, Any] = {}  # what settings.toml holds (applied)
        # what the environment, the command line or the default gave at start, before the file
        self.initial: dict[str, Any] = {name: getattr(settings, name) for name in EDITABLE}
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- start
    def load(self) -> list[str]:
        """Read ``settings.toml`` and set its values on the settings (before the services are built).
        Returns what was ignored, in words (names that are not editable); SettingsFileError if the file
        cannot be read or a value breaks the rules."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SettingsFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsFileError(f"{self.path} is not TOML: {exc}") from None
        notes = []
        wanted = {}
        for name, value in document.items():
            if name in EDITABLE:
                wanted[name] = value
            else:
                notes.append(f"{self.path}: {name} ignored (not a setting that may change at run time)")
        try:
            values = self.validate(wanted)
        except BadRequest as exc:
            raise SettingsFileError(f"{self.path}: {exc}") from None
        for name, value in values.items():
            setattr(self.settings, name, value)
        self.stored = values
        return notes

    # ---------------------------------------------------------------- the answer
    def source(self, name: str) -> str:
        if name in self.stored:
            return SOURCE_FILE
        given = self.settings.given_by.get(name)
        if given:
            return given
        if name in self.settings.model_fields_set:
            env = {key.upper() for key in self.environ}
            return SOURCE_ENV if any(n in env for n in _env_names(name)) else SOURCE_START
        return SOURCE_DEFAULT

    def _env_value(self, name: str) -> str | None:
        upper = {key.upper(): value for key, value in self.environ.items()}
        for env_name in _env_names(name):
            if env_name in upper:
                return f"{env_name}={upper[env_name]}"
        return None

    def describe(self) -> dict[str, Any]:
        """Every setting: name, value (secrets masked), source, variable, editable, what a stored value overrides."""
        rows = []
        for name in Settings.model_fields:
            value, secret = mask(name, getattr(self.settings, name))
            row: dict[str, Any] = {
                "name": name,
                "value": value,
                "source": self.source(name),
                "variable": variable(name),
                "editable": name in EDITABLE,
                "secret": secret,
            }
            if name in self.stored:
                env = self._env_value(name)
                initial, _ = mask(name, self.initial.get(name))
                row["overrides"] = (f"overrides the environment's {env}" if env
                                    else f"overrides the {self.source_at_start(name)} value {initial!r}")
            rows.append(row)
        return {"settings": rows, "file": str(self.path), "editable": list(EDITABLE)}

    def source_at_start(self, name: str) -> str:
        stored, self.stored = self.stored, {}
        try:
            return self.source(name)
        finally:
            self.stored = stored

    # ---------------------------------------------------------------- changes
    def refuse_name(self, name: str) -> str | None:
        """Why ``name`` cannot be changed at run time (None: it can)."""
        if name in EDITABLE:
            return None
        if name in Settings.model_fields:
            return (f"{name} cannot change while the farm runs: it is set by {variable(name)} (or the command "
                    f"line) and read at start; the settings that may change are {', '.join(EDITABLE)}")
        return (f"{name!r} is not a setting (a setting would be set by {variable(name)}); the settings that may "
                f"change at run time are {', '.join(EDITABLE)}")

    def validate(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """The values as the settings hold them, or BadRequest naming the first problem (in words).
        ``None`` means "back to the start-up value" (environment, command line or default)."""
        for name in changes:
            problem = self.refuse_name(str(name))
            if problem:
                raise BadRequest(problem)
        candidate = self.settings.model_copy(deep=True)
        validator = Settings.__pydantic_validator__
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                value = self.initial[name]
            if isinstance(value, bool):
                raise BadRequest(f"{name}: {value!r} is not a number (nor a list of networks)")
            try:
                validator.validate_assignment(candidate, name, value)
            except ValidationError as exc:
                raise BadRequest(f"{name}: {_first_error(exc)} (got {value!r})") from None
            checked = getattr(candidate, name)
            if isinstance(checked, float) and not math.isfinite(checked):
                raise BadRequest(f"{name}: {value!r} is not a finite number")
            values[name] = checked
        loops, qualify = candidate.training_loops, candidate.training_qualify
        if ("training_loops" in changes or "training_qualify" in changes) and qualify > loops:
            raise BadRequest(
                f"training_qualify ({qualify}) cannot be more than training_loops ({loops}): "
                "a machine could never qualify"
            )
        return values

    def _document(self, stored: Mapping[str, Any]) -> str:
        return FILE_HEADER + tomli_w.dumps({name: _json_value(stored[name]) for name in EDITABLE if name in stored})

    async def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate every change (all or nothing), store them, apply them live, publish; the new answer."""
        if not isinstance(changes, Mapping) or not changes:
            raise BadRequest("nothing to change: send {\"<setting>\": <value>, ...}")
        async with self._lock:
            values = self.validate(changes)
            stored = dict(self.stored)
            for name, value in values.items():
                if changes[name] is None:
                    stored.pop(name, None)
                else:
                    stored[name] = value
            try:
                await asyncio.to_thread(write_atomically, self.path, self._document(stored), 0o600)
            except OSError as exc:
                raise BadRequest(f"cannot write {self.path}: {exc.strerror or exc}; nothing changed",
                                 status=507) from None
            self.stored = stored
            for name, value in values.items():
                setattr(self.settings, name, value)
            self.apply(list(values))
            log.info("settings changed: %s", ", ".join(f"{n}={mask(n, v)[0]!r}" for n, v in values.items()))
            answer = self.describe()
            self.bus.publish("settings", answer)
            return answer
