"""FarmScreen: the frame every top-level screen shares (top bar, lost-backend banner, footer).

A FarmScreen registers itself with the app while mounted; the app then hands it every batch of
changes (``farm_changes``) and every full refetch (``farm_reset``) under ``App.batch_update()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from ..widgets.banner import Banner, TopBar
from .model import Changes, FarmModel

if TYPE_CHECKING:
    from ..app import ConsoleApp


class FarmScreen(Screen[None]):
    MODE = ""

    @property
    def console_app(self) -> "ConsoleApp":
        return cast("ConsoleApp", self.app)

    @property
    def model(self) -> FarmModel:
        return self.console_app.model

    def compose(self) -> ComposeResult:
        yield TopBar(self.MODE)
        yield Banner()
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.console_app.register_view(self)
        if self.model.loaded:
            self.farm_reset(self.model)

    def on_unmount(self) -> None:
        self.console_app.unregister_view(self)

    # ---------------------------------------------------------------- hooks
    def farm_reset(self, model: FarmModel) -> None:
        """Everything was (re)fetched: bring the screen in line with ``model``, in place."""

    def farm_changes(self, changes: Changes, model: FarmModel) -> None:
        """A batch of events was applied to ``model``."""

    # ---------------------------------------------------------------- helpers
    def run_action_worker(self, coro: Any, *, group: str, description: str = "") -> None:
        """Run an API call as a worker that never takes the app down."""
        self.run_worker(coro, group=group, exit_on_error=False, description=description)
