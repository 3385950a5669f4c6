"""The site config: pydantic models, YAML loading, and errors located by field path and line.

Every problem is reported at once as ``path.to.field: message (line N)``; nothing is
checked later at query time. Semantic checks that need the whole zone tree (duplicates,
CNAME conflicts, out-of-zone names, unknown sites) live in ``gslb.compile``.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import operator
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gslb.errors import ConfigError, FieldError
from gslb.names import normalize_name
from gslb.policies import POLICIES
from healthmon import MONITORS

TTL_MAX = 2**31 - 1

DomainName = Annotated[str, AfterValidator(normalize_name)]
Ttl = Annotated[int, Field(ge=0, le=TTL_MAX)]


def _parse_hostport(value: Any) -> Any:
    """``127.0.0.1:53``, ``[::1]:53`` or ``:53`` (all IPv4 addresses) to ``(host, port)``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPv6]:PORT, got {value!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (listen on addresses, not host names)") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port!r}")
    return (host, int(port))


HostPort = Annotated[tuple[str, int], BeforeValidator(_parse_hostport)]


def _parse_ip(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address") from None
    return no_zone(value)


def no_zone(value: Any) -> Any:
    """Refuse IPv6 zone ids (fe80::1%eth0): they mean nothing in a DNS answer."""
    if isinstance(value, IPv6Address) and value.scope_id:
        raise ValueError(f"{value} has a zone id (%{value.scope_id}); answers need a plain address")
    return value


def _parse_network(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip())
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid network: {exc}") from None
    return value


IpAddress = Annotated[IPv4Address | IPv6Address, BeforeValidator(_parse_ip)]
Ipv6Address = Annotated[IPv6Address, AfterValidator(no_zone)]
IpNetwork = Annotated[IPv4Network | IPv6Network, BeforeValidator(_parse_network)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- server


PerSecond = Annotated[int, Field(ge=0, le=1_000_000)]


class RrlConfig(Strict):
    """Response rate limiting on UDP (BIND ``rate-limit``, NSD ``rrl-*``; see ``dnsserver.rrl``).
    A rate of 0 leaves that kind of reply unlimited; unset kinds use ``responses_per_second``.

        rrl: {responses_per_second: 20, slip: 2, exempt_clients: [192.0.2.0/24]}
    """

    responses_per_second: PerSecond = Field(20, description="answers per name and type to one client network")
    nxdomains_per_second: PerSecond | None = Field(None, description="NXDOMAIN replies per zone")
    nodata_per_second: PerSecond | None = Field(None, description="NODATA replies per zone")
    referrals_per_second: PerSecond | None = Field(None, description="referrals per delegation")
    errors_per_second: PerSecond | None = Field(None, description="REFUSED/FORMERR/SERVFAIL/NOTIMP, all together")
    window: int = Field(15, ge=1, le=3600, description="seconds a limited network must slow down for")
    slip: int = Field(2, ge=0, le=10, description="every Nth limited reply goes out as TC=1; 0: drop all")
    ipv4_prefix_length: int = Field(24, ge=0, le=32, description="IPv4 clients are counted per this network")
    ipv6_prefix_length: int = Field(56, ge=0, le=128, description="IPv6 clients are counted per this network")
    exempt_clients: list[IpNetwork] = Field(default_factory=list, description="never limited")
    log_only: bool = Field(False, description="count and log what would be limited, send everything")
    max_table_size: int = Field(100_000, ge=100, le=10_000_000, description="accounts kept (oldest go first)")


class DnsListenerConfig(Strict):
    listen: list[HostPort] = Field(default_factory=lambda: [("127.0.0.1", 5353)], min_length=1)
    edns_udp_size: int = Field(1232, ge=512, le=4096, description="largest UDP reply we send")
    tcp_idle_timeout: float = Field(10.0, gt=0, le=3600)
    tcp_max_connections: int = Field(1024, ge=1, le=1_000_000, description="at the cap, the least recently "
                                     "active idle connection is closed to make room, else the newcomer is refused")
    tcp_max_per_client: int = Field(32, ge=1, le=1_000_000,
                                    description="connections one client (IPv4 address, IPv6 /64) may hold")
    tcp_read_timeout: float = Field(5.0, gt=0, le=3600, description="a message must arrive whole within this "
                                    "many seconds of its first byte (slowloris defence)")
    tcp_write_timeout: float = Field(5.0, gt=0, le=3600, description="a client that stops reading its replies "
                                     "is closed after this many seconds")
    workers: int = Field(1, ge=1, le=256, description="processes sharing the ports (SO_REUSEPORT)")
    rrl: RrlConfig | None = Field(None, description="response rate limiting on UDP; off when absent")


class HttpListenerConfig(Strict):
    listen: HostPort | None = ("127.0.0.1", 8053)
    token: str | None = Field(None, min_length=16, description="bearer token for write calls")
    token_env: str = Field("GSLB_API_TOKEN", description="environment variable read when 'token' is unset")
    read_token: bool = Field(False, description="require the token for reads too")
    tls_cert: Path | None = Field(None, description="serve the API over HTTPS with this certificate (PEM)")
    tls_key: Path | None = Field(None, description="and this private key (PEM)")

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpListenerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        return self


class SentinelConfig(Strict):
    master: str = Field("mymaster", description="the master's name as the sentinels know it")
    addresses: list[HostPort] = Field(min_length=1)


class StoreConfig(Strict):
    """Where shared state lives: this process (``memory``) or Redis, shared by every node."""

    type: Literal["memory", "redis"] = "memory"
    url: str | None = Field(None, pattern=r"^(redis|rediss|unix)://", description="redis://, rediss:// or unix://")
    sentinel: SentinelConfig | None = None
    prefix: str = Field("gslb:", min_length=1, max_length=64, description="key prefix, so deployments can share")
    node_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="default: the host name")
    quorum: int | None = Field(None, ge=1, le=100, description="down votes needed; default: a majority")
    stale_after: float = Field(10.0, gt=0, le=3600, description="ignore a node's reports after this silence")
    state_file: Path | None = Field(
        None, description="memory store: keep drains, registrations and events here across restarts; "
                          "relative to the config file")

    @model_validator(mode="after")
    def _where(self) -> StoreConfig:
        if self.type == "redis" and not self.url and self.sentinel is None:
            raise ValueError("a redis store needs 'url' or 'sentinel'")
        if self.type == "redis" and self.state_file is not None:
            raise ValueError("state_file is for the memory store; redis keeps its state across restarts")
        return self


class ServerConfig(Strict):
    dns: DnsListenerConfig = Field(default_factory=lambda: DnsListenerConfig())
    http: HttpListenerConfig = Field(default_factory=lambda: HttpListenerConfig())
    probe_source: IpAddress | None = Field(
        None, description="local address this node's health checks come from (multi-homed hosts)")
    handover_socket: Path | None = Field(
        None, description="Unix socket through which a restarted node takes the listeners over (--takeover); "
                          "relative to the config file")


# --------------------------------------------------------------------------- zones


class SoaConfig(Strict):
    mname: DomainName | None = Field(None, description="primary master; default: the first nameserver")
    rname: str = Field("hostmaster", description="responsible mailbox, 'user@domain' or dotted")
    serial: int | None = Field(None, ge=1, le=2**32 - 1, description="default: time of loading")
    refresh: Ttl = 3600
    retry: Ttl = 900
    expire: Ttl = 1209600
    ttl: Ttl | None = Field(None, description="TTL of the SOA record itself; default: the zone ttl")


class NameServerConfig(Strict):
    name: DomainName
    addresses: list[IpAddress] = Field(default_factory=list)


class _RecordBase(Strict):
    name: str = Field(description="'@', a name relative to the zone, or an absolute name")
    ttl: Ttl | None = None


class ARecord(_RecordBase):
    type: Literal["A"]
    address: IPv4Address


class AAAARecord(_RecordBase):
    type: Literal["AAAA"]
    address: Ipv6Address


class CnameRecord(_RecordBase):
    type: Literal["CNAME"]
    target: DomainName


class NsRecord(_RecordBase):
    type: Literal["NS"]
    target: DomainName


class MxRecord(_RecordBase):
    type: Literal["MX"]
    preference: int = Field(ge=0, le=65535)
    exchange: DomainName


def _text_chunks(value: Any) -> Any:
    """TXT data: one string or a list; each string may be long and is split into 255-byte
    character-strings on the wire."""
    return [value] if isinstance(value, str) else value


class TxtRecord(_RecordBase):
    type: Literal["TXT"]
    text: Annotated[list[Annotated[str, Field(max_length=4000)]], BeforeValidator(_text_chunks)] = Field(
        min_length=1
    )


class SrvRecord(_RecordBase):
    type: Literal["SRV"]
    priority: int = Field(ge=0, le=65535)
    weight: int = Field(ge=0, le=65535)
    port: int = Field(ge=0, le=65535)
    target: DomainName


class CaaRecord(_RecordBase):
    type: Literal["CAA"]
    flags: int = Field(0, ge=0, le=255)
    tag: str = Field(pattern=r"^[A-Za-z0-9]{1,15}$")
    value: str = Field(max_length=1000)


Record = Annotated[
    ARecord | AAAARecord | CnameRecord | NsRecord | MxRecord | TxtRecord | SrvRecord | CaaRecord,
    Field(discriminator="type"),
]
RECORD_TYPES = ("A", "AAAA", "CNAME", "NS", "MX", "TXT", "SRV", "CAA")


class ZoneConfig(Strict):
    ttl: Ttl = Field(300, description="default TTL of records")
    negative_ttl: Ttl = Field(60, description="SOA minimum: how long resolvers cache NXDOMAIN/NODATA")
    soa: SoaConfig = Field(default_factory=lambda: SoaConfig())
    nameservers: list[NameServerConfig] = Field(min_length=1)
    records: list[Record] = Field(default_factory=list)
    allow_transfer: list[IpNetwork] = Field(
        default_factory=list, description="clients allowed AXFR/IXFR over TCP; none by default"
    )


# --------------------------------------------------------------------------- sites and services


class SiteConfig(Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    continent: Literal["AF", "AN", "AS", "EU", "NA", "OC", "SA"]
    labels: dict[str, str] = Field(default_factory=dict)


class EndpointConfig(Strict):
    site: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="id; default derived")
    ipv4: IPv4Address | None = None
    ipv6: Ipv6Address | None = None
    cname: DomainName | None = Field(None, description="answer a CNAME to this name (cloud LB hostname)")
    weight: int = Field(1, ge=0, le=1_000_000)
    enabled: bool = True
    probe_address: IpAddress | None = Field(
        None, description="address the monitor probes, when not the one answered (NAT, load balancer)")

    @model_validator(mode="after")
    def _one_kind(self) -> EndpointConfig:
        has_addr = self.ipv4 is not None or self.ipv6 is not None
        if has_addr == (self.cname is not None):
            raise ValueError("an endpoint has ipv4 and/or ipv6, or a cname, and not both")
        return self

    @property
    def id(self) -> str:
        if self.name:
            return self.name
        return f"{self.site}/{self.ipv4 or self.ipv6 or self.cname}"


def _policy_field() -> Any:
    models = tuple(cls.config_model for cls in POLICIES.values())
    if len(models) == 1:
        return models[0]
    return Annotated[functools.reduce(operator.or_, models), Field(discriminator="type")]


PolicyField = _policy_field()


def _monitor_field() -> Any:
    models = tuple(dict.fromkeys(cls.config_model for cls in MONITORS.values()))
    return Annotated[functools.reduce(operator.or_, models), Field(discriminator="type")]


MonitorField = _monitor_field()


def _fallback_mode(value: Any) -> Any:
    return {"mode": value} if isinstance(value, str) else value


class FallbackConfig(Strict):
    """What a name answers when none of its endpoints is usable."""

    mode: Literal["all", "pool", "static", "empty", "servfail"] = Field(
        "all", description="all: every enabled endpoint (fail open); pool: the 'endpoints' here; "
        "static: the 'addresses' here; empty: NODATA; servfail: SERVFAIL"
    )
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    addresses: list[IpAddress] = Field(default_factory=list)

    @model_validator(mode="after")
    def _needs_data(self) -> FallbackConfig:
        if self.mode == "pool" and not self.endpoints:
            raise ValueError("mode 'pool' needs 'endpoints'")
        if self.mode == "static" and not self.addresses:
            raise ValueError("mode 'static' needs 'addresses'")
        return self


def _policy_list(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class ServiceConfig(Strict):
    ttl: Ttl = 30
    answers: int | None = Field(None, ge=1, le=64, description="at most this many endpoints per answer")
    policy: Annotated[list[PolicyField], BeforeValidator(_policy_list)] = Field(  # type: ignore[valid-type]
        default_factory=lambda: [POLICIES["all"].config_model(type="all")],
        min_length=1,
        description="one policy, or a list applied in turn (each narrows and orders the previous)",
    )
    fallback: Annotated[FallbackConfig, BeforeValidator(_fallback_mode)] = Field(
        default_factory=lambda: FallbackConfig()
    )
    monitor: MonitorField | None = Field(None, description="health check of every endpoint")  # type: ignore[valid-type]
    min_ttl: Ttl = Field(5, description="lowest TTL health-aware shortening may go to")
    endpoints: list[EndpointConfig] = Field(min_length=1)


class GeoIpConfig(Strict):
    database: Path | None = Field(None, description="MaxMind City or Country .mmdb; relative to the config file")


# --------------------------------------------------------------------------- mesh (cluster link)

ClusterName = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]


class MeshTlsConfig(Strict):
    cert: Path = Field(description="gateway certificate chain (PEM); relative to the config file")
    key: Path = Field(description="its private key (PEM)")
    ca: Path = Field(description="trust bundle: the mesh CA (PEM)")


class ExportMonitorConfig(Strict):
    interval: float = Field(2.0, gt=0, le=3600, description="seconds between TCP connect checks")
    timeout: float = Field(1.0, gt=0, le=60)
    rise: int = Field(2, ge=1, le=100)
    fall: int = Field(2, ge=1, le=100)


class ExportConfig(Strict):
    """A local service other clusters may reach through this gateway (deny by default)."""

    endpoints: list[HostPort] = Field(min_length=1, description="local addresses the service listens on")
    to: list[Annotated[str, Field(pattern=r"^(\*|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$")]] = Field(
        min_length=1, description="clusters allowed to call it ('*' for every cluster of the mesh)")
    monitor: ExportMonitorConfig = Field(default_factory=lambda: ExportMonitorConfig())
    proxy_protocol: bool = Field(
        False, description="send a PROXY v2 header with the caller's address and cluster identity")


class ImportConfig(Strict):
    """A remote service reachable here through a local listener."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    listen: HostPort = Field(description="local address clients connect to")
    from_: list[ClusterName] | None = Field(
        None, alias="from", description="clusters to use; default: every cluster exporting it to us")
    advertise: IpAddress | None = Field(
        None, description="address clients in the cluster use for the listener (mesh-aware names answer it); "
                          "default: the listen host, unless that is a wildcard")

    def advertised(self) -> IPv4Address | IPv6Address | None:
        """The address DNS answers for this listener; None when ``listen`` is a wildcard (or
        has a zone id) and no ``advertise`` is given. Only mesh-aware names need one."""
        if self.advertise is not None:
            return self.advertise
        host = ipaddress.ip_address(self.listen[0])
        return None if host.is_unspecified or getattr(host, "scope_id", None) else host


class ClusterConfig(Strict):
    gateway: HostPort = Field(description="where peer gateways reach this cluster's gateway")
    listen: HostPort | None = Field(None, description="address the gateway binds; default: 'gateway'")
    site: str | None = Field(None, description="the GSLB site this cluster is")
    networks: list[IpNetwork] = Field(default_factory=list, description="client addresses inside the cluster")
    tls: MeshTlsConfig | None = Field(None, description="default: <certs_dir>/clusters/<name>/")
    api: HostPort | None = Field(None, description="status and metrics over HTTP")
    exports: dict[str, ExportConfig] = Field(default_factory=dict)
    imports: dict[str, ImportConfig] = Field(default_factory=dict)
    costs: dict[ClusterName, float] = Field(
        default_factory=dict, description="extra cost in milliseconds added to a peer's measured RTT")


class MeshDenyConfig(Strict):
    identities: list[str] = Field(default_factory=list, description="SPIFFE ids whose links are cut")
    serials: list[Annotated[str, Field(pattern=r"^(0x)?[0-9A-Fa-f]{1,2}(:?[0-9A-Fa-f]{1,2})*$")]] = Field(
        default_factory=list, description="certificate serials (hex, colons allowed) whose links are cut")


class MeshConfig(Strict):
    trust_domain: DomainName
    certs_dir: Path = Field(Path("mesh-ca"), description="where 'gslb ca' wrote the files; relative to the config")
    ping_interval: float = Field(1.0, ge=0.05, le=60, description="link probe period; dead after two")
    switch_margin_ms: float = Field(
        5.0, ge=0, le=10_000, description="hysteresis: a new route must be this much better to take over")
    deny: MeshDenyConfig = Field(default_factory=lambda: MeshDenyConfig())
    deny_file: Path | None = Field(None, description="YAML with 'identities' and 'serials', re-read when it changes")
    clusters: dict[ClusterName, ClusterConfig] = Field(min_length=1)


class GslbConfig(Strict):
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    geoip: GeoIpConfig = Field(default_factory=lambda: GeoIpConfig())
    store: StoreConfig = Field(default_factory=lambda: StoreConfig())
    zones: dict[DomainName, ZoneConfig] = Field(min_length=1)
    sites: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,63}$")], SiteConfig] = Field(
        default_factory=dict
    )
    services: dict[DomainName, ServiceConfig] = Field(default_factory=dict)
    mesh: MeshConfig | None = None


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class YamlDocument:
    """Parsed YAML plus where each key and item stood, for error messages."""

    data: Any
    lines: dict[tuple[str | int, ...], int]
    duplicates: list[FieldError]


def parse_yaml(text: str) -> YamlDocument:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(None, {}, [])
        lines: dict[tuple[str | int, ...], int] = {}
        duplicates: list[FieldError] = []
        _walk(node, (), lines, duplicates)
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return YamlDocument(data, lines, duplicates)


def _walk(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    duplicates: list[FieldError],
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            norm = key.lower().rstrip(".") if path in (("zones",), ("services",)) else key
            if norm in seen:
                duplicates.append(
                    FieldError(path + (key,), f"duplicate key (first defined on line {seen[norm]})", line)
                )
            else:
                seen[norm] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, duplicates)


_UNION_TAGS = set(RECORD_TYPES) | set(POLICIES) | set(MONITORS)
_TYPE_TAGS = {"int", "str", "float", "bool", "list", "dict", "none"}


def _clean_loc(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> tuple[str | int, ...]:
    """Drop pydantic's union tags and key markers so the path matches the YAML."""
    out: tuple[str | int, ...] = ()
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, str) and part in _UNION_TAGS and out + (part,) not in lines:
            continue
        if isinstance(part, str) and part in _TYPE_TAGS and out + (part,) not in lines:
            continue  # pydantic names the member of an 'int | str' union that failed
        if isinstance(part, int) and out + (part,) not in lines and out in lines:
            continue  # a single mapping given where a list is accepted
        if isinstance(part, str) and part.startswith(("function-", "json-or-python", "lax-or-strict")):
            continue
        out += (part,)
    return out


