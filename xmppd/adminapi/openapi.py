"""The OpenAPI 3.1 document of ``/api/v1``, written from the routes and their pydantic
models (the same models that validate the requests and build the answers)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from xmppd.adminapi.base import API, PUBLIC, Problem, Route

_DESCRIPTIONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "Done (no content)",
    401: "No valid bearer token (missing, unknown, wrong or revoked)",
    403: "The token's scope does not allow this endpoint",
    404: "No such user (or not on this server), session, item or route",
    409: "Conflict (exists already, or full)",
    413: "The body is too large",
    422: "An invalid body, query parameter or path parameter (see 'field')",
    503: "The module behind this endpoint is not loaded on that host",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        description = prop.pop("description", None)
        if description:
            param["description"] = description
        param["schema"] = prop
        params.append(param)
    return params


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    scope = "none" if route.scope == PUBLIC else route.scope
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": f"{route.summary} (scope: {scope})",
        "tags": [route.path.strip("/").split("/")[0]],
    }
    params = [
        {"name": seg[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for seg in route.segments
        if seg.startswith("{")
    ]
    if route.query is not None:
        params += _query_parameters(route.query, schemas)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": _content(route.body)}
    ok: dict[str, Any] = {"description": _DESCRIPTIONS[route.status]}
    if route.download is not None:
        ok["content"] = {route.download: {"schema": {"type": "string", "format": "binary"}}}
    elif route.response is not None and route.status != 204:
        ok["content"] = _content(route.response)
    responses: dict[str, Any] = {str(route.status): ok}
    errors = {401, 422, *route.errors}
    if route.scope != PUBLIC:
        errors.add(403)
    if params and any(p["in"] == "path" for p in params):
        errors.add(404)
    if route.body is not None:
        errors.add(413)
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _DESCRIPTIONS[status],
            "content": _content(Problem),
        }
    op["responses"] = responses
    if route.scope == PUBLIC:
        op["security"] = []
    return op


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``routes`` (all of ``/api/v1``)."""
    schemas: dict[str, Any] = {}
    models: set[type[BaseModel]] = {Problem}
    for route in routes:
        models.update(m for m in (route.body, route.response) if m is not None)
    for model in sorted(models, key=lambda m: m.__name__):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(f"{API}{route.path}", {})[route.method.lower()] = _operation(
            route, schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "xmppd REST API",
            "version": "1",
            "description": "Admin tokens (xat_...) and user tokens (xut_...) as bearer "
            "tokens; errors are JSON with a stable 'error' code.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
