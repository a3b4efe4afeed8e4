"""Make DUT serial output safe to show in a terminal UI.

Pure functions, no Textual import.  A DUT's console is untrusted input: it may contain OSC
sequences (window title, hyperlinks, clipboard writes), cursor movement, screen clearing,
device control strings and stray control bytes.  What survives is plain text, ``\\n``, ``\\t``
and SGR sequences (``ESC [ <params> m``, colour and attributes), which
``rich.text.Text.from_ansi`` understands.

Carriage returns follow a terminal's visible result for line-oriented output: ``"\\r\\n"`` is a
line end, and a lone ``"\\r"`` (progress bars) keeps only the text written after it.

A string sequence (OSC, DCS, SOS, PM, APC) ends at its terminator or, if it has none, at the end of
its line: an unterminated ``ESC ]`` from a DUT removes the rest of that line, never the lines after it.
"""

from __future__ import annotations

import re

__all__ = ["MAX_SGR_LENGTH", "MAX_SGR_PARAMS", "LineAssembler", "plain_text", "sanitize", "strip_sgr"]

MAX_SGR_PARAMS = 32
"""An SGR with more parameters than this is dropped."""
MAX_SGR_LENGTH = 64
"""An SGR longer than this (in characters, ESC included) is dropped."""

# One alternation over everything that is not plain text.  Group "csi_params", "csi_inter" and
# "csi_final" are set only for the CSI branch, so the callback can keep well-formed SGR.
_CONTROLS = re.compile(
    r"""
      \x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?             # OSC ... BEL | ST (unterminated: to next ESC or line end)
    | \x1b[PX^_][^\x1b\n]*(?:\x1b\\)?                   # DCS, SOS, PM, APC ... ST (or to the line end)
    | \x1b\[(?P<csi_params>[\x30-\x3f]*)(?P<csi_inter>[\x20-\x2f]*)(?P<csi_final>[\x40-\x7e])?  # CSI
    | \x1b[\x20-\x2f]*[\x30-\x7e]?                      # other escapes (ESC 7, ESC ( B, ESC c, ST); lone ESC
    | [\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f\u2028\u2029]+  # C0 (not \t \n \r), DEL, C1, U+2028/9
    """,
    re.VERBOSE,
)

_SGR_PARAMS = re.compile(r"[0-9;:]*")
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_SGR_RESET = re.compile(r"\x1b\[(?:0*(?:;0*)*)?m")

# An escape sequence that has started but not finished at the end of the text.
_INCOMPLETE_TAIL = re.compile(
    r"""
    \x1b(?:
        \][^\x07\x1b\n]*                # OSC without terminator (a line end ends it)
      | [PX^_][^\x1b\n]*                # string without ST (a line end ends it)
      | \[[\x30-\x3f]*[\x20-\x2f]*      # CSI without final byte
      | [\x20-\x2f]*                    # ESC, ESC + intermediates
    )\Z
    """,
    re.VERBOSE,
)


def _keep_sgr(match: re.Match[str]) -> str:
    final = match.group("csi_final")
    if final != "m" or match.group("csi_inter"):
        return ""
    params = match.group("csi_params")
    if not _SGR_PARAMS.fullmatch(params):
        return ""  # private SGR-like sequences, e.g. ``CSI > 4 ; 1 m``
    sequence = match.group(0)
    if len(sequence) > MAX_SGR_LENGTH:
        return ""
    if params.count(";") + params.count(":") + 1 > MAX_SGR_PARAMS:
        return ""
    return sequence


def _strip_controls(text: str) -> str:
    """Remove every escape sequence except SGR and every control except \\t, \\n and \\r."""
    return _CONTROLS.sub(_keep_sgr, text)


def strip_sgr(text: str) -> str:
    """The plain text of a sanitised line (SGR sequences removed)."""
    if "\x1b" not in text:
        return text
    return _SGR.sub("", text)


def _carried_sgr(overwritten: str) -> str:
    """SGR codes from overwritten text that still apply (those after the last reset)."""
    codes = _SGR.findall(overwritten)
    if not codes:
        return ""
    for index in range(len(codes) - 1, -1, -1):
        if _SGR_RESET.fullmatch(codes[index]):
            codes = codes[index + 1 :]
            break
    return "".join(codes)


def _collapse_cr(line: str) -> str:
    """Resolve carriage returns in one line: keep the text written after the last ``\\r``.

    A trailing ``\\r`` (nothing written after it yet) keeps the text before it, as a terminal
    would still show it.  Colour set in the overwritten part carries over.
    """
    if "\r" not in line:
        return line
    segments = line.split("\r")
    last = -1
    for index in range(len(segments) - 1, -1, -1):
        if strip_sgr(segments[index]):
            last = index
            break
    if last == -1:
        return _carried_sgr("".join(segments))
    prefix = _carried_sgr("".join(segments[:last])) if last else ""
    suffix = "".join(_SGR.findall("".join(segments[last + 1 :])))
    return prefix + segments[last] + suffix


def sanitize(text: str) -> str:
    """Make a complete piece of DUT output safe to show.

    Line ends become ``\\n``; a lone ``\\r`` keeps only the text after it on that line; OSC, DCS,
    SOS, PM and APC strings, every CSI except SGR, other escapes, C0 controls (except ``\\n`` and
    ``\\t``), DEL and C1 controls are removed.  A sequence cut off at the end is dropped.
    """
    clean = _strip_controls(text)
    if "\r" not in clean:
        return clean
    return "\n".join(_collapse_cr(line) for line in clean.split("\n"))


