"""``mesh``: a mesh-aware name. A client inside a cluster of the mesh (its address, or its
ECS subnet, in the cluster's ``networks``) gets its own site's endpoints while any is
usable, else its cluster gateway's listener for the imported ``service`` while that gateway
has a route to another cluster, else the rest of the chain as usual. Clients outside every
cluster never get a gateway, not even from fallback ``all``.

```yaml
policy:
  - type: mesh
    service: db            # as in mesh.clusters.<name>.imports
    monitor: {interval: 2, timeout: 1, rise: 2, fall: 2}   # checks of the gateways' routes
  - type: geo              # orders the local endpoints, or the others when no local one is up
```

- **First in the chain.** It decides which endpoints the other policies see, and it decides
  among the usable ones before any fallback, so it must come first (a config error otherwise).
- **Gateway endpoints.** For every cluster with ``site``, ``networks`` and an import of
  ``service``, compile adds a hidden endpoint ``gateway/<cluster>``: site = the cluster's
  site, address = the import's ``advertise`` (default: its listen host; a wildcard listen
  needs ``advertise``). Its health check is ``GET /api/v1/routes/<service>`` on the cluster's
  status ``api`` (200 while the gateway has a route; 503 without), so every node's verdict
  goes through the state store like any other. Hidden means: never a candidate of the chain,
  never in a fallback, and only an endpoint drain naming it takes it out (a site drain of the
  cluster's site is exactly what should send its clients to the gateway). DNS answers carry
  no port: the import should listen on the service's own port.
- **Per address family**, like the rest of the chain: an A query decides among endpoints and
  gateways with an IPv4 address, an AAAA query among those with IPv6.
- **ECS scope.** The decision depends only on which cluster network holds the client's
  address, so the scope is the shortest prefix of that address whose every address gets the
  same cluster: the longest matching network's length, widened past the first bit where the
  address differs from each cluster network that does not hold it (a longer one nested in
  the match, or one nearby; the rule ``topology`` uses). With no match this keeps every
  cluster network out of the scope, so an answer for an outside client is never cached for a
  subnet that overlaps a cluster. Overlapping networks stay apart: 10.0.0.0/8 in cluster A
  and 10.1.0.0/16 in B give client 10.2.3.0/24 scope /15, not /8. A resolver that sends fewer
  bits than a cluster network inside its subnet has (10.0.0.0/8 around 10.1.0.0/16) cannot
  be answered exactly: the scope comes out longer than its source prefix, which RFC 7871
  (7.2.1) defines as "ask with more bits". A family with no cluster network gets scope 0 (the
  whole family alike), still marked as depending on the client, so an IPv6 client never gets
  an answer cached for an IPv4 one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from gslb.endpoint import Endpoint, stable_seed
from gslb.errors import FieldError
from gslb.policies.base import Coordinates, Policy, PolicyConfig, Selection, register
from healthmon.http import HttpConfig

if TYPE_CHECKING:
    from gslb.config import GslbConfig

Network = IPv4Network | IPv6Network
ROUTES_PATH = "/api/v1/routes/"
"""The gateway status API's route check: ``ROUTES_PATH + <service>``."""


class GatewayCheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: float = Field(2.0, ge=0.05, le=3600, description="seconds between checks of a gateway's route")
    timeout: float = Field(1.0, gt=0, le=60)
    rise: int = Field(2, ge=1, le=100)
    fall: int = Field(2, ge=1, le=100)


class MeshPolicyConfig(PolicyConfig):
    type: Literal["mesh"] = "mesh"
    service: str = Field(min_length=1, max_length=253, description="the imported mesh service")
    monitor: GatewayCheckConfig = Field(default_factory=lambda: GatewayCheckConfig())


@dataclass(frozen=True)
class MeshCluster:
    """A cluster as a mesh-aware name sees it: where its clients are, and its gateway
    endpoint (None when the cluster does not import the service)."""

    name: str
    site: str
    networks: tuple[Network, ...]
    gateway: Endpoint | None


