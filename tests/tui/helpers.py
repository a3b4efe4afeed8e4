"""Helpers for the TUI tests: read the screen as text and wait for a condition (bounded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.pilot import Pilot


def screen_text(app: App[Any]) -> str:
    """The current screen as plain text, one line per terminal row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], object], timeout: float = 10.0,
                   what: str = "condition") -> None:
    """Poll ``predicate`` (letting the app run) until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - widgets may not exist yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def wait_text(pilot: Pilot[Any], text: str, timeout: float = 10.0) -> None:
    await wait_for(pilot, lambda: text in screen_text(pilot.app), timeout, f"{text!r} on screen")


async def wait_no_text(pilot: Pilot[Any], text: str, timeout: float = 10.0) -> None:
    await wait_for(pilot, lambda: text not in screen_text(pilot.app), timeout, f"{text!r} to go away")


async def until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Like wait_for, without an app (backend conditions)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
