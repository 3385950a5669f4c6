"""The HTTP API of a node (aiohttp): health, read calls, and token-protected writes.

Writes (drains, registrations, reload) need ``Authorization: Bearer <token>``, compared in
constant time; the token comes from ``server.http.token`` or the environment variable named
by ``server.http.token_env``. With no token configured, writes are refused. Bodies are
validated by pydantic; a bad body is a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gslb.config import Ipv6Address
from gslb.errors import StoreError
from gslb.store import Drain, Registration, StoreEvent

if TYPE_CHECKING:
    from gslb.node import Node

NODE: web.AppKey[Node] = web.AppKey("node")
STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DrainBody(Body):
    kind: Literal["endpoint", "site"] = "endpoint"
    pattern: str = Field(min_length=1, max_length=300, description="glob over 'name/endpoint-id' or site names")
    reason: str = Field("", max_length=500)
    expires_in: float | None = Field(None, gt=0, le=365 * 86400)


class RegistrationBody(Body):
    site: str = Field(min_length=1, max_length=63)
    ipv4: IPv4Address | None = None
    ipv6: Ipv6Address | None = None
    weight: int = Field(1, ge=0, le=1_000_000)
    ttl: float = Field(30, ge=1, le=86400, description="seconds until it expires without a heartbeat")

    @model_validator(mode="after")
    def _address(self) -> RegistrationBody:
        if self.ipv4 is None and self.ipv6 is None:
            raise ValueError("give ipv4 and/or ipv6")
        return self


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def parse_body(request: web.Request, model: type[Body]) -> Body | web.Response:
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error(400, "the body must be JSON")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        fields = [{"field": ".".join(str(p) for p in e["loc"]) or "<body>",
                   "message": e["msg"].removeprefix("Value error, ")} for e in exc.errors(include_url=False)]
        return error(400, "invalid body: " + "; ".join(f"{f['field']}: {f['message']}" for f in fields),
                     fields=fields)


def api_token(node: Node) -> str | None:
    cfg = node.loaded.config.server.http
    return cfg.token or os.environ.get(cfg.token_env) or None


def authorized(request: web.Request) -> web.Response | None:
    """None when the request carries the right token, else the refusal to send."""
    token = api_token(request.app[NODE])
    if token is None:
        return error(403, "writes are disabled: no API token configured (server.http.token or "
                          f"${request.app[NODE].loaded.config.server.http.token_env})")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return error(401, "missing bearer token")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return error(401, "wrong token")
    return None


def write(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        refusal = authorized(request)
        if refusal is not None:
            return refusal
        try:
            return await handler(request)
        except StoreError as exc:
            return error(503, f"state store unavailable, nothing was changed: {exc}")
    return guarded


def read(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.app[NODE].loaded.config.server.http.read_token:
            refusal = authorized(request)
            if refusal is not None:
                return refusal
        return await handler(request)
    return guarded


# --------------------------------------------------------------------------- routes


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    body = request.app[NODE].status()
    return web.json_response(body, status=200 if body["ready"] else 503)


@read
async def list_services(request: web.Request) -> web.Response:
    return web.json_response({"services": request.app[NODE].describe_services()})


@read
async def list_events(request: web.Request) -> web.Response:
    try:
        limit = max(1, min(1000, int(request.query.get("limit", "100"))))
    except ValueError:
        return error(400, "limit must be an integer")
    events = await request.app[NODE].store.events(limit)
    return web.json_response({"events": [e.to_json() for e in events]})


@read
async def list_drains(request: web.Request) -> web.Response:
    overrides = request.app[NODE].overrides
    return web.json_response({"drains": [d.to_json() for d in overrides.drains]})


@write
async def put_drain(request: web.Request) -> web.Response:
    body = await parse_body(request, DrainBody)
    if isinstance(body, web.Response):
        return body
    assert isinstance(body, DrainBody)
    node = request.app[NODE]
    now = time.time()
    drain = Drain(body.kind, body.pattern, body.reason, now, now + body.expires_in if body.expires_in else None)
    await node.store.set_drain(drain)
    await node.emit(StoreEvent(now, "drain", f"{drain.kind}:{drain.pattern}", "serving", "drained",
                                          drain.reason or "drained through the API"))
    await node.refresh_overrides()
    matched = node.drain_matches(drain)
    return web.json_response({"drain": drain.to_json(), "matched": matched})


@write
async def delete_drain(request: web.Request) -> web.Response:
    kind = request.query.get("kind", "endpoint")
    pattern = request.query.get("pattern", "")
    if kind not in ("endpoint", "site") or not pattern:
        return error(400, "give kind=endpoint|site and pattern=GLOB as query parameters")
    node = request.app[NODE]
    removed = await node.store.clear_drain(kind, pattern)  # type: ignore[arg-type]
    if not removed:
        return error(404, f"no {kind} drain with pattern {pattern!r}")
    await node.emit(StoreEvent(time.time(), "drain", f"{kind}:{pattern}", "drained", "serving",
                                          "undrained through the API"))
    await node.refresh_overrides()
    return web.json_response({"removed": {"kind": kind, "pattern": pattern}})


@write
async def put_registration(request: web.Request) -> web.Response:
    node = request.app[NODE]
    service, endpoint_id = request.match_info["name"].lower().rstrip("."), request.match_info["endpoint"]
    body = await parse_body(request, RegistrationBody)
    if isinstance(body, web.Response):
        return body
    assert isinstance(body, RegistrationBody)
    table = node.snapshot.services.get(service)
    if table is None:
        return error(404, f"no GSLB name {service!r}")
    if body.site not in node.snapshot.sites:
        return error(400, f"site: unknown site {body.site!r}", fields=[{"field": "site", "message": "unknown"}])
    if any(ep.id == endpoint_id for ep in table.spec.endpoints):
        return error(409, f"{endpoint_id!r} is a configured endpoint of {service}; pick another id")
    now = time.time()
    registration = Registration(service, endpoint_id, body.site, body.ipv4, body.ipv6, body.weight,
                                now + body.ttl, now)
    new = await node.store.register(registration)
    if new:
        await node.emit(StoreEvent(now, "registration", f"{service}/{endpoint_id}", "absent",
                                              "registered", f"registered with TTL {body.ttl:g}s"))
        await node.refresh_overrides()
    return web.json_response({"registration": registration.to_json(), "new": new}, status=201 if new else 200)


@write
async def delete_registration(request: web.Request) -> web.Response:
    node = request.app[NODE]
    service, endpoint_id = request.match_info["name"].lower().rstrip("."), request.match_info["endpoint"]
    if not await node.store.deregister(service, endpoint_id):
        return error(404, f"{service}/{endpoint_id} is not registered")
    await node.emit(StoreEvent(time.time(), "registration", f"{service}/{endpoint_id}", "registered",
                                          "absent", "deregistered through the API"))
    await node.refresh_overrides()
    return web.json_response({"removed": f"{service}/{endpoint_id}"})


@write
async def post_reload(request: web.Request) -> web.Response:
    errors = await request.app[NODE].reload()
    if errors:
        return error(422, "config rejected; the previous config keeps serving", errors=errors)
    return web.json_response({"reloaded": True, "generation": request.app[NODE].snapshot.generation})


@read
async def get_explain(request: web.Request) -> web.Response:
    from gslb.explain import explain

    query = request.query
    if "name" not in query or "client" not in query:
        return error(400, "give name= and client= (and optionally type=, ecs=)")
    try:
        result = explain(request.app[NODE].snapshot, query["name"], query.get("type", "A"), query["client"],
                         query.get("ecs"))
    except (ValueError, AttributeError) as exc:
        return error(400, str(exc))
    return web.json_response(result)


@read
async def event_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``data:`` line of JSON per event, a comment every 15 s."""
    node = request.app[NODE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    queue: asyncio.Queue[StoreEvent | None] = asyncio.Queue(maxsize=256)
    node.listeners.add(queue)
    try:
        await response.write(b": connected\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), 15)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if event is None:  # the node is shutting down
                break
            await response.write(f"event: {event.kind}\ndata: {json.dumps(event.to_json())}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        node.listeners.discard(queue)
    return response


@read
async def list_sites(request: web.Request) -> web.Response:
    sites = request.app[NODE].snapshot.sites
    return web.json_response({"sites": [
        {"name": name, "lat": site.lat, "lon": site.lon, "country": site.country, "continent": site.continent,
         "labels": dict(site.labels)} for name, site in sorted(sites.items())]})


@read
async def get_traffic(request: web.Request) -> web.Response:
    """Answers per GSLB name and site since start: the map takes differences over time."""
    stats = request.app[NODE].handler.current_stats()
    return web.json_response({"at": time.time(), "answers": [
        {"name": name, "site": site, "count": count} for (name, site), count in sorted(stats.answers.items())]})


@read
async def get_mesh(request: web.Request) -> web.Response:
    """Cluster links as the gateways last reported them (``gslb.meshstatus``)."""
    from gslb.meshstatus import mesh_view

    node = request.app[NODE]
    view = node.mesh.view() if node.mesh is not None else mesh_view(node.loaded.config.mesh, {}, 0.0)
    return web.json_response(view)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@read
async def get_metrics(request: web.Request) -> web.Response:
    from gslb.api.metrics import render

    return web.Response(body=render(request.app[NODE]), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def get_openapi(request: web.Request) -> web.Response:
    from gslb.api.openapi import openapi_document

    return web.json_response(openapi_document())


def make_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[NODE] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/services", list_services)
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_get("/api/v1/events/stream", event_stream)
    app.router.add_get("/api/v1/drains", list_drains)
    app.router.add_put("/api/v1/drains", put_drain)
    app.router.add_delete("/api/v1/drains", delete_drain)
    app.router.add_put("/api/v1/services/{name}/endpoints/{endpoint}", put_registration)
    app.router.add_delete("/api/v1/services/{name}/endpoints/{endpoint}", delete_registration)
    app.router.add_post("/api/v1/reload", post_reload)
    app.router.add_get("/api/v1/explain", get_explain)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/api/v1/sites", list_sites)
    app.router.add_get("/api/v1/traffic", get_traffic)
    app.router.add_get("/api/v1/mesh", get_mesh)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, show_index=False)
    app.router.add_get("/api/v1/openapi.json", get_openapi)
    return app