def plain_text(text: str) -> str:
    """``text`` without any escape sequence (SGR included) or control character: C0 (``\\t``, ``\\n``
    and ``\\r`` too), DEL, C1 and U+2028/9 are removed. For one-line views (the journal)."""
    return _CONTROLS.sub("", text).replace("\t", "").replace("\n", "").replace("\r", "")


def _split_long(line: str, max_line: int) -> tuple[list[str], str]:
    """Cut ``line`` into pieces of at most ``max_line`` characters, never inside an SGR.

    Returns the full pieces and the remainder (at most ``max_line`` characters).
    """
    pieces: list[str] = []
    length = len(line)
    pos = 0
    while length - pos > max_line:
        cut = pos + max_line
        esc = line.rfind("\x1b", max(pos + 1, cut - MAX_SGR_LENGTH), cut)
        if esc != -1:
            sgr = _SGR.match(line, esc)
            if sgr is not None and sgr.end() > cut:
                cut = esc
        pieces.append(line[pos:cut])
        pos = cut
    return pieces, line[pos:] if pos else line


class LineAssembler:
    """Turn a stream of text chunks into sanitised lines.

    ``feed`` returns the lines completed by a chunk (without ``\\n``); the incomplete last line
    is kept and available, sanitised, as ``partial``.  An escape sequence split across chunks
    is held back until it is complete; one that never ends is dropped once it is longer than
    ``max_pending`` characters, and the rest of it is skipped when it arrives.  Lines longer than
    ``max_line`` characters are cut into pieces.
    """

    def __init__(self, max_line: int = 4096, max_pending: int = 8192) -> None:
        if max_line < 2 * MAX_SGR_LENGTH:
            raise ValueError(f"max_line must be at least {2 * MAX_SGR_LENGTH}")
        self.max_line = max_line
        self.max_pending = max_pending
        self._line = ""  # sanitised current line; may end in "\r" (CRLF split across chunks)
        self._pending = ""  # raw, incomplete escape sequence at the end of the last chunk
        self._skipping: str | None = None  # kind of an overlong sequence being skipped

    @property
    def partial(self) -> str:
        """The current incomplete line, sanitised (what a terminal would show on it now)."""
        return _collapse_cr(self._line)

    def reset(self) -> None:
        """Forget the incomplete line and any held escape sequence."""
        self._line = ""
        self._pending = ""
        self._skipping = None

    def _skip(self, text: str) -> str:
        """Drop the rest of an overlong escape sequence; return what follows it."""
        kind = self._skipping
        if kind in ("osc", "str"):  # a BEL (OSC), an ESC or a line end ends it
            match = re.search(r"[\x07\x1b\n]" if kind == "osc" else r"[\x1b\n]", text)
            if match is None:
                return ""
            self._skipping = None
            return text[match.end() :] if match.group() == "\x07" else text[match.start() :]
        # CSI: parameters and intermediates continue it, a final byte ends it.
        match = re.search(r"[^\x20-\x3f]", text)
        if match is None:
            return ""
        self._skipping = None
        end = match.start()
        return text[end + 1 :] if "\x40" <= match.group() <= "\x7e" else text[end:]

    def _hold_incomplete(self, data: str) -> str:
        """Move an unfinished escape sequence at the end of ``data`` into ``_pending``."""
        self._pending = ""
        index = data.rfind("\x1b")
        if index == -1 or not _INCOMPLETE_TAIL.match(data, index):
            return data
        tail = data[index:]
        if len(tail) > self.max_pending:
            introducer = tail[1:2]
            if introducer == "]":
                self._skipping = "osc"
            elif introducer in ("P", "X", "^", "_"):
                self._skipping = "str"
            elif introducer == "[":
                self._skipping = "csi"
            # an ESC followed only by intermediates cannot be that long and still be held
        else:
            self._pending = tail
        return data[:index]

    def feed(self, text: str) -> list[str]:
        """Add a chunk of output; return the lines it completed, sanitised, without ``\\n``."""
        if self._skipping is not None:
            text = self._skip(text)
            if not text:
                return []
        data = self._pending + text if self._pending else text
        data = self._hold_incomplete(data)
        if not data:
            return []
        clean = _strip_controls(data)
        if "\n" not in clean:
            out: list[str] = []
            self._line = self._bounded(self._line + clean, out)
            return out
        parts = clean.split("\n")
        parts[0] = self._line + parts[0]
        max_line = self.max_line
        lines: list[str] = []
        for part in parts[:-1]:
            if "\r" in part:
                part = _collapse_cr(part)
            if len(part) > max_line:
                pieces, rest = _split_long(part, max_line)
                lines.extend(pieces)
                lines.append(rest)
            else:
                lines.append(part)
        self._line = self._bounded(parts[-1], lines)
        return lines

    def _bounded(self, line: str, out: list[str]) -> str:
        """Resolve ``\\r`` in the incomplete line and cut it if it grew past ``max_line``."""
        if "\r" in line:
            trailing_cr = line.endswith("\r")
            line = _collapse_cr(line)
            if trailing_cr:
                line += "\r"  # a "\n" may still follow: CRLF split across chunks
        if len(line) > self.max_line:
            pieces, line = _split_long(line, self.max_line)
            out.extend(pieces)
        return line
