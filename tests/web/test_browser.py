"""The web console in headless Chromium (Debian's /usr/bin/chromium driven by playwright): a login is
required, the console renders and reacts to keys, a page of another origin cannot open the console's
websocket even though the browser sends it the session cookie, and a DUT's console text is drawn on the
console panel's background (not on xterm.js's black default)."""

from __future__ import annotations

from typing import AsyncIterator

import pytest
from aiohttp import web as aioweb

from .conftest import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Web, chromium_or_skip

# The terminal draws on a canvas, so its text is not in the DOM. textual-serve's page keeps the xterm.js
# Terminal in `this.terminal`; this init script catches that assignment and exposes the Terminal as
# window.__xterm, whose buffer (public xterm.js API) holds exactly what is on screen.
CATCH_XTERM = """
Object.defineProperty(Object.prototype, 'terminal', {
  configurable: true,
  set(value) {
    Object.defineProperty(this, 'terminal', {value, writable: true, configurable: true, enumerable: true});
    if (value && value.buffer && value.buffer.active && typeof value.buffer.active.getLine === 'function') {
      window.__xterm = value;
    }
  },
});
"""
SCREEN = """() => {
  const t = window.__xterm;
  if (!t) return '';
  const b = t.buffer.active, rows = [];
  for (let i = 0; i < t.rows; i++) {
    const l = b.getLine(b.viewportY + i);
    rows.push(l ? l.translateToString(true) : '');
  }
  return rows.join('\\n');
}"""
OPEN_CONSOLE_SOCKET = """(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { ws.close(); resolve('open'); };
  ws.onerror = () => resolve('refused');
})"""


@pytest.fixture
async def browser() -> AsyncIterator:
    chromium_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def screen_with(page, *texts: str) -> str:
    """Wait until every text is on the terminal's screen; return the screen."""
    condition = f"() => {{ const s = ({SCREEN})(); return {list(texts)!r}.every((t) => s.includes(t)); }}"
    try:
        await page.wait_for_function(condition, timeout=30_000)
    except Exception:  # the assertion below says what was on screen instead
        pass
    screen = await page.evaluate(SCREEN)
    assert all(t in screen for t in texts), f"{texts} not on screen:\n{screen}"
    return screen


async def log_in(page, web: Web, secret: str) -> None:
    await page.fill("#password", secret)
    await page.click("#login")
    await page.wait_for_load_state()


async def test_login_required_then_the_console_renders_and_reacts_to_keys(web: Web, browser) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.add_init_script(CATCH_XTERM)

    await page.goto(web.url + "/")
    assert page.url == web.url + "/login"  # no session: the console page is not served
    await log_in(page, web, "not the password")
    assert page.url == web.url + "/login"
    assert "Wrong password or token." in await page.inner_text("#error")
    assert await context.cookies() == []

    await log_in(page, web, PASSWORD)
    assert page.url == web.url + "/"
    (cookie,) = await context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "valve_console_session" not in await page.evaluate("document.cookie")  # scripts cannot read it

    # the TUI attached to the farm: the header names the farm, the overview sums up the backend's services
    await screen_with(page, "farm test", "1 Overview", "services ", "Attention")
    await page.focus("textarea.xterm-helper-textarea")  # keys go where xterm.js listens
    await page.keyboard.press("3")
    screen = await screen_with(page, "vpdu1", "driver vpdu", "16 outlets")
    assert "Attention" not in screen  # the PDUs screen replaced the overview
    await context.close()


async def test_a_page_of_another_origin_cannot_open_the_console(web: Web, browser, unused_tcp_port: int) -> None:
    """Same host, another port: the browser sends the SameSite=Strict cookie along (same site), and only
    the Origin check stands between that page and the console."""
    evil = aioweb.Application()
    evil.router.add_get("/", lambda _r: aioweb.Response(text="<html><body>elsewhere</body></html>",
                                                       content_type="text/html"))
    runner = aioweb.AppRunner(evil)
    await runner.setup()
    await aioweb.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(web.url + "/login")
        await log_in(page, web, web.token)  # the operator token logs in too
        assert page.url == web.url + "/"
        console_ws = web.url.replace("http:", "ws:") + "/ws?width=80&height=24"
        assert await page.evaluate(OPEN_CONSOLE_SOCKET, console_ws) == "open"  # the console's own page

        other = await context.new_page()
        await other.goto(f"http://127.0.0.1:{unused_tcp_port}/")
        assert await other.evaluate(OPEN_CONSOLE_SOCKET, console_ws) == "refused"
        await context.close()
    finally:
        await runner.cleanup()
    # refused by the Origin check (403), not for a missing session: the cookie did come along
    assert f"websocket refused: the Origin 'http://127.0.0.1:{unused_tcp_port}' is not this console" in (
        web.log.read_text()
    )


