"""``serve --fleet FILE`` in headless Chromium: each tab runs the fleet console; its Fleet screen lists the
gateways (one up, one that nobody answers, said on its row) and enter shows the farm's screens."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.helpers import free_port

from .conftest import PASSWORD, serving
from .test_browser import CATCH_XTERM, browser, log_in, screen_with  # noqa: F401 - browser: a fixture


async def test_serve_fleet_shows_the_fleet_screen(vivian, farm, tmp_path: Path, browser) -> None:  # noqa: F811
    fleet = tmp_path / "fleet.toml"
    (tmp_path / "rack1.token").write_text(farm.token + "\n")
    fleet.write_text(f'name = "lab"\n[[gateway]]\nname = "rack1"\nurl = "http://{farm.api_address[0]}:'
                     f'{farm.api_address[1]}"\ntoken_file = "rack1.token"\n'
                     f'[[gateway]]\nname = "rack2"\nurl = "http://127.0.0.1:{free_port()}"\n')
    async with serving(farm, tmp_path, "--fleet", str(fleet)) as web:
        context = await browser.new_context(viewport={"width": 1400, "height": 800})
        page = await context.new_page()
        await page.add_init_script(CATCH_XTERM)
        await page.goto(web.url + "/")
        await log_in(page, web, PASSWORD)
        await screen_with(page, "fleet lab", "0 Fleet", "rack1", "rack2", "1 of 2 gateways up", "unreachable")
        await page.focus("textarea.xterm-helper-textarea")
        await page.keyboard.press("Enter")  # the cursor is on rack1
        await screen_with(page, "gateway rack1", "farm test", "Backend services")  # its Overview
        await page.keyboard.press("3")
        await screen_with(page, "vpdu1", "16 outlets")
        await context.close()