@dataclass(frozen=True)
class GatewayCheck:
    """The health check of one gateway endpoint: ``monitor`` probes ``address``."""

    endpoint: Endpoint
    monitor: HttpConfig
    address: str


@dataclass(frozen=True, slots=True)
class Route:
    """The mesh step's decision for an in-cluster client: local endpoints (the chain goes on
    with them) or the gateway (answered as is)."""

    endpoints: Sequence[Endpoint]
    gateway: bool


def _describe(address: IPv4Address | IPv6Address, known: int) -> str:
    return str(address) if known >= address.max_prefixlen else f"{address}/{known}"


def _where(sel: Selection, cluster: MeshCluster, net: Network) -> str:
    return f"mesh: client {_describe(*sel.client.subject)} is inside cluster {cluster.name} ({net})"


@register
class MeshPolicy(Policy):
    name = "mesh"
    config_model = MeshPolicyConfig
    config: MeshPolicyConfig

    def __init__(self, config: MeshPolicyConfig, coordinates: Coordinates | None = None,
                 clusters: Sequence[MeshCluster] = ()) -> None:
        super().__init__(config, coordinates)
        self.clusters = tuple(clusters)
        nets = sorted(((net, cluster) for cluster in self.clusters for net in cluster.networks),
                      key=lambda item: item[0].prefixlen, reverse=True)  # stable: config order breaks ties
        self._nets: dict[int, list[tuple[int, int, Network, MeshCluster]]] = {4: [], 6: []}
        for net, cluster in nets:
            self._nets[net.version].append((int(net.network_address), net.prefixlen, net, cluster))
        self._local: dict[int, tuple[Sequence[Endpoint], dict[str, tuple[Endpoint, ...]]]] = {}

    def cluster_of(self, sel: Selection) -> tuple[MeshCluster, Network] | None:
        """The cluster whose network holds the client (longest match); widens the scope as
        the module docstring explains."""
        if not self.clusters:
            return None
        address = sel.address()
        value, bits = int(address), address.max_prefixlen
        match: tuple[MeshCluster, Network] | None = None
        scope = 0
        for start, prefix, net, cluster in self._nets[address.version]:
            common = bits - (value ^ start).bit_length()
            if common >= prefix:
                if match is None:
                    match = (cluster, net)
                    if prefix > scope:
                        scope = prefix
            elif common >= scope:
                scope = common + 1
        sel.depends_on(scope)
        return match

    def _local_of(self, candidates: Sequence[Endpoint]) -> dict[str, tuple[Endpoint, ...]]:
        """Candidates by site, memoised per candidate tuple (snapshots keep them stable), so
        later policies see the same tuple for every query and can memoise on it too."""
        known = self._local.get(id(candidates))
        if known is None or known[0] is not candidates:
            by_site: dict[str, list[Endpoint]] = {}
            for ep in candidates:
                by_site.setdefault(ep.site, []).append(ep)
            if len(self._local) > 10_000:
                self._local.clear()
            known = self._local[id(candidates)] = (candidates, {s: tuple(eps) for s, eps in by_site.items()})
        return known[1]

    def route(self, candidates: Sequence[Endpoint], gateways: Sequence[Endpoint], sel: Selection, *,
              v6: bool | None = None) -> Route | None:
        """The decision for this client among usable ``candidates`` and healthy ``gateways``;
        None: the rest of the chain decides, without gateways. ``v6``: the address family
        asked for (None: any)."""
        found = self.cluster_of(sel)
        trace = sel.trace is not None
        if found is None:
            if self.clusters and trace:
                sel.note(f"mesh: client {_describe(*sel.client.subject)} is inside no cluster of the mesh; "
                         "gateways are not answered")
            return None
        cluster, net = found
        local = self._local_of(candidates).get(cluster.site)
        if local:
            if trace:
                sel.note(f"{_where(sel, cluster, net)}; answering its site {cluster.site}: "
                         + ", ".join(ep.id for ep in local))
            return Route(local, False)
        gateway = cluster.gateway
        if gateway is not None and gateway in gateways and (
                v6 is None or (gateway.ipv6 if v6 else gateway.ipv4) is not None):
            if trace:
                shown = (gateway.ipv4, gateway.ipv6) if v6 is None else (gateway.ipv6 if v6 else gateway.ipv4,)
                sel.note(f"{_where(sel, cluster, net)}; local endpoints down; answering {gateway.id} "
                         + " ".join(str(a) for a in shown if a is not None))
            return Route((gateway,), True)
        if trace:
            if gateway is None:
                why = f"cluster {cluster.name} does not import {self.config.service}"
            elif v6 is not None and (gateway.ipv6 if v6 else gateway.ipv4) is None:
                why = f"{gateway.id} has no IPv{6 if v6 else 4} address"
            else:
                why = f"{gateway.id} down (no route)"
            sel.note(f"{_where(sel, cluster, net)}; local endpoints down; {why}; "
                     "the rest of the chain decides, without gateways")
        return None

    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        """As a plain policy (no gateway known): the client's own site first, when it has any."""
        route = self.route(candidates, (), sel)
        return route.endpoints if route is not None else candidates


