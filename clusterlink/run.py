"""``gslb link -c FILE --cluster NAME``: run one cluster's gateway until told to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path

from clusterlink.gateway import Gateway
from gslb.config import load_config
from gslb.errors import ConfigError

log = logging.getLogger("gslb.link")


async def serve_gateway(config_path: Path, cluster: str, api: tuple[str, int] | None = None) -> int:
    try:
        loaded = load_config(config_path)
        gateway = Gateway(loaded.config, cluster, config_path.parent)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except (ValueError, OSError) as exc:
        log.error("cannot start the gateway of %s: %s", cluster, exc)
        return 2
    await gateway.start()
    runner = None
    api_address = api or gateway.plan.cluster.api
    if api_address is not None:
        from clusterlink.api import start_api

        runner, bound = await start_api(gateway, api_address)
        log.info("cluster %s: status API on http://%s:%d", cluster, *bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.check_files)
    # Config, contexts and listeners live as long as the process: keep them out of the
    # collector's reach so full collections stay short (as gslb serve does).
    gc.freeze()
    log.info("cluster %s: gateway ready", cluster)
    await stop.wait()
    log.info("cluster %s: stopping", cluster)
    if runner is not None:
        await runner.cleanup()
    await gateway.stop()
    return 0