def line_of(path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    """The YAML line of ``path``, or of its nearest ancestor that appears in the file."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


def _pydantic_errors(exc: ValidationError, doc: YamlDocument) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        path = _clean_loc(tuple(err["loc"]), doc.lines)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        errors.append(FieldError(path, message, line_of(path, doc.lines)))
    return errors


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with its compiled zone tables, ready to build snapshots from."""

    source: str
    config: GslbConfig
    compiled: Any  # gslb.compile.CompiledConfig (imported lazily to keep this module light)


def load_config_text(text: str, source: str = "<config>", *, serial: int | None = None,
                     base_dir: Path | None = None) -> LoadedConfig:
    """Parse, validate and compile a config; raise ``ConfigError`` listing every problem."""
    from gslb.compile import compile_config

    try:
        doc = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [FieldError((), f"invalid YAML: {problem}", line)]) from None
    if not isinstance(doc.data, dict):
        raise ConfigError(source, [FieldError((), "the config must be a YAML mapping", 1)])
    errors = list(doc.duplicates)
    try:
        config = GslbConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(source, errors + _pydantic_errors(exc, doc)) from None
    compiled, semantic = compile_config(config, serial=serial, base_dir=base_dir or Path.cwd())
    errors += [FieldError(e.path, e.message, line_of(e.path, doc.lines)) for e in semantic]
    if errors:
        raise ConfigError(source, errors)
    return LoadedConfig(source, config, compiled)


