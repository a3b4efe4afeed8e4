"""Fleet files and --attach lists: every problem said in words; fleet clients tolerate newer gateways."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from valve_console.client import FarmClient, FarmClientError, parse_event
from valve_console.console_data.fleet import FleetError, fleet_of_urls, lost_words, read_fleet_file

GOOD = """
name = "lab"
[[gateway]]
name = "rack1"
url = "http://10.0.0.2:8000"
token_file = "rack1.token"
[[gateway]]
url = "https://rack2.lab:8443/"
token = "t2"
[[gateway]]
name = "open"
url = "http://10.0.0.4:8000"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(FleetError) as exc:
        read_fleet_file(write(tmp_path, text))
    return str(exc.value)


def test_a_good_file(tmp_path: Path) -> None:
    (tmp_path / "rack1.token").write_text("secret-1\n")
    spec = read_fleet_file(write(tmp_path, GOOD))
    assert spec.name == "lab"
    assert [(g.name, g.url, g.token) for g in spec.gateways] == [
        ("rack1", "http://10.0.0.2:8000", "secret-1"),  # token_file relative to the fleet file, stripped
        ("rack2.lab:8443", "https://rack2.lab:8443/", "t2"),  # no name: host:port
        ("open", "http://10.0.0.4:8000", None),
    ]


def test_every_problem_at_once_in_words(tmp_path: Path) -> None:
    text = problems(tmp_path, """
colour = "red"
[[gateway]]
name = "rack1"
url = "ftp://x"
token = "abc"
[[gateway]]
name = "rack1"
url = "http://10.0.0.3:8000"
token_file = "missing.token"
[[gateway]]
url = "http://h:99999"
secret = 1
[[gateway]]
name = "both"
url = "http://h:1"
token = "a"
token_file = "b"
""")
    assert "has 7 problems" in text
    assert "unknown key(s) colour" in text
    assert "gateway 1 (rack1) has a bad url 'ftp://x': it must start with http:// or https://" in text
    assert "the name 'rack1' is already gateway 1's" in text
    assert "cannot read its token file" in text and "missing.token: No such file or directory" in text
    assert "gateway 3 has unknown key(s) secret" in text
    assert "Port out of range" in text
    assert "gateway 4 (both) has both token and token_file" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("text, words", [
    ("not = [toml", "is not valid TOML"),
    ("", "no gateway given"),
    ("gateway = 3", "write [[gateway]] before each"),
    ('[[gateway]]\nname = "x"', "has no url"),
    ('[[gateway]]\nurl = "http://:80"', "no host"),
    ('[[gateway]]\nname = "a b"\nurl = "http://h:1"', "bad name 'a b'"),
    ('[[gateway]]\nurl = "http://h:1"\ntoken = ""', "empty or non-string token"),
])
def test_one_problem(tmp_path: Path, text: str, words: str) -> None:
    assert words in problems(tmp_path, text)


def test_missing_file_and_empty_token_file(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="cannot read the fleet file .*No such file"):
        read_fleet_file(tmp_path / "none.toml")
    (tmp_path / "empty.token").write_text("\n")
    assert "token file" in problems(tmp_path, '[[gateway]]\nurl = "http://h:1"\ntoken_file = "empty.token"')
    assert "is empty" in problems(tmp_path, '[[gateway]]\nurl = "http://h:1"\ntoken_file = "empty.token"')


def test_attach_lists() -> None:
    spec = fleet_of_urls(["http://a:1", "http://b:2"], ["t"])
    assert [(g.name, g.token) for g in spec.gateways] == [("a:1", "t"), ("b:2", "t")]
    spec = fleet_of_urls(["http://a:1", "http://b:2"], ["t1", "t2"])
    assert [g.token for g in spec.gateways] == ["t1", "t2"]
    assert [g.token for g in fleet_of_urls(["http://a:1", "http://b:2"], []).gateways] == [None, None]
    with pytest.raises(FleetError, match="2 --attach URLs and 3 --token values"):
        fleet_of_urls(["http://a:1", "http://b:2"], ["1", "2", "3"])
    with pytest.raises(FleetError, match="already gateway 1's"):
        fleet_of_urls(["http://a:1", "http://a:1/"], [])
    with pytest.raises(FleetError, match="bad url 'nope'"):
        fleet_of_urls(["http://a:1", "nope"], [])


def test_lost_words() -> None:
    where = "http://h:1"
    assert lost_words("Operator token needed", FarmClientError("Operator token needed", 401), where) == "token refused"
    refused = f"backend unreachable at {where}: All connection attempts failed"
    assert lost_words(refused, FarmClientError(refused), where) == "unreachable: All connection attempts failed"
    stream = f"event stream from {where} lost: All connection attempts failed"
    assert lost_words(stream, FarmClientError(stream), where).startswith("unreachable: ")


# ---------------------------------------------------------------------------------------- versions
HEALTH = {"status": "ok", "farm_name": "newer", "version": "9.0.0", "uptime": 1.0,
          "services": {"api": {"state": "ok", "reason": None, "since_v9": True}},
          "brand_new_field": {"x": 1}}  # no "api" nor "netconsole": optional, left out


def newer_gateway(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=HEALTH)


async def test_a_fleet_client_tolerates_a_newer_gateway() -> None:
    """Under the strict contract (the test suite's setting), a plain client refuses the unknown keys; a
    fleet client (tolerant) drops them and keeps the rest; a missing optional key is None."""
    strict = FarmClient("http://newer:8000", transport=httpx.MockTransport(newer_gateway))
    tolerant = FarmClient("http://newer:8000", transport=httpx.MockTransport(newer_gateway), tolerant=True)
    try:
        with pytest.raises(FarmClientError, match="brand_new_field"):
            await strict.health()
        health = await tolerant.health()
        assert (health.farm_name, health.version, health.api) == ("newer", "9.0.0", None)
        assert health.services["api"].state == "ok"
    finally:
        await strict.close()
        await tolerant.close()


def test_a_fleet_client_tolerates_a_newer_event() -> None:
    event = {"type": "health", "seq": 3, "ts": 1.0, "future": 1,
             "data": {"service": "api", "state": "ok", "reason": None, "new_thing": [1]}}
    with pytest.raises(FarmClientError):
        parse_event(event)  # strict: refused
    parsed = parse_event(event, tolerant=True)
    assert parsed is not None and parsed.parsed().service == "api" and "new_thing" not in parsed.data
    # a missing required key is never tolerated
    with pytest.raises(FarmClientError):
        parse_event({"type": "health", "seq": 3, "ts": 1.0, "data": {"nope": 1}}, tolerant=True)
