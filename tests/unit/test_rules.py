"""rules.py (MAC, tag and URL rules: one home) and Store.upsert."""

from __future__ import annotations

import re

import pytest

from valve_console.backend import rules


def test_a_mac_in_any_of_its_forms_and_the_schema_agrees():
    for text in ("AA-BB-CC-DD-EE-0F", "aabbccddee0f", " aa:bb:cc:dd:ee:0f\n"):
        assert rules.normalise_mac(text) == "aa:bb:cc:dd:ee:0f"
        assert re.match(rules.MAC_PATTERN, text)
    for text in ("aa:bb-cc:dd:ee:0f", "aa:bb:cc:dd:ee", "0"):
        with pytest.raises(ValueError, match="is not a MAC address"):
            rules.normalise_mac(text)
        assert not re.match(rules.MAC_PATTERN, text)
    assert rules.MAC_PREFIX.match(b"52:54:00:11:22:07\x00garbage").group(0) == b"52:54:00:11:22:07"


def test_each_kind_of_tag_keeps_its_limits():
    long = "x" * 257
    assert rules.machine_tags(["a", "b", "a"]) == ["a", "b"]
    with pytest.raises(ValueError, match="1-256 printable characters"):
        rules.machine_tags([long])
    with pytest.raises(ValueError, match="at most 256 tags"):
        rules.machine_tags([str(n) for n in range(257)])
    assert rules.machine_tags(["a,b"]) == ["a,b"]
    with pytest.raises(ValueError, match="no comma"):
        rules.runner_tags(["a,b"])
    assert rules.target_tags([long]) == [long]  # matches no machine, but is not refused
    for check in (rules.machine_tags, rules.runner_tags, rules.target_tags):
        with pytest.raises(ValueError, match="invalid tag"):
            check(["line\nbreak"])
        with pytest.raises(ValueError, match="invalid tag"):
            check([""])


def test_boot_urls_and_service_urls():
    assert rules.validate_url("tftp://10.42.0.1/kernel") == "tftp://10.42.0.1/kernel"
    for bad, words in (("ftp://x/k", "must start with"), ("http://x/k;reboot", "iPXE"), ("http://x/ k", "spaces")):
        with pytest.raises(ValueError, match=words):
            rules.validate_url(bad, "kernel URL")
    assert rules.http_url(" https://gitlab.example.com/// ") == "https://gitlab.example.com"
    assert re.match(rules.HTTP_URL_SCHEMA["pattern"], " https://gitlab.example.com ")
    with pytest.raises(ValueError, match=r"is not an http\(s\):// URL"):
        rules.http_url("tftp://x")
    assert rules.is_http_url("HTTP://x") and not rules.is_http_url("tftp://x")


async def test_store_upsert_inserts_then_updates(tmp_path):
    from valve_console.backend.models import GitlabRunner, Training
    from valve_console.backend.store import Store

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    try:
        await store.upsert(Training, {"mac_address": "aa:bb:cc:dd:ee:ff", "state": "looping"})
        await store.upsert(Training, {"mac_address": "aa:bb:cc:dd:ee:ff", "state": "qualified"})
        rows = await store.all(Training)
        assert [(r.mac_address, r.state) for r in rows] == [("aa:bb:cc:dd:ee:ff", "qualified")]
        # a composite key, given or taken from the values
        mac = "aa:bb:cc:dd:ee:ff"
        values = {"instance": "gl", "mac_address": mac, "runner_id": 1, "token": "t", "description": "d"}
        await store.upsert(GitlabRunner, values)
        await store.upsert(GitlabRunner, {**values, "runner_id": 2}, ("gl", "aa:bb:cc:dd:ee:ff"))
        assert [r.runner_id for r in await store.all(GitlabRunner)] == [2]
    finally:
        await store.close()
