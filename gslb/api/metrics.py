"""``GET /metrics``: Prometheus text built at scrape time from the node's own counters.

The DNS hot path never touches prometheus-client: it bumps plain integers (see
``dnsserver.stats``); this collector turns them into metric families when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from dnsserver.stats import LATENCY_BUCKETS
from dnsserver.tcp import CLOSE_REASONS as TCP_CLOSE_REASONS
from healthmon.scheduler import CHECK_BUCKETS

if TYPE_CHECKING:
    from gslb.node import Node


def _histogram(name: str, doc: str, bounds: tuple[float, ...], counts: list[int], total: float) -> Metric:
    cumulative = list(accumulate(counts))
    buckets = [(repr(b), c) for b, c in zip(bounds, cumulative, strict=False)] + [("+Inf", cumulative[-1])]
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets, total)
    return family


class NodeCollector:
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        stats = node.handler.current_stats()
        replies = CounterMetricFamily("gslb_dns_replies", "DNS replies sent", labels=["transport", "zone", "qtype",
                                                                                      "rcode"])
        for reply_key, n in sorted(stats.replies.items()):
            replies.add_metric(list(reply_key), n)
        yield replies
        answers = CounterMetricFamily("gslb_dns_answers", "GSLB answers by name and site", labels=["name", "site"])
        for answer_key, n in sorted(stats.answers.items()):
            answers.add_metric(list(answer_key), n)
        yield answers
        for name, doc, value in (
            ("gslb_dns_ecs_queries", "queries carrying an EDNS Client Subnet", stats.ecs),
            ("gslb_dns_truncated", "UDP replies truncated (TC=1)", stats.truncated),
            ("gslb_dns_malformed", "malformed queries answered FORMERR", stats.malformed),
            ("gslb_dns_dropped", "packets dropped unanswered (too short, or responses)", stats.dropped),
            ("gslb_dns_internal_errors", "queries that hit an internal error (SERVFAIL)", node.handler.errors),
            ("gslb_config_reloads", "successful config reloads", node.reloads),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        conns = node.dns.connections if node.dns is not None else None
        tcp_closed = CounterMetricFamily("gslb_dns_tcp_closed", "DNS TCP connections closed or refused, by reason",
                                         labels=["reason"])
        for reason in TCP_CLOSE_REASONS:
            tcp_closed.add_metric([reason], conns.closed[reason] if conns is not None else 0)
        yield tcp_closed
        yield GaugeMetricFamily("gslb_dns_tcp_connections", "DNS TCP connections open",
                                value=len(conns.open) if conns is not None else 0)
        yield _histogram("gslb_dns_resolve_seconds", "time to build an uncached reply", LATENCY_BUCKETS,
                         stats.latency_counts, stats.latency_sum)
        yield GaugeMetricFamily("gslb_snapshot_generation", "generation of the snapshot in use",
                                value=node.snapshot.generation)
        rrl = node.dns.rrl if node.dns is not None else None
        if rrl is not None:
            limited = CounterMetricFamily(
                "gslb_dns_rrl_responses", "UDP replies response rate limiting held back (dropped, or slipped "
                "as TC=1; would_* in log_only mode) or let through as exempt; also counted in gslb_dns_replies",
                labels=["action", "kind"])
            for (action, kind), n in rrl.counts().items():
                limited.add_metric([action, kind], n)
            yield limited
            yield GaugeMetricFamily("gslb_dns_rrl_table_entries", "rate limiting accounts held",
                                    value=rrl.table_size)

        up = GaugeMetricFamily("gslb_endpoint_up", "1 when the endpoint is in answers (usable)",
                               labels=["name", "endpoint", "site"])
        vantage = GaugeMetricFamily("gslb_health_check_up", "a vantage point's verdict on a check (1 up)",
                                    labels=["check", "vantage"])
        transitions = CounterMetricFamily("gslb_health_transitions", "state changes of a check (this node)",
                                          labels=["check"])
        for name, table in sorted(node.snapshot.services.items()):
            usable = {ep.id for ep in table.candidates}
            for ep in (*table.spec.endpoints, *(e for e in table.admitted if e not in table.spec.endpoints)):
                up.add_metric([name, ep.id, ep.site], 1.0 if ep.id in usable else 0.0)
        for check_key, health in node.tracker.targets.items():
            vantage.add_metric([health.name, node.store.node_id], 1.0 if health.state == "up" else 0.0)
            transitions.add_metric([health.name], health.flaps)
            for other, state in node.votes.get(node.check_name(check_key), {}).items():
                if other != node.store.node_id:
                    vantage.add_metric([health.name, other], 1.0 if state == "up" else 0.0)
        yield up
        yield vantage
        yield transitions
        if node.scheduler is not None:
            sched = node.scheduler.stats
            yield CounterMetricFamily("gslb_health_checks", "health checks run", value=sched.checks)
            yield CounterMetricFamily("gslb_health_check_failures", "health checks that failed", value=sched.failures)
            yield _histogram("gslb_health_check_seconds", "duration of health checks", CHECK_BUCKETS,
                             sched.latency_counts, sched.latency_sum)
            lag = GaugeMetricFamily("gslb_health_schedule_lag_seconds", "how late checks start (recent quantiles)",
                                    labels=["quantile"])
            for q in (0.5, 0.99):
                lag.add_metric([str(q)], sched.lag_quantile(q))
            yield lag
        status = node.store.status()
        store = GaugeMetricFamily("gslb_store_up", "1 when the state store is reachable", labels=["backend"])
        store.add_metric([status.backend], 1.0 if status.healthy else 0.0)
        yield store
        yield GaugeMetricFamily("gslb_store_sync_age_seconds", "seconds since overrides were last read from the store",
                                value=node.sync_age())
        if node.mesh is not None:
            yield from _mesh(node.mesh.view())


def _mesh(view: dict[str, Any]) -> Iterator[Metric]:
    """Cluster links from ``gslb.meshstatus``; what no gateway could tell (unknown) is left out."""
    up = GaugeMetricFamily("gslb_mesh_link_up", "1 when the cluster link is up (draining included), as its "
                           "gateways last reported", labels=["from", "to"])
    rtt = GaugeMetricFamily("gslb_mesh_link_rtt_seconds", "median ping round trip of the cluster link",
                            labels=["from", "to"])
    for link in view["links"]:
        key = [link["from"], link["to"]]
        if link["state"] != "unknown":
            up.add_metric(key, 1.0 if link["state"] in ("up", "draining") else 0.0)
        if link["rtt_ms"] is not None:
            rtt.add_metric(key, link["rtt_ms"] / 1000)
    reachable = GaugeMetricFamily("gslb_mesh_gateway_reachable", "1 when the cluster gateway's status API "
                                  "answered the last poll (clusters with an api address)", labels=["cluster"])
    age = GaugeMetricFamily("gslb_mesh_gateway_status_age_seconds", "seconds since the cluster gateway last "
                            "answered", labels=["cluster"])
    for cluster in view["clusters"]:
        if cluster["api"] is not None:
            reachable.add_metric([cluster["name"]], 1.0 if cluster["reachable"] else 0.0)
        if cluster["age"] is not None:
            age.add_metric([cluster["name"]], cluster["age"])
    yield from (up, rtt, reachable, age)


def render(node: Node) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return generate_latest(registry)
