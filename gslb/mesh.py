"""The mesh section worked out: who exports what to whom, which peers each gateway dials.

Both the cluster-link gateway and the config checker read the mesh through this module, so
"cluster B may call service db in cluster A" is decided in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gslb.config import ClusterConfig, GslbConfig, MeshConfig, MeshTlsConfig
from gslb.errors import FieldError

ANY_CLUSTER = "*"


def exported_to(export_to: list[str], caller: str) -> bool:
    return ANY_CLUSTER in export_to or caller in export_to


def exporters(mesh: MeshConfig, service: str, importer: str) -> list[str]:
    """Clusters that export ``service`` to ``importer``, in config order."""
    return [name for name, cluster in mesh.clusters.items()
            if name != importer and service in cluster.exports
            and exported_to(cluster.exports[service].to, importer)]


@dataclass(frozen=True)
class ImportPlan:
    service: str
    listen: tuple[str, int]
    sources: tuple[str, ...]
    """Clusters this import may be served by."""


@dataclass(frozen=True)
class ClusterPlan:
    name: str
    trust_domain: str
    cluster: ClusterConfig
    tls: MeshTlsConfig
    imports: tuple[ImportPlan, ...]
    peers: tuple[str, ...]
    """Clusters this gateway dials: every cluster one of its imports may be served by."""


def default_tls(mesh: MeshConfig, name: str, base_dir: Path) -> MeshTlsConfig:
    folder = base_dir / mesh.certs_dir / "clusters" / name
    return MeshTlsConfig(cert=folder / "cert.pem", key=folder / "key.pem", ca=folder / "ca.pem")


def cluster_plan(mesh: MeshConfig, name: str, base_dir: Path) -> ClusterPlan:
    cluster = mesh.clusters[name]
    if cluster.tls is None:
        tls = default_tls(mesh, name, base_dir)
    else:
        tls = MeshTlsConfig(cert=base_dir / cluster.tls.cert, key=base_dir / cluster.tls.key,
                            ca=base_dir / cluster.tls.ca)
    imports = []
    for service, imp in cluster.imports.items():
        allowed = exporters(mesh, service, name)
        sources = [c for c in imp.from_ if c in allowed] if imp.from_ is not None else allowed
        imports.append(ImportPlan(service, imp.listen, tuple(sources)))
    peers = tuple(dict.fromkeys(c for plan in imports for c in plan.sources))
    return ClusterPlan(name, mesh.trust_domain, cluster, tls, tuple(imports), peers)


def mesh_errors(config: GslbConfig) -> list[FieldError]:
    """Cross-references pydantic cannot see: unknown clusters and sites, imports nobody
    exports, addresses used twice."""
    mesh = config.mesh
    if mesh is None:
        return []
    errors: list[FieldError] = []
    names = set(mesh.clusters)
    gateways: dict[tuple[str, int], str] = {}
    for name, cluster in mesh.clusters.items():
        base: tuple[str | int, ...] = ("mesh", "clusters", name)
        if cluster.site is not None and cluster.site not in config.sites:
            errors.append(FieldError(base + ("site",), f"unknown site {cluster.site!r}"))
        bind = cluster.listen or cluster.gateway
        if bind in gateways:
            errors.append(FieldError(base + ("gateway",), f"address already used by cluster {gateways[bind]}"))
        gateways[bind] = name
        for peer in cluster.costs:
            if peer not in names or peer == name:
                errors.append(FieldError(base + ("costs", peer), "not another cluster of the mesh"))
        for service, export in cluster.exports.items():
            for i, peer in enumerate(export.to):
                if peer != ANY_CLUSTER and (peer not in names or peer == name):
                    errors.append(FieldError(base + ("exports", service, "to", i),
                                             f"{peer!r} is not another cluster of the mesh"))
        listens: dict[tuple[str, int], str] = {}
        for service, imp in cluster.imports.items():
            path = base + ("imports", service)
            if imp.listen in listens:
                errors.append(FieldError(path + ("listen",), f"address already used by import {listens[imp.listen]}"))
            listens[imp.listen] = service
            allowed = exporters(mesh, service, name)
            if imp.from_ is None:
                if not allowed:
                    errors.append(FieldError(path, f"no cluster exports {service!r} to {name!r}"))
                continue
            for i, peer in enumerate(imp.from_):
                if peer not in allowed:
                    errors.append(FieldError(path + ("from", i), f"cluster {peer!r} does not export {service!r} "
                                                                  f"to {name!r}"))
    return errors
