"""The API bodies of GitLab instances (create, update) and their schema rules."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from ..rules import HTTP_URL_SCHEMA, RUNNER_TAGS_SCHEMA, http_url, runner_tags

if TYPE_CHECKING:
    from pydantic.config import JsonDict


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The same rules for the OpenAPI schema, so that what the schema allows is what the validators take
# (schemathesis checks both ways).
NAME_SCHEMA: JsonDict = {"pattern": NAME.pattern}


def _not_null(extra: JsonDict) -> Callable[[dict[str, Any]], None]:
    """A field's schema without its null branch, plus ``extra``: a PATCH may leave it out, not send null
    (update_instance refuses null for it)."""

    def edit(schema: dict[str, Any]) -> None:
        schema.pop("default", None)  # (None: left out)
        branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
        for branch in branches:
            schema.update(branch)
        schema.update(extra)

    return edit


# ---------------------------------------------------------------------------------------- API bodies
class GitlabInstanceCreate(BaseModel):
    # a token or a registration token (add_instance refuses neither), as the schema says
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["token"], "properties": {"token": {"minLength": 1}}},
        {"required": ["registration_token"], "properties": {"registration_token": {"type": "string", "minLength": 1}}},
    ]})

    name: str = Field(json_schema_extra=NAME_SCHEMA)
    url: str = Field(json_schema_extra=HTTP_URL_SCHEMA)
    token: str = Field(default="", max_length=1024)
    registration_token: Optional[str] = Field(default=None, max_length=1024)
    farm_name: Optional[str] = Field(default=None, json_schema_extra=NAME_SCHEMA)  # default: the farm's name
    expose_runners: StrictBool = True
    farm_tags: list[str] = Field(default_factory=list, max_length=64, json_schema_extra=RUNNER_TAGS_SCHEMA)

    @field_validator("name", "farm_name")
    @classmethod
    def _name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not NAME.fullmatch(v):
            raise ValueError(f"{v[:40]!r} is not a name (1-64 letters, digits, '.', '_' or '-')")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return http_url(v)

    @field_validator("farm_tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return runner_tags(v)


class GitlabInstanceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Optional[str] = Field(default=None, json_schema_extra=_not_null(HTTP_URL_SCHEMA))
    token: Optional[str] = Field(default=None, max_length=1024, json_schema_extra=_not_null({}))
    registration_token: Optional[str] = Field(default=None, max_length=1024)
    farm_name: Optional[str] = Field(default=None, json_schema_extra=_not_null(NAME_SCHEMA))
    expose_runners: Optional[StrictBool] = Field(default=None, json_schema_extra=_not_null({}))
    farm_tags: Optional[list[str]] = Field(default=None, max_length=64, json_schema_extra=_not_null(RUNNER_TAGS_SCHEMA))

    @field_validator("farm_name")
    @classmethod
    def _name(cls, v: Optional[str]) -> Optional[str]:
        return GitlabInstanceCreate._name(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else http_url(v)

    @field_validator("farm_tags")
    @classmethod
    def _tags(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        return None if v is None else runner_tags(v)
