"""The JSON API's description: who may call what, and a page that reads it.

``/openapi.json`` carries ``components.securitySchemes`` and a ``security`` list on every operation,
as this coordinator enforces them (:mod:`.access`):

- ``bearerToken``: ``Authorization: Bearer <token>``: for reads any valid token while the pages are
  public (an admin's while they are private), for actions an admin's;
- ``adminSession``: the cookie of an admin signed in through ``/signin``, which for a POST needs
  ``csrfToken`` too (the ``X-CSRF-Token`` header, with the session's CSRF token);
- reads of the dashboard's API need no credential when the coordinator's pages are public
  (``security`` then lists ``{}`` first, OpenAPI's "none needed"); ``/healthz`` and ``/metrics``
  never need one.

``/docs`` renders that description on the server, like every dashboard page: no script from another
origin (the Content-Security-Policy allows this origin only), readable by whoever may read
``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from essaim.coordinator.dashboard.access import AuthFailed, Viewer
from essaim.coordinator.dashboard.sessions import COOKIE_NAME, CSRF_HEADER
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

SCHEMES: dict[str, dict[str, Any]] = {
    "bearerToken": {
        "type": "http", "scheme": "bearer",
        "description": "A token of this coordinator (essaim coordinator token create): reads take any "
                       "valid one while its pages are public, an admin's otherwise; actions take an admin's.",
    },
    "adminSession": {
        "type": "apiKey", "in": "cookie", "name": COOKIE_NAME,
        "description": "The session of an admin signed in at /signin (the dashboard's own pages use it).",
    },
    "csrfToken": {
        "type": "apiKey", "in": "header", "name": CSRF_HEADER,
        "description": "With the session cookie, a POST carries the session's CSRF token in this header.",
    },
}
OPEN: list[dict[str, list[str]]] = []  # OpenAPI: no credential needed
READ: list[dict[str, list[str]]] = [{"bearerToken": []}, {"adminSession": []}]
ACT: list[dict[str, list[str]]] = [{"bearerToken": []}, {"adminSession": [], "csrfToken": []}]
UNGUARDED = ("/healthz", "/metrics", "/api/v1/status")
METHODS = ("get", "post", "put", "patch", "delete")


def secure(spec: dict[str, Any], *, public_reads: bool) -> dict[str, Any]:
    """``spec`` with the security schemes and each operation's requirements (changed in place)."""
    spec.setdefault("components", {})["securitySchemes"] = SCHEMES
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            if path in UNGUARDED:
                operation["security"] = OPEN
            elif method == "get":
                operation["security"] = ([{}] if public_reads else []) + READ
            else:
                operation["security"] = ACT
    return spec


def install(app: FastAPI, *, public_reads: bool) -> None:
    """Serve the secured description at ``/openapi.json`` (built once, on first use)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = secure(spec, public_reads=public_reads)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def reference(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The operations, grouped by tag in the description's order, in the shape ``api.html`` reads."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            tag = (operation.get("tags") or ["service"])[0]
            groups.setdefault(tag, []).append({
                "method": method.upper(), "path": path, "summary": operation.get("summary", ""),
                "description": operation.get("description", ""),
                "parameters": [
                    {"name": p["name"], "in": p["in"], "required": bool(p.get("required")),
                     "description": p.get("description") or p.get("schema", {}).get("description", ""),
                     "type": _type_of(p.get("schema", {}))}
                    for p in operation.get("parameters", [])
                ],
                "body": _body_of(operation),
                "responses": [(code, r.get("description", "")) for code, r in sorted(operation.get("responses", {}).items())],
                "access": _access_of(operation.get("security")),
            })
    return [{"tag": tag, "operations": ops} for tag, ops in groups.items()]


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"] if s.get("type") != "null")
    if schema.get("type") == "array":
        return f"list of {_type_of(schema.get('items', {}))}"
    return str(schema.get("type", ""))


def _body_of(operation: dict[str, Any]) -> str:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return _type_of(schema) if schema else ""


def _access_of(security: list[dict[str, list[str]]] | None) -> str:
    if security is None or security == OPEN:
        return "anyone"
    if security == ACT:
        return "an admin: bearer token, or sign-in cookie with its CSRF token"
    if security and security[0] == {}:
        return "anyone (this coordinator's pages are public); a token shows more"
    return "an admin: bearer token or sign-in cookie (this coordinator's pages are private)"


def build_docs_router(app: FastAPI, renderer: Any, access: Any) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/docs", response_class=HTMLResponse)
    def docs(request: Request) -> HTMLResponse:
        try:
            viewer = access.viewer(request)
        except AuthFailed:
            viewer = Viewer()  # the description is public, as /openapi.json is
        spec = app.openapi()
        return renderer.page(request, viewer, "api.html", active="api", groups=reference(spec),
                             schemes=spec["components"]["securitySchemes"], title=spec["info"]["title"])

    return router
