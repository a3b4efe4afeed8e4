"""FarmScreen: the frame every top-level screen shares (top bar, lost-backend banner, footer).

A FarmScreen registers itself with the app while mounted; the app then hands it every batch of
changes (``farm_changes``) and every full refetch (``farm_reset``) under ``App.batch_update()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen

from ..console_data import Changes, FarmModel
from ..widgets.banner import Banner, StatusLine, TopBar
from ..widgets.keybar import KeyBar

if TYPE_CHECKING:
    from ..app import ConsoleApp


class FarmScreen(Screen[None]):
    MODE = ""
    _style_token: object = None

    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        """Restyle on resume only when something styles depend on changed while suspended.

        Textual restyles every node of a resumed screen, and a restyled DataTable throws away
        all its rendered cells: that was most of a screen switch's cost (keypress → repaint).
        Runs before ``Screen._on_screen_resume``, which reads ``refresh_styles``.
        """
        app = self.app
        token = (app.theme, frozenset(app.classes), app.size, app.app_focus, app.ansi_color)
        if token == self._style_token:
            event.refresh_styles = False
        self._style_token = token

    @property
    def console_app(self) -> "ConsoleApp":
        return cast("ConsoleApp", self.app)

    @property
    def model(self) -> FarmModel:
        return self.console_app.model

    def compose(self) -> ComposeResult:
        with Vertical(classes="frame-top"):
            yield TopBar(self.MODE)
            yield Banner()
        with Vertical(classes="frame-bottom"):
            yield StatusLine()
            yield KeyBar()
        yield from self.compose_body()

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
