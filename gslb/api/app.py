"""HTTP endpoints of a node. For now liveness and readiness; the full API comes with its issue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gslb.node import Node

NODE: web.AppKey[Node] = web.AppKey("node")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = node.status()
    return web.json_response(body, status=200 if body["ready"] else 503)


def make_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[NODE] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
