"""The published OpenAPI says what the API answers (issue 15, item 14): 400 with ``{"error"}`` (never
FastAPI's 422), JSON errors on text routes too, a pattern for every ``mac``, and 405 with every
method of the path in ``Allow``. schemathesis checks all of it over generated requests
(test_schemathesis.py); these are the quick, exact checks."""

from __future__ import annotations

import re

import httpx

from tests.conftest import api_url


async def test_the_schema_says_what_the_api_answers(farm):
    async with httpx.AsyncClient(base_url=api_url(farm)) as http:
        schema = (await http.get("/openapi.json")).json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    macs = 0
    for path, item in schema["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert "422" not in responses, (method, path)
            assert {"400", "4XX", "5XX"} <= set(responses), (method, path)
            for code, response in responses.items():
                if code[0] in "45":
                    assert list(response["content"]) == ["application/json"], (method, path, code)
            for param in op.get("parameters", []):
                if param["name"] == "mac" and path.startswith("/api/"):
                    macs += 1
                    pattern = re.compile(param["schema"]["pattern"])
                    for good in ("52:54:00:11:22:03", "52-54-00-11-22-03", "525400112203", "AA:BB:CC:DD:EE:FF"):
                        assert pattern.search(good), good
                    for bad in ("52:54:00:11:22", "52:54-00:11:22:03", "discover", "zz:54:00:11:22:03"):
                        assert not pattern.search(bad), bad
    assert macs >= 10
    log = schema["paths"]["/api/v1/console/{mac}/log"]["get"]["responses"]
    assert list(log["200"]["content"]) == ["text/plain"] and list(log["404"]["content"]) == ["application/json"]
    assert list(schema["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]) == ["text/event-stream"]


async def test_bad_input_is_400_and_405_names_every_method(farm):
    headers = {"Authorization": f"Bearer {farm.token}"}
    async with httpx.AsyncClient(base_url=api_url(farm), headers=headers) as http:
        bad = await http.get("/api/v1/log", params={"lines": 0})
        assert bad.status_code == 400 and "error" in bad.json()
        text_route = await http.post("/api/v1/machine/not-a-mac/retire")
        assert text_route.status_code == 400 and text_route.headers["content-type"] == "application/json"
        options = await http.request("OPTIONS", "/api/v1/gitlab")
        assert options.status_code == 405 and options.headers["allow"] == "GET, POST"
        # a path of its own is not a machine named "discover" nor a PDU named "drivers"
        patch = await http.patch("/api/v1/machine/discover", json={})
        assert patch.status_code == 405 and patch.headers["allow"] == "DELETE, GET, POST"
        delete = await http.delete("/api/v1/pdu/drivers")
        assert delete.status_code == 405 and delete.headers["allow"] == "GET"
        assert (await http.get("/api/v1/machine/discover")).status_code == 200
