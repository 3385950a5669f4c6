"""The gateway's status API: links, routes and services as JSON, and Prometheus metrics.

Counters live in plain attributes on the gateway (the data path never touches
prometheus-client); a collector turns them into metric families at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from clusterlink.gateway import Gateway
from clusterlink.link import Link

GATEWAY_KEY = web.AppKey("gateway", Gateway)


def link_json(link: Link) -> dict[str, Any]:
    peer = link.peer
    return {
        "peer": peer.cluster if peer else None,
        "identity": peer.spiffe if peer else None,
        "serial": f"{peer.serial:x}" if peer else None,
        "direction": "out" if link.dialer else "in",
        "state": "closed" if link.closed else "draining" if link.draining or link.peer_draining else "up",
        "rtt_ms": round(link.rtt_median * 1000, 3) if link.rtt_median is not None else None,
        "streams": len(link.streams),
        "streams_opened": link.stats.streams_opened,
        "streams_accepted": link.stats.streams_accepted,
        "bytes_in": link.stats.bytes_in,
        "bytes_out": link.stats.bytes_out,
        "peer_status": link.status,
    }


def status_json(gateway: Gateway) -> dict[str, Any]:
    return {
        "cluster": gateway.name,
        "links": [link_json(link) for link in gateway.all_links()],
        "dialers": {peer: {"connected": d.current is not None and not d.current.closed, "failures": d.failures,
                           "last_error": d.last_error} for peer, d in gateway.dialers.items()},
        "routes": gateway.route_table(),
        "exports": {name: {"healthy": [f"{h}:{p}" for h, p in exp.healthy()],
                           "endpoints": [f"{h}:{p}" for h, p in exp.export.endpoints],
                           "to": exp.export.to} for name, exp in gateway.exports.items()},
        "services": {name: {"active": s.active, "finished": dict(s.streams), "bytes_up": s.bytes_up,
                            "bytes_down": s.bytes_down, "no_route": s.no_route, "denied": dict(s.denied),
                            "connect_failed": s.connect_failed} for name, s in gateway.services.items()},
        "handshake_failures": dict(gateway.stats.handshake_failures),
        "identity_failures": dict(gateway.stats.identity_failures),
        "rotations": gateway.stats.rotations,
    }


class GatewayCollector:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        labels = ["peer", "direction"]
        up = GaugeMetricFamily("gslb_link_up", "links established, by peer", labels=labels)
        rtt = GaugeMetricFamily("gslb_link_rtt_seconds", "median ping round trip", labels=labels)
        streams = GaugeMetricFamily("gslb_link_streams", "streams open on the link", labels=labels)
        sent = CounterMetricFamily("gslb_link_bytes_sent", "bytes written to the link (TLS payload)", labels=labels)
        received = CounterMetricFamily("gslb_link_bytes_received", "bytes read from the link", labels=labels)
        for link in gw.all_links():
            key = [link.peer.cluster if link.peer else "?", "out" if link.dialer else "in"]
            up.add_metric(key, 0.0 if link.closed else 1.0)
            if link.rtt_median is not None:
                rtt.add_metric(key, link.rtt_median)
            streams.add_metric(key, len(link.streams))
            sent.add_metric(key, link.stats.bytes_out)
            received.add_metric(key, link.stats.bytes_in)
        yield from (up, rtt, streams, sent, received)
        finished = CounterMetricFamily("gslb_link_service_streams", "finished streams by outcome",
                                       labels=["service", "outcome"])
        active = GaugeMetricFamily("gslb_link_service_active_streams", "streams in flight", labels=["service"])
        nbytes = CounterMetricFamily("gslb_link_service_bytes", "client bytes carried",
                                     labels=["service", "direction"])
        denied = CounterMetricFamily("gslb_link_authz_denied", "calls refused: service not exported to the caller",
                                     labels=["service", "caller"])
        no_route = CounterMetricFamily("gslb_link_no_route", "connections closed: no cluster could serve",
                                       labels=["service"])
        for name, s in gw.services.items():
            for outcome, n in s.streams.items():
                finished.add_metric([name, outcome], n)
            active.add_metric([name], s.active)
            nbytes.add_metric([name, "up"], s.bytes_up)
            nbytes.add_metric([name, "down"], s.bytes_down)
            for caller, n in s.denied.items():
                denied.add_metric([name, caller], n)
            no_route.add_metric([name], s.no_route)
        yield from (finished, active, nbytes, denied, no_route)
        handshakes = CounterMetricFamily("gslb_link_handshake_failures", "TLS handshakes that failed",
                                         labels=["reason"])
        for reason, n in gw.stats.handshake_failures.items():
            handshakes.add_metric([reason], n)
        identities = CounterMetricFamily("gslb_link_identity_failures", "peers refused after the handshake",
                                         labels=["reason"])
        for reason, n in gw.stats.identity_failures.items():
            identities.add_metric([reason], n)
        yield from (handshakes, identities)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(status_json(request.app[GATEWAY_KEY]))


def route_json(gateway: Gateway, service: str) -> tuple[int, dict[str, Any]]:
    """Whether this gateway can carry ``service`` now (GSLB nodes check this for mesh-aware
    names): 200 with the serving cluster, 503 with why not, 404 when it is not imported here."""
    plan = next((imp for imp in gateway.plan.imports if imp.service == service), None)
    if plan is None:
        return 404, {"service": service, "error": f"cluster {gateway.name} does not import {service}"}
    link = gateway.route(plan)
    if link is not None and link.peer is not None:
        rtt = link.rtt_median
        return 200, {"service": service, "cluster": link.peer.cluster,
                     "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None}
    reasons = []
    for peer in plan.sources:
        dialer = gateway.dialers.get(peer)
        current = dialer.current if dialer is not None else None
        if current is None or not current.usable:
            last = dialer.last_error if dialer is not None else ""
            reasons.append(f"no link to {peer}" + (f" ({last})" if last else ""))
        else:
            reasons.append(f"{peer} reports no healthy endpoint")
    return 503, {"service": service, "cluster": None,
                 "reason": "; ".join(reasons) or f"no cluster exports {service} to {gateway.name}"}


async def _route(request: web.Request) -> web.Response:
    status, body = route_json(request.app[GATEWAY_KEY], request.match_info["service"])
    return web.json_response(body, status=status)


async def _metrics(request: web.Request) -> web.Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(request.app[GATEWAY_KEY]))
    return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application()
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/api/v1/status", _status)
    app.router.add_get("/api/v1/routes/{service}", _route)
    app.router.add_get("/metrics", _metrics)
    return app


async def start_api(gateway: Gateway, address: tuple[str, int]) -> tuple[web.AppRunner, tuple[str, int]]:
    runner = web.AppRunner(make_app(gateway), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address[0], address[1])
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[:2] if sockets else address
    return runner, (bound[0], bound[1])
