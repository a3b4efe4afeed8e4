"""The Consoles screen's wrap key (issue 19, item 4): shown in the key bar, remembered per console."""

from __future__ import annotations

from valve_console.screens.consoles import ConsolesScreen

from .helpers import screen_text, wait_for
from .test_snapshots import fake_app, settle

MAC = "52:54:00:11:22:03"


async def test_w_is_in_the_key_bar_and_each_console_keeps_its_own_choice() -> None:
    app = fake_app()
    async with app.run_test(size=(140, 45)) as pilot:
        await settle(pilot)
        app.open_console(MAC)
        await wait_for(pilot, lambda: isinstance(app.screen, ConsolesScreen) and app.screen.current_mac() == MAC,
                       5, "the console tab")
        screen = app.screen
        assert isinstance(screen, ConsolesScreen)
        view = screen.views[MAC]
        await wait_for(pilot, lambda: "MaRS: Registration complete" in view.plain_lines(), 5, "the boot log")
        await wait_for(pilot, lambda: app.focused is view, 5, "the console focused")
        keybar = screen_text(app).splitlines()[-1]
        assert " w Wrap" in keybar, keybar
        await pilot.press("w")
        assert view.wrap
        await pilot.press("right_square_bracket")  # the next console
        await wait_for(pilot, lambda: screen.current_mac() not in (None, MAC), 5, "another tab")
        other = screen.views[screen.current_mac() or ""]
        assert not other.wrap  # each console its own
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: screen.current_mac() == MAC, 5, "back to the first tab")
        assert view.wrap
        screen._console_removed(MAC, keep_tab=False)  # the console goes; its choice stays for its next tab
        await pilot.pause()
        screen._ensure_tab(MAC, app.model)
        assert screen.views[MAC] is not view and screen.views[MAC].wrap