# The cell of `text` on screen and a blank cell of the same console panel on that row (after the line's text),
# their background as xterm.js holds it, and the geometry to find both on a screenshot.
CONSOLE_CELLS = """(text) => {
  const t = window.__xterm, b = t.buffer.active;
  const screen = document.querySelector('.xterm-screen').getBoundingClientRect();
  const cw = screen.width / t.cols, ch = screen.height / t.rows;
  const bg = (l, x) => {
    const c = l.getCell(x);
    return {chars: c.getChars(), isDefault: c.isBgDefault(), isRGB: c.isBgRGB(), color: c.getBgColor()};
  };
  for (let y = 0; y < t.rows; y++) {
    const l = b.getLine(b.viewportY + y), s = l.translateToString(true);
    const x = s.indexOf(text);
    if (x < 0) continue;
    const blank = s.indexOf('    ', x + text.length) + 2;
    return {text: bg(l, x), panel: bg(l, blank), x, blank, y,
            left: screen.left, top: screen.top, cw, ch, row: s};
  }
  return null;
}"""
PIXELS = """async ([png, cells]) => {
  // the colour most of each cell's pixels have (a glyph's strokes are a minority): its background
  const img = new Image();
  img.src = 'data:image/png;base64,' + png;
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  return cells.map(([x, y, w, h]) => {
    const d = g.getImageData(x, y, w, h).data, counts = new Map();
    for (let i = 0; i < d.length; i += 4) {
      const k = d[i] + ',' + d[i + 1] + ',' + d[i + 2];
      counts.set(k, (counts.get(k) || 0) + 1);
    }
    return [...counts.entries()].sort((a, b) => b[1] - a[1])[0][0];
  });
}"""


async def test_console_text_sits_on_the_console_panel_s_background(web: Web, farm, browser) -> None:
    """In xterm.js the terminal's default background is black: console lines drawn without the panel's
    own background showed as black strips across the panel. The cell behind console text must have the
    panel's colour, in xterm.js's buffer and in the pixels of a screenshot."""
    import base64

    await farm.power.set_outlet("vpdu1", "3", "on")  # a Vivian DUT boots and streams its console
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
    page = await context.new_page()
    await page.add_init_script(CATCH_XTERM)
    await page.goto(web.url + "/login")
    await log_in(page, web, PASSWORD)
    await screen_with(page, "farm test", "1 Overview")
    await page.focus("textarea.xterm-helper-textarea")
    await page.keyboard.press("5")
    marker = "SALAD.machine_id="
    await screen_with(page, marker, "read-only")
    cells = await page.evaluate(CONSOLE_CELLS, marker)
    assert cells is not None and cells["panel"]["chars"] in ("", " "), cells
    text, panel = cells["text"], cells["panel"]
    # the buffer: the same background attribute as the panel around it, not the terminal's default
    assert not text["isDefault"], cells
    assert (text["isRGB"], text["color"]) == (panel["isRGB"], panel["color"]), cells

    # the pixels: each of the text's cells has the background of a blank cell of the panel
    left, top, cw, ch = cells["left"], cells["top"], cells["cw"], cells["ch"]
    y = int(top + cells["y"] * ch)
    boxes = [[int(left + (cells["x"] + i) * cw), y, int(cw), int(ch)] for i in range(len(marker))]
    boxes.append([int(left + cells["blank"] * cw), y, int(cw), int(ch)])
    png = base64.b64encode(await page.screenshot()).decode()
    scratch = await context.new_page()
    *behind_text, panel_colour = await scratch.evaluate(PIXELS, [png, boxes])
    assert panel_colour != "0,0,0"  # the panel is not black, so a black strip would show
    wrong = [(marker[i], colour) for i, colour in enumerate(behind_text) if colour != panel_colour]
    assert not wrong, (wrong, panel_colour)
    await context.close()
