"""How the API is put together (valve_console/backend/api): every route of every router reaches the app,
in an order where a path of its own comes before a parameter of the same shape, and the farm is a
dependency of the routes, not something they captured."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi import FastAPI
from starlette.routing import Match

from valve_console.backend.api import ROUTERS, create_app
from valve_console.backend.api.middleware import BodyLimit, PathNormaliser
from valve_console.config import Settings


def app_of(tmp_path, **settings):
    farm = SimpleNamespace(settings=Settings(data_dir=tmp_path, **settings))
    served = create_app(farm)
    app = served
    while not isinstance(app, FastAPI):  # BodyLimit -> PathNormaliser -> FastAPI
        app = app.app
    return farm, app, served


def first_match(app, method: str, path: str):
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"", "headers": []}
    return next(r for r in app.router.routes if r.matches(scope)[0] == Match.FULL)


def test_every_router_route_is_served_once_and_the_farm_is_the_apps(tmp_path):
    farm, app, served = app_of(tmp_path)
    assert isinstance(served, BodyLimit)
    assert app.state.farm is farm
    prefixes = ("/api/", "/boot/", "/files/", "/metrics")
    ours = [r for r in app.router.routes if getattr(r, "path", "").startswith(prefixes)]
    expected = [(r.path, tuple(sorted(r.methods))) for module in ROUTERS for r in module.router.routes]
    assert [(r.path, tuple(sorted(r.methods))) for r in ours] == expected
    assert len(set(expected)) == len(expected)


def test_paths_of_their_own_come_before_parameters(tmp_path):
    _, app, _ = app_of(tmp_path)
    assert first_match(app, "POST", "/api/v1/machine/discover").name == "discover"
    assert first_match(app, "GET", "/api/v1/pdu/drivers").name == "list_drivers"
    assert first_match(app, "GET", "/api/v1/pdu/p1").name == "get_pdu"
    assert first_match(app, "POST", "/api/v1/machine/aa:bb:cc:dd:ee:ff/cancel_job").name == "cancel_machine_job"


def test_without_a_body_limit_the_path_normaliser_is_the_app(tmp_path):
    _, app, served = app_of(tmp_path, max_body_bytes=0)
    assert isinstance(served, PathNormaliser) and served.app is app
    assert app.router.redirect_slashes is False
