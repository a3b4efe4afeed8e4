"""The one home of the rules for MAC addresses, tags and URLs (pure, no I/O).

- MACs: ``normalise_mac(value) -> "aa:bb:cc:dd:ee:ff"`` (``AA-BB-..``, ``aabbccddeeff`` and spaces around
  accepted; ValueError otherwise); ``MAC_PATTERN`` the same rule for an OpenAPI schema; ``MAC_PREFIX`` a MAC at
  the start of a console marker's bytes (followed by garbage).
- Tags: ``check_tags(tags, ...)`` the common rule (non-empty, no control character; duplicates dropped, order
  kept), with the limits of each kind: ``machine_tags`` (registrations and an operator's manual tags: at most
  256, each 1-256 characters), ``runner_tags`` (GitLab farm tags: 1-256 characters, no comma, since GitLab
  joins tags with commas; ``RUNNER_TAGS_SCHEMA`` for the OpenAPI schema) and ``target_tags`` (a job's target:
  non-empty, no control character; one longer than any machine's matches nothing).
- URLs: ``validate_url(url, what)`` a kernel/initrd URL written into an iPXE script (http, https or tftp;
  printable ASCII; nothing iPXE would run as a command); ``http_url(url)`` an http(s) service URL (GitLab
  instances: spaces around and trailing slashes dropped; ``HTTP_URL_SCHEMA`` for the OpenAPI schema);
  ``is_http_url(url)`` the scheme check of a base URL.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from pydantic.config import JsonDict

__all__ = [
    "HTTP_URL_SCHEMA",
    "MAC_PATTERN",
    "MAC_PREFIX",
    "MAX_URL_LENGTH",
    "RUNNER_TAGS_SCHEMA",
    "check_tags",
    "control_chars",
    "http_url",
    "is_http_url",
    "machine_tags",
    "normalise_mac",
    "runner_tags",
    "target_tags",
    "validate_url",
]

# ---------------------------------------------------------------------------------------------------- MACs
# Whole-string pattern, always used with fullmatch: "$" would also match before a trailing newline.
_MAC = re.compile(r"[0-9a-f]{2}([-:]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}")
# The same rule as normalise_mac() for a schema: aa:bb:cc:dd:ee:ff, AA-BB-..., aabbccddeeff, spaces around.
MAC_PATTERN = (
    r"^\s*(?:[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{12})\s*$"
)
MAC_PREFIX = re.compile(rb"^[0-9A-Fa-f]{2}(?:[:-]?[0-9A-Fa-f]{2}){5}")


def normalise_mac(value: str) -> str:
    """``AA-BB-CC-DD-EE-FF``, ``aabbccddeeff`` or ``aa:bb:...`` → ``aa:bb:cc:dd:ee:ff``."""
    text = str(value).strip().lower()
    if not _MAC.fullmatch(text):
        raise ValueError(f"{value!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    digits = re.sub(r"[^0-9a-f]", "", text)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


# ---------------------------------------------------------------------------------------------------- tags
TAG_MAX_LENGTH = 256
MAX_TAGS = 256
RUNNER_TAGS_SCHEMA: JsonDict = {"items": {"type": "string", "pattern": "^[^,\\x00-\\x1f]{1,256}$"}}


def check_tags(
    tags: list[str], *, max_count: Optional[int] = None, max_length: Optional[int] = None, comma: bool = True
) -> list[str]:
    """``tags`` without duplicates (first kept), each non-empty and without control characters (below
    U+0020); at most ``max_count`` of them, each at most ``max_length`` long, with a comma only if ``comma``.
    ValueError in words."""
    if max_count is not None and len(tags) > max_count:
        raise ValueError(f"at most {max_count} tags")
    rule = f": 1-{max_length} printable characters" if max_length is not None else ""
    if not comma:
        rule += ", no comma"
    for tag in tags:
        if (
            not tag
            or (max_length is not None and len(tag) > max_length)
            or (not comma and "," in tag)
            or any(ord(c) < 32 for c in tag)
        ):
            raise ValueError(f"invalid tag {tag[:40]!r}{rule}")
    return list(dict.fromkeys(tags))


def machine_tags(tags: list[str]) -> list[str]:
    """A machine's tags (a DUT's registration, an operator's manual tags)."""
    return check_tags(tags, max_count=MAX_TAGS, max_length=TAG_MAX_LENGTH)


def runner_tags(tags: list[str]) -> list[str]:
    """A GitLab instance's farm tags (GitLab joins a runner's tags with commas)."""
    return check_tags(tags, max_length=TAG_MAX_LENGTH, comma=False)


def target_tags(tags: list[str]) -> list[str]:
    """The tags a job's target requires."""
    return check_tags(tags)


# ---------------------------------------------------------------------------------------------------- URLs
MAX_URL_LENGTH = 2048
_BOOT_SCHEMES = ("http://", "https://", "tftp://")
# Sequences that iPXE reads as command separators or conditional operators on a command line.
IPXE_OPERATORS = ("&&", "||")
# Whitespace as str.strip() and Python's \s know it, for the schema of http_url (which strips it).
_WS = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
HTTP_URL_SCHEMA: JsonDict = {"pattern": f"^[{_WS}]*https?://[^{_WS}/\\x00-\\x20\\x7f][^\\x00-\\x20\\x7f]*[{_WS}]*$"}


def control_chars(text: str) -> list[str]:
    """The control characters (and line/paragraph separators) in ``text``."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")]


def validate_url(url: str, what: str = "URL") -> str:
    """Check a kernel/initrd URL for an iPXE script; returns it, raises ``ValueError`` in words.

    Accepted: ``http://``, ``https://`` or ``tftp://`` URLs of printable ASCII without spaces, ``;``,
    ``&&`` or ``||`` (which iPXE would read as further commands).
    """
    if not isinstance(url, str):
        raise ValueError(f"the {what} must be a string")
    if not url:
        raise ValueError(f"the {what} is empty")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the {what} is longer than {MAX_URL_LENGTH} characters")
    bad = [c for c in url if not 33 <= ord(c) <= 126]
    if bad:
        raise ValueError(
            f"the {what} {url[:80]!r} contains {bad[0]!r}: spaces, control and non-ASCII characters are refused"
        )
    if not url.lower().startswith(_BOOT_SCHEMES):
        raise ValueError(f"the {what} {url[:80]!r} must start with http://, https:// or tftp://")
    for token in (";", *IPXE_OPERATORS):
        if token in url:
            raise ValueError(f"the {what} {url[:80]!r} contains {token!r}, which iPXE would run as a command")
    return url


def is_http_url(url: str) -> bool:
    """Whether ``url`` starts with http:// or https:// (any case)."""
    return url.lower().startswith(("http://", "https://"))


def http_url(url: str) -> str:
    """An http(s) service URL with a host, at most MAX_URL_LENGTH characters, no space or control character;
    returned without the spaces around it and trailing slashes. ValueError in words."""
    v = url.strip().rstrip("/")
    if not re.match(r"^https?://[^\s/]+", v) or len(v) > MAX_URL_LENGTH or any(ord(c) < 33 or ord(c) == 127 for c in v):
        raise ValueError(f"{v[:60]!r} is not an http(s):// URL")
    return v
