"""Job submissions without HTTP: the JSON forms parsed, and the answer each client reads (submission.py).
The API turns them into responses (api/submit.py); tests/compat drives the whole path with real clients."""

from __future__ import annotations

import json

import pytest

from valve_console.backend.errors import BadRequest
from valve_console.backend.submission import answer_body, json_submission

JOB = {"id": "j1", "status": "QUEUED", "position": 0}


@pytest.mark.parametrize(
    ("protocol", "rich", "error", "expected"),
    [
        ("ours", False, None, JOB),
        ("ours", False, "bad job", {"error": "bad job"}),
        ("v1", False, None, {"version": 1, "error_msg": None}),
        ("v1", False, "bad job", {"version": 1, "error_msg": "bad job"}),
        ("v0", False, None, {"reason": None}),
        ("v0", False, "bad job", {"reason": "bad job"}),
        ("v1", True, None, {"version": 1, "error_msg": None, **JOB}),
        ("v1", True, "bad job", {"error": "bad job"}),
    ],
)
def test_each_client_reads_its_own_answer(protocol, rich, error, expected):
    assert answer_body(protocol, rich, error, JOB) == expected


def test_our_json_form():
    sub = json_submission(json.dumps({"job": "x: 1", "target": {"id": "m", "tags": None}, "job_id": "j"}).encode(),
                          "10.0.0.5")
    assert (sub.text, sub.target, sub.job_id, sub.protocol, sub.callback) == ("x: 1", {"id": "m"}, "j", "ours", None)


def test_v0_form_calls_back_the_peer_unless_it_names_a_host():
    sub = json_submission(json.dumps({"metadata": {"callback_port": "4242"}, "job": "x: 1"}).encode(), "10.0.0.5")
    assert sub.protocol == "v0"
    assert (sub.callback.host, sub.callback.port, sub.callback.version) == ("10.0.0.5", 4242, 0)
    named = json_submission(
        json.dumps({"metadata": {"callback_port": 1, "callback_host": "ci"}, "job": "x"}).encode(), None
    )
    assert named.callback.host == "ci"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "malformed JSON"),
        (b"[]", "must be a JSON object"),
        (b"", "must be a JSON object"),
        (b'{"job": "x", "extra": 1}', "unknown fields: extra"),
        (b'{"target": {}}', "missing field job"),
        (b'{"job": "x", "job_id": 3}', "job_id must be a string"),
        (b'{"metadata": {"callback_port": 70000}, "job": "x"}', "is not a TCP port"),
        (b'{"metadata": {"callback_port": 1}, "job": "x"}', "callback host is missing"),
    ],
)
def test_refusals_say_why(body, words):
    with pytest.raises(BadRequest, match=words):
        json_submission(body, None if b"callback_port\": 1}" in body else "10.0.0.5")