def plan_mesh(config: GslbConfig, service_path: tuple[str | int, ...], policy: MeshPolicyConfig
              ) -> tuple[list[MeshCluster], list[GatewayCheck], list[FieldError]]:
    """The clusters and gateway checks of a mesh-aware name, from the config's mesh section;
    ``service_path`` locates the policy's ``service`` key for errors."""
    mesh = config.mesh
    if mesh is None:
        return [], [], [FieldError(service_path, "a mesh policy needs the config's 'mesh' section")]
    service = policy.service
    clusters: list[MeshCluster] = []
    checks: list[GatewayCheck] = []
    errors: list[FieldError] = []
    importers = 0
    for name, cluster in mesh.clusters.items():
        if cluster.site is None or not cluster.networks:
            continue  # its clients cannot be told apart: not part of any mesh-aware decision
        base: tuple[str | int, ...] = ("mesh", "clusters", name)
        imp = cluster.imports.get(service)
        gateway: Endpoint | None = None
        if imp is not None:
            importers += 1
            address = imp.advertised()
            if address is None:
                errors.append(FieldError(base + ("imports", service, "advertise"),
                                         f"the import listens on {imp.listen[0]}, which is not an address to "
                                         f"answer: set 'advertise' to the address clients in {name} connect to"))
            probe = _api_address(cluster.api, cluster.gateway)
            if cluster.api is None:
                errors.append(FieldError(base + ("api",), f"mesh-aware names check {name}'s gateway at its status "
                                                          f"API ({ROUTES_PATH}{service}): set 'api'"))
            elif probe is None:
                errors.append(FieldError(base + ("api",), "the status API listens on a wildcard and so does "
                                                          "'gateway': no address to check it at"))
            if address is not None and probe is not None and cluster.api is not None:
                ident = f"gateway/{name}"
                v4 = address if isinstance(address, IPv4Address) else None
                v6 = address if isinstance(address, IPv6Address) else None
                gateway = Endpoint(ident, cluster.site, v4, v6, None, 1, stable_seed(ident))
                monitor = HttpConfig(type="http", port=cluster.api[1], path=ROUTES_PATH + quote(service, safe=""),
                                     expect_status=[200], interval=policy.monitor.interval,
                                     timeout=policy.monitor.timeout, rise=policy.monitor.rise,
                                     fall=policy.monitor.fall)
                checks.append(GatewayCheck(gateway, monitor, probe))
        clusters.append(MeshCluster(name, cluster.site, tuple(cluster.networks), gateway))
    if not importers:
        errors.append(FieldError(service_path, f"no cluster of the mesh with 'site' and 'networks' imports "
                                               f"{service!r}"))
    return clusters, checks, errors


def _api_address(api: tuple[str, int] | None, gateway: tuple[str, int]) -> str | None:
    """Where nodes reach a gateway's status API: its own host, or the gateway's when the API
    listens on a wildcard (``gateway`` is where other clusters reach this one)."""
    if api is None:
        return None
    for host in (api[0], gateway[0]):
        if not ip_address(host).is_unspecified:
            return host
    return None
