"""Issue 15, reproduction 13 (the HTTP layer's and the views' part): what a DUT sends cannot forge log
lines, hide console lines, leave the share through its links, or pass validation with a final newline.

- ``?platform=`` of ``/boot/<mac>/boot.ipxe`` went raw into the log (a newline forged a line, escapes
  reached the operator's terminal): now escaped.
- The journal view removed C0 controls but not C1 (``\\x9b`` is CSI in 8-bit terminals): now both.
- An unterminated ``ESC ]`` hid every following console line until a BEL: now it ends at its line.
- A share tarball whose links were ``b -> z/..`` then ``z -> .`` stored a link leading out of the share
  (each link was checked alone): now links are checked against the unpacked tree.
- Validation regexes ended in ``$`` with ``match``, so ``"name\\n"`` passed: now ``fullmatch``.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import api_url
from tests.jobs.test_share import tarball
from valve_console.backend.share import ShareError, safe_extract

MAC = "52:54:00:11:22:01"
C1 = "".join(chr(c) for c in range(0x80, 0xA0))


async def test_boot_script_query_cannot_forge_log_lines(farm):
    forged = "efi\n2026-01-01 00:00:00 INFO valve_console: operator logged in\x1b[2J\x9b31m\u202e"
    async with httpx.AsyncClient(base_url=api_url(farm)) as dut:
        answer = await dut.get(f"/boot/{MAC}/boot.ipxe", params={"platform": forged[:32], "buildarch": "x86\r\n"})
    assert answer.status_code == 200 and answer.text.startswith("#!ipxe")
    entry = next(e for e in reversed(farm.recent_log) if "queried its boot configuration" in e["message"])
    message = entry["message"]
    assert "\n" not in message and "\r" not in message and "\x1b" not in message
    assert not any(c in message for c in C1) and "\u202e" not in message
    assert "efi\\x0a2026-01-01" in message and "x86\\x0d\\x0a" in message


def test_journal_view_strips_c1_controls():
    from valve_console.contract import JournalEntry, LogEntry
    from valve_console.widgets.log_view import Entry

    entry = Entry.from_journal(JournalEntry(ts=0.0, priority=6, unit="x",
                                            message="disk \x9b2J\x9b31mfull\x9d0;title\x9c ok\x1b[1m\u2028"))
    assert not any(c in entry.message for c in C1 + "\x1b\u2028")
    assert entry.message.startswith("disk ") and "full" in entry.message and entry.message.endswith("ok")
    backend = Entry.from_backend(LogEntry(ts=0.0, level="INFO", priority=6, logger="x", message="a\x85b\x07c\x7fd"))
    assert backend.message == "abcd"


def test_an_unterminated_osc_hides_no_following_line():
    from valve_console.widgets.sanitize import LineAssembler, sanitize

    text = "boot ok\n\x1b]0;a title that never ends\nline 2\nline 3 \x1bP dcs never ends\nline 4\n"
    assert sanitize(text).split("\n") == ["boot ok", "", "line 2", "line 3 ", "line 4", ""]
    lines = LineAssembler().feed(text)
    assert lines == ["boot ok", "", "line 2", "line 3 ", "line 4"]
    # split across chunks, and longer than the escape buffer: still ends at the line end
    assembler = LineAssembler(max_pending=256)
    assert assembler.feed("before\n\x1b]0;" + "t" * 100) == ["before"]
    assert assembler.feed("t" * 1000) == []
    assert assembler.feed("tail\nafter 1\nafter 2\n") == ["", "after 1", "after 2"]
    assert assembler.feed("\x1b]8;;http://x\x07link\x1b]8;;\x07 done\n") == ["link done"]


def test_share_links_are_checked_against_the_unpacked_tree(tmp_path):
    together = tarball(("b", "sym", "z/.."), ("z", "sym", "."), ("data.txt", "file", b"ok"))
    dest = tmp_path / "share"
    with pytest.raises(ShareError, match="points outside the share"):
        safe_extract(together, dest, max_bytes=1 << 20)
    assert list(dest.iterdir()) == []
    # over two uploads: the second one's link turns the first one's inside link into an outside one
    dest2 = tmp_path / "two" / "share"
    safe_extract(tarball(("z", "dir", b""), ("b", "sym", "z/..")), dest2, max_bytes=1 << 20)
    with pytest.raises(ShareError, match="points outside the share"):
        safe_extract(tarball(("z", "sym", ".")), dest2, max_bytes=1 << 20)
    for link in dest2.iterdir():
        real = link.resolve()
        assert real == dest2.resolve() or dest2.resolve() in real.parents, f"{link} leads to {real}"
    # links that stay inside are kept
    fine = tmp_path / "fine"
    safe_extract(tarball(("d", "dir", b""), ("d/f", "file", b"x"), ("l", "sym", "d/f"), ("d/up", "sym", "..")),
                 fine, max_bytes=1 << 20)
    assert (fine / "l").read_bytes() == b"x" and (fine / "d" / "up").resolve() == fine.resolve()


async def test_validation_refuses_a_final_newline(farm):
    headers = {"Authorization": f"Bearer {farm.token}"}
    async with httpx.AsyncClient(base_url=api_url(farm), headers=headers) as operator:
        pdu = await operator.post("/api/v1/pdu/", json={"name": "pdu\n", "driver": "dummy", "config": {"ports": 1}})
        assert pdu.status_code == 400, pdu.text
        gitlab = await operator.post("/api/v1/gitlab", json={"name": "gl\n", "url": "https://gitlab.example"})
        assert gitlab.status_code == 400, gitlab.text
        assert (await operator.get("/api/v1/pdus")).json()["pdus"] == {}
