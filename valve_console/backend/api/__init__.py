"""The HTTP API (FastAPI) over a Farm. valve-infra's paths and JSON shapes are kept where they exist.

Errors are always ``{"error": "..."}`` with a 4xx status for bad input. DUT registration is open;
every operator action needs ``Authorization: Bearer <token>`` or the local unix socket.

One module per resource, each an ``APIRouter`` (machines, pdus, consoles, jobs, shares, boot, events,
gitlab, settings, health); routes reach the farm through the ``get_farm`` dependency (deps.py). Shared pieces:
models.py (request bodies, ``ERRORS``, ``MAC_PATTERN``), deps.py (farm, operator, MACs, registration
rate), schema.py (the conformant OpenAPI), middleware.py (PathNormaliser, BodyLimit), handlers.py
(errors.py's types and validation errors as answers), streams.py (SSE answers), submit.py (the
HTTP side of job submission and of streamed bodies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from ... import __version__
from ..submission import FORM_OVERHEAD
from . import boot, consoles, events, gitlab, health, jobs, machines, pdus, settings, shares
from .deps import TOKEN_NEEDED, get_farm, is_operator, loggable, mac_of, operator, registration_limit
from .handlers import describe_validation, install_error_handlers
from .middleware import BodyLimit, PathNormaliser, allow_header, method_not_allowed
from .models import ERRORS, MAC_PATTERN, ErrorBody
from .schema import conformant_openapi, install_conformant_openapi

if TYPE_CHECKING:
    from ..farm import Farm

# In this order: a path of its own is matched before a parameter of the same shape
# (/api/v1/machine/discover before /api/v1/machine/{mac}/..., /api/v1/pdu/drivers before /api/v1/pdu/{name}).
ROUTERS = (machines, pdus, consoles, jobs, shares, boot, events, gitlab, settings, health)

__all__ = [
    "ERRORS",
    "MAC_PATTERN",
    "TOKEN_NEEDED",
    "BodyLimit",
    "ErrorBody",
    "PathNormaliser",
    "allow_header",
    "conformant_openapi",
    "create_app",
    "describe_validation",
    "get_farm",
    "is_operator",
    "loggable",
    "mac_of",
    "method_not_allowed",
    "operator",
]


def create_app(farm: "Farm") -> Any:
    """The ASGI app of ``farm``'s API: BodyLimit → PathNormaliser → FastAPI (handlers, routers)."""
    app = FastAPI(
        title="valve-console",
        version=__version__,
        description="Backend of a bare-metal CI gateway: machines, PDUs, consoles and events.",
    )
    app.state.farm = farm
    app.state.registrations = registration_limit(farm)
    install_error_handlers(app)
    for module in ROUTERS:
        # The routers' own routes, not app.include_router(): FastAPI 0.16x keeps an included router as one
        # entry resolved per request, which walks every route of the router each time (measured: twice
        # the time per request, 3.8 ms instead of 2.1 ms for GET /api/v1/health, and the first request
        # 76 ms instead of 18). The routes have no prefix, tags or dependencies of the router to add.
        app.router.routes.extend(module.router.routes)
    app.router.redirect_slashes = False  # PathNormaliser finds the twin instead of redirecting
    install_conformant_openapi(app)
    served: Any = PathNormaliser(app, app.router)
    if not farm.settings.max_body_bytes:
        return served
    share_limit = farm.settings.job_share_max_bytes
    streamed = [
        ("POST", r"/api/v1/jobs/?", share_limit + FORM_OVERHEAD),
        ("PUT", r"/api/v1/job/[^/]+/share/[^/]+/.+", share_limit),
    ]
    return BodyLimit(served, farm.settings.max_body_bytes, streamed)
