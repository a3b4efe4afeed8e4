"""KeyBar: the footer, one line listing the screen's keys, always fitting the terminal's width.

Textual's ``Footer`` is one widget per key and recomposes them all whenever the screen's
bindings change, which is at every screen switch; it also cuts the last keys off when they do
not fit (at 140 columns, "q Quit" fell off with seven screens). KeyBar renders one line of
text instead: it only repaints when the keys or the width change, and when the line is too long
it shortens the descriptions (first words, then a few letters) rather than dropping keys.
"""

from __future__ import annotations

from typing import Iterable

from rich.style import Style
from rich.text import Text
from textual.screen import Screen
from textual.widget import Widget

Item = tuple[str, str, bool]  # (key as shown, description, enabled)


def fit_items(items: list[Item], width: int) -> list[tuple[str, str, bool]]:
    """The items with descriptions shortened just enough for ``width`` cells (keys never dropped)."""

    def length(entries: Iterable[tuple[str, str, bool]]) -> int:
        entries = list(entries)  # " key " then "description " per item, one space between items
        return sum(len(k) + 2 + (len(d) + 1 if d else 0) for k, d, _ in entries) + max(len(entries) - 1, 0)

    if length(items) <= width:
        return items
    items = collapse_digits(items)
    if length(items) <= width:
        return items
    first_words = [(k, d.split(" ")[0], e) for k, d, e in items]
    if length(first_words) <= width:
        return first_words
    for cut in range(max((len(d) for _, d, _ in first_words), default=0), 0, -1):
        shortened = [(k, d[:cut], e) for k, d, e in first_words]
        if length(shortened) <= width:
            return shortened
    return [(k, "", e) for k, _, e in items]


def collapse_digits(items: list[Item]) -> list[Item]:
    """Runs of screen keys ``1 Overview`` ... ``7 Jobs`` become one ``1-7 Screens`` (the top bar names them)."""
    out: list[Item] = []
    run: list[Item] = []

    def flush() -> None:
        if len(run) > 2:
            out.append((f"{run[0][0]}-{run[-1][0]}", "Screens", True))
        else:
            out.extend(run)
        run.clear()

    for item in items:
        key = item[0]
        if len(key) == 1 and key.isdigit() and (not run or int(key) == int(run[-1][0]) + 1):
            run.append(item)
            continue
        flush()
        if len(key) == 1 and key.isdigit():
            run.append(item)
        else:
            out.append(item)
    flush()
    return out


class KeyBar(Widget):
    DEFAULT_CSS = """
    KeyBar { height: 1; width: 1fr; background: $footer-background; }
    KeyBar > .keybar--key { color: $footer-key-foreground; background: $footer-key-background; text-style: bold; }
    KeyBar > .keybar--description { color: $footer-description-foreground; }
    KeyBar > .keybar--disabled { color: $text-disabled; }
    """
    COMPONENT_CLASSES = {"keybar--key", "keybar--description", "keybar--disabled"}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._items: list[Item] = []

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def _bindings_changed(self, screen: Screen) -> None:
        if screen is not self.screen:
            return
        items = self.collect()
        if items != self._items:
            self._items = items
            self.refresh()

    def collect(self) -> list[Item]:
        seen: dict[str, Item] = {}
        palette = None
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if not binding.show:
                continue
            item = (self.app.get_key_display(binding), binding.description, enabled)
            if binding.action == "command_palette":
                palette = item
                continue
            seen.setdefault(binding.action, item)  # one entry per action, as Footer does
        items = list(seen.values())
        if palette is not None and self.app.ENABLE_COMMAND_PALETTE:
            items.append(palette)
        return items

    @property
    def items(self) -> list[Item]:
        return list(self._items)

    def render(self) -> Text:
        key_style = self.get_component_rich_style("keybar--key")
        description_style = self.get_component_rich_style("keybar--description")
        disabled_style = self.get_component_rich_style("keybar--disabled")
        text = Text(no_wrap=True, overflow="crop", end="")
        for index, (key, description, enabled) in enumerate(fit_items(self._items, self.size.width)):
            if index:
                text.append(" ")
            text.append(f" {key} ", key_style if enabled else disabled_style)
            if description:
                text.append(f"{description} ", description_style if enabled else disabled_style + Style(dim=True))
        return text