def read_settled(path: Path, settle: float, attempts: int = 20) -> str:
    """The file's text once it has stopped changing: read, wait ``settle`` seconds, and
    check size and modification time did not move. An editor or deploy tool still writing
    the file must not get a half-written config swapped in (writers should rename a complete
    file into place; this catches the ones that don't)."""
    for _ in range(attempts):
        before = path.stat()
        data = path.read_bytes()
        time.sleep(settle)
        after = path.stat()
        if before.st_mtime_ns == after.st_mtime_ns and before.st_size == after.st_size == len(data):
            return data.decode("utf-8")
    raise OSError(errno.EBUSY, f"the file kept changing for {attempts * settle:.1f}s (still being written?)")


def load_config(path: str | Path, *, serial: int | None = None, settle: float = 0.0) -> LoadedConfig:
    """``settle`` > 0 (reloads): wait for the file to stop changing before reading it."""
    path = Path(path)
    try:
        text = read_settled(path, settle) if settle > 0 else path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [FieldError((), f"cannot read config: not UTF-8 ({exc.reason})")]) from None
    except OSError as exc:
        raise ConfigError(str(path), [FieldError((), f"cannot read config: {exc.strerror}")]) from None
    return load_config_text(text, str(path), serial=serial, base_dir=path.parent)

