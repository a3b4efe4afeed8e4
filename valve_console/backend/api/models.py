"""Request bodies of the API and the error answer every route documents (``ERRORS``)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field
from ..rules import MAC_PATTERN as MAC_PATTERN  # a MAC as normalise_mac() takes it, for the schema


class ErrorBody(BaseModel):
    error: str


class PduCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    driver: Optional[str] = None
    pdu_model: Optional[str] = None
    config: dict[str, Any] = Field(default_factory=dict)
    reserved_ports: list[str | int] = Field(default_factory=list, max_length=2048)


class DiscoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pdu: str = Field(min_length=1, max_length=64)
    port_id: str | int
    timeout: Optional[float] = Field(default=None, ge=1, le=3600)


class FindOutlets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: Optional[float] = Field(default=None, ge=1, le=3600)


class OutletCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["on", "off", "reboot", "ON", "OFF", "REBOOT"]


class ConsoleInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(max_length=65536)
    writer: Optional[str] = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[!-~]+$",
        description="who types (e.g. a TUI's client id); without it: the anonymous API writer",
    )
    takeover: bool = Field(default=False, description="take write access over from the current writer")


class JobInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(max_length=65536, description="keystrokes for the DUT (UTF-8; \\x03 is Ctrl-C)")


JOB_SUBMIT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["job"],
                    "properties": {
                        "job": {"type": "string", "description": "the job (YAML, a Jinja2 template)"},
                        "target": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "tags": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "job_id": {"type": "string"},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "metadata": {"type": "string"},
                        "job": {"type": "string"},
                        "job_bucket_initial_state_tarball_file": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


class ConsoleDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Optional[str] = Field(
        max_length=255, description="a serial device identity (GET /api/v1/consoles → devices), or null"
    )


class ConsoleSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Optional[str] = Field(max_length=300, description="tcp://HOST:PORT or rfc2217://HOST:PORT[?baud=N], or null")




class ConsoleBind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mac: str = Field(
        min_length=1,
        max_length=64,
        description="the machine whose console the stream becomes",
        # in the schema only: mac_of() refuses other text with a clearer error than a pattern mismatch
        json_schema_extra={"pattern": MAC_PATTERN},
    )
    replace: bool = Field(default=False, description="take the console from the stream it is live on")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}
}
