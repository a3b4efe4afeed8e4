"""Errors the API turns into ``{"error": ...}`` answers. The message is for an operator."""

from __future__ import annotations


class FarmError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)


class BadRequest(FarmError):
    status = 400


class NotFound(FarmError):
    status = 404


class Conflict(FarmError):
    status = 409
