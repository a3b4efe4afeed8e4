"""The footer's fitting: every key stays listed, descriptions shrink only as much as needed."""

from valve_console.widgets.keybar import collapse_digits, fit_items

SCREENS = [(str(i), name, True) for i, name in enumerate(
    ["Overview", "Journal", "PDUs", "DUTs", "Consoles", "Machine", "Jobs"], start=1)]
ACTIONS = [("o", "On", True), ("r", "Reboot", True), ("C", "Cancel discovery", False)]
QUIT = [("q", "Quit", True)]


def line(items):
    return " ".join(f" {k} " + (f"{d} " if d else "") for k, d, _ in items)


def test_wide_enough_keeps_everything_as_it_is():
    items = ACTIONS + SCREENS + QUIT
    assert fit_items(items, 200) == items


def test_screen_keys_collapse_before_any_description_is_cut():
    items = ACTIONS + SCREENS + QUIT
    fitted = fit_items(items, len(line(items)) - 1)
    assert fitted == ACTIONS + [("1-7", "Screens", True)] + QUIT
    assert len(line(fitted)) <= len(line(items)) - 1


def test_narrow_cuts_descriptions_but_never_drops_a_key():
    items = ACTIONS + SCREENS + QUIT
    for width in (60, 40, 30, 10):
        fitted = fit_items(items, width)
        keys = [k for k, _, _ in fitted]
        assert keys == ["o", "r", "C", "1-7", "q"]
        assert [e for _, _, e in fitted] == [True, True, False, True, True]  # enabled flags kept
        if width >= 30:
            assert len(line(fitted)) <= width


def test_only_runs_of_three_or_more_digits_collapse():
    assert collapse_digits([("1", "A", True), ("2", "B", True), ("x", "X", True)]) == [
        ("1", "A", True), ("2", "B", True), ("x", "X", True)]
    assert collapse_digits([("1", "A", True), ("3", "C", True), ("4", "D", True), ("5", "E", True)]) == [
        ("1", "A", True), ("3-5", "Screens", True)]
