"""``gslb serve | check``: the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from clusterlink.ca_cli import add_ca_commands, cmd_ca
from gslb.config import HostPort, load_config
from gslb.errors import ConfigError, GslbError

log = logging.getLogger("gslb")


def _hostport(text: str) -> tuple[str, int]:
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(HostPort).validate_python(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gslb", description="Global server load balancer (authoritative DNS)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one GSLB node")
    serve.add_argument("-c", "--config", required=True, type=Path)
    serve.add_argument("--dns", type=_hostport, action="append", metavar="HOST:PORT",
                       help="DNS listen address (repeatable); overrides server.dns.listen")
    serve.add_argument("--http", type=_hostport, metavar="HOST:PORT", help="overrides server.http.listen")
    serve.add_argument("--no-http", action="store_true", help="do not start the HTTP API")
    serve.add_argument("--redis", metavar="URL", help="shared state store (redis://, rediss://, unix://)")
    serve.add_argument("--workers", type=int, help="DNS processes sharing the ports (SO_REUSEPORT)")
    serve.add_argument("--takeover", type=Path, metavar="PATH",
                       help="hand-over socket: take the listeners over from the node serving there, then "
                            "hand them to the next (overrides server.handover_socket)")
    serve.add_argument("--state-file", type=Path, metavar="PATH",
                       help="keep the embedded store's drains, registrations and events across restarts "
                            "(overrides store.state_file)")

    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("-c", "--config", required=True, type=Path)

    demo = sub.add_parser("demo", help="three local backends, one node: watch failover live")
    demo.add_argument("--dns", type=_hostport, metavar="127.0.0.1:PORT", help="DNS port for the demo node")
    demo.add_argument("--script", help="timetable instead of keys, e.g. '3:stop eu-west,9:start eu-west'")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")

    explain = sub.add_parser("explain", help="which answer a client gets, and why")
    explain.add_argument("-c", "--config", required=True, type=Path)
    explain.add_argument("name")
    explain.add_argument("--type", default="A", help="query type (default A)")
    explain.add_argument("--client", required=True, help="the resolver's (or client's) address")
    explain.add_argument("--ecs", help="EDNS Client Subnet the resolver sends, e.g. 81.2.69.0/24")
    explain.add_argument("--json", action="store_true", help="print the trace as JSON")
    add_ca_commands(sub)

    link = sub.add_parser("link", help="run a cluster-link gateway (east-west traffic over mTLS)")
    link.add_argument("-c", "--config", required=True, type=Path)
    link.add_argument("--cluster", required=True, help="which mesh.clusters entry this gateway is")
    link.add_argument("--api", type=_hostport, metavar="HOST:PORT", help="status and metrics HTTP listener")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "ca":
        return cmd_ca(args)
    if args.command == "link":
        return cmd_link(args)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "explain":
        return cmd_explain(args)
    if args.command == "demo":
        return cmd_demo(args)
    return cmd_serve(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from gslb.demo import parse_script, run_demo

    try:
        script = parse_script(args.script) if args.script else None
    except ValueError as exc:
        print(f"gslb demo: {exc}", file=sys.stderr)
        return 2
    _use_uvloop()
    return asyncio.run(run_demo(dns_port=args.dns[1] if args.dns else 0, script=script,
                                duration=args.duration, keys=script is None))


def cmd_link(args: argparse.Namespace) -> int:
    from clusterlink.run import serve_gateway

    _use_uvloop()
    _tune_gc()
    return asyncio.run(serve_gateway(args.config, args.cluster, args.api))


def cmd_explain(args: argparse.Namespace) -> int:
    import json

    from gslb.explain import explain, format_explanation
    from gslb.snapshot import build_snapshot

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        result = explain(build_snapshot(loaded.compiled), args.name, args.type, args.client, args.ecs)
    except (ValueError, AttributeError) as exc:
        print(f"gslb explain: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_explanation(result))
    return 0


def cmd_check(path: Path) -> int:
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        print(f"{exc.source}: invalid config, {len(exc.errors)} error(s)", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    zones = loaded.compiled.zones
    records = sum(len(rrset.rrs) for z in zones.values() for node in z.nodes.values() for rrset in node.values())
    services = sum(len(z.services) for z in zones.values())
    print(f"{path}: ok ({len(zones)} zone(s), {records} record(s), {len(loaded.config.sites)} site(s), "
          f"{services} GSLB name(s))")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dnsserver.server import bind_listener
    from gslb.handover import Handover, from_systemd
    from gslb.node import Node, install_signals

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    store_config = loaded.config.store
    if args.redis:
        from pydantic import ValidationError

        from gslb.config import StoreConfig

        try:
            store_config = StoreConfig.model_validate(
                {**store_config.model_dump(exclude_none=True), "type": "redis", "url": args.redis})
        except ValidationError as exc:
            log.error("--redis %s: %s", args.redis, exc.errors()[0]["msg"])
            return 2
    state_file = args.state_file or _beside(args.config, store_config.state_file)
    if state_file is not None:
        if store_config.type != "memory":
            log.error("--state-file keeps the embedded store's state; the %s store keeps its own across "
                      "restarts", store_config.type)
            return 2
        store_config = store_config.model_copy(update={"state_file": state_file})
    server = loaded.config.server
    listen = args.dns or server.dns.listen
    http: tuple[str, int] | socket.socket | None = None if args.no_http else (args.http or server.http.listen)
    workers = args.workers or server.dns.workers
    takeover = args.takeover or _beside(args.config, server.handover_socket)
    if takeover is not None and workers > 1:
        log.error("--takeover: handing the sockets of several worker processes over is not supported; "
                  "run with --workers 1")
        return 2
    handover = Handover(takeover) if takeover is not None else None
    try:
        inherited = (handover.take() if handover is not None else None) or from_systemd()
        if inherited is not None and workers > 1:
            raise GslbError("sockets from systemd need --workers 1")
        if inherited is None:
            listeners = [bind_listener(host, port, reuse_port=workers > 1) for host, port in listen]
        else:
            listeners = inherited.listeners(listen, bind_listener)
            if isinstance(http, tuple):
                http = inherited.take(socket.SOCK_STREAM, *http) or http
            inherited.close_rest()
    except GslbError as exc:
        log.error("%s", exc)
        return 2

    children: list[int] = []
    worker = 0
    for index in range(1, workers):
        pid = os.fork()
        if pid == 0:
            worker = index
            children = []
            own = [bind_listener(lst.host, lst.port, reuse_port=True) for lst in listeners]
            for lst in listeners:
                lst.close()
            listeners = own
            http = None
            break
        children.append(pid)

    label = f" (worker {worker})" if workers > 1 else ""

    async def run() -> None:
        from gslb.store import make_store

        sites = {name: (site.lat, site.lon) for name, site in loaded.config.sites.items()}
        default_id = f"{socket.gethostname()}/{listeners[0].host}:{listeners[0].port}" if listeners else None
        node = Node(args.config, loaded, label=label,  # only the first process writes the state file
                    store=make_store(store_config, sites=sites, default_node_id=default_id, persist=worker == 0))
        stop = asyncio.Event()
        install_signals(node, stop)
        if children:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: _forward(children, signal.SIGHUP, node))
        await node.run(listeners, http, stop, handover=handover)

    _use_uvloop()
    _tune_gc()
    try:
        asyncio.run(run())
    except GslbError as exc:
        log.error("%s", exc)
        return 2
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    if worker:
        os._exit(0)
    return 0


def _forward(children: list[int], sig: signal.Signals, node: object) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    asyncio.get_running_loop().create_task(node.reload())  # type: ignore[attr-defined]


def _beside(config: Path, path: Path | None) -> Path | None:
    """A path from the config file, relative to that file."""
    return None if path is None else config.parent / path


def _tune_gc() -> None:
    """Answers, checks and carried connections allocate many short-lived objects: collect the
    young generation less often (each collection is a pause for every packet waiting)."""
    gc.set_threshold(10_000, 20, 20)


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    sys.exit(main())
