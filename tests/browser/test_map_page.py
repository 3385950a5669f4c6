"""The application map page (``gslb/api/static/index.html``) in headless Chromium.

A real node (``threaded_node`` with its HTTP API) serves one GSLB name, app.map.test, with
one endpoint in each of three sites, 127.0.0.41 (us-east), .42 (eu-west) and .43
(ap-northeast). Each endpoint has a tiny HTTP backend of its own on one shared ephemeral
port, probed by the node's real HTTP monitor. The test drives the page through Selenium:
the first render, a backend stopping (seen live, without a reload), a drain from the
detail panel, and no errors in the browser console. Screenshots go to ``test-output/``.

A second node has a cluster-link mesh instead of GSLB names: clusters west (site eu-west)
and east (site us-east), whose gateways and status APIs run on a loop in a thread of this
process (certificates from the session's mesh PKI). The page draws the west -> east link
between the two sites, up with its RTT, lists the route of the imported service, and
shows the link down once east's gateway stops.

Every wait is bounded (WebDriverWait); the page is read through one script call per poll,
so re-renders (every 2 s, and on each server-sent event) cannot leave stale elements.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml
from aiohttp import web
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from clusterlink.api import start_api
from clusterlink.gateway import Gateway
from tests.support.mesh import start_gateway, write_mesh_config
from tests.support.mesh_pki import MeshPki
from tests.support.servers import ROOT, ThreadedNode, free_port, require_binary, threaded_node

NAME = "app.map.test"
TOKEN = "map-page-test-token-0123456789ab"  # 32 characters
SITES = {  # site: (lat, lon, country, continent, endpoint address), as config/example.yaml
    "us-east": (38.9, -77.0, "US", "NA", "127.0.0.41"),
    "eu-west": (50.1, 8.7, "DE", "EU", "127.0.0.42"),
    "ap-northeast": (35.7, 139.7, "JP", "AS", "127.0.0.43"),
}
ENDPOINT = {site: f"{site}/{values[4]}" for site, values in SITES.items()}  # the default endpoint ids
GEOIP = ROOT / "config" / "geoip" / "GeoIP2-City-Test.mmdb"
OUTPUT = ROOT / "test-output"
WAIT = 10.0  # bound of every wait in the browser
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900")
# client subnets in the GeoIP test database (config/geoip/README.md) and how many queries each
CLIENTS = (("81.2.69.160/32", "127.0.0.42", 6),   # London: eu-west
           ("2001:218::1/128", "127.0.0.43", 3),  # Japan: ap-northeast
           ("216.160.83.56/32", "127.0.0.41", 2))  # Milton WA: us-east


# --------------------------------------------------------------------------- backends


class Backends:
    """One HTTP 200 server per endpoint address, all on one port, on a loop in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="map-backends", daemon=True)
        self.thread.start()
        self.servers: dict[str, asyncio.Server] = {}
        self.port = 0

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    @staticmethod
    async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _start(self, address: str, port: int) -> int:
        server = await asyncio.start_server(self._answer, address, port)
        self.servers[address] = server
        return int(server.sockets[0].getsockname()[1])

    async def _stop(self, address: str) -> None:
        server = self.servers.pop(address, None)
        if server is not None:
            server.close()
            await server.wait_closed()

    def start_all(self, addresses: list[str]) -> None:
        """Bind the first address to port 0, the others to the port it got; retry on a clash."""
        first, *others = addresses
        for _ in range(20):
            port = self._call(self._start(first, 0))
            try:
                for address in others:
                    self._call(self._start(address, port))
            except OSError:
                for address in addresses:
                    self._call(self._stop(address))
                continue
            self.port = port
            return
        raise RuntimeError("no port free on every backend address in 20 tries")

    def stop(self, address: str) -> None:
        self._call(self._stop(address))

    def close(self) -> None:
        for address in list(self.servers):
            with contextlib.suppress(Exception):
                self.stop(address)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    b = Backends()
    try:
        b.start_all([values[4] for values in SITES.values()])
        yield b
    finally:
        b.close()


# --------------------------------------------------------------------------- the node


def config_yaml(port: int) -> str:
    sites = "".join(f"  {site}: {{lat: {lat}, lon: {lon}, country: {cc}, continent: {cont}}}\n"
                    for site, (lat, lon, cc, cont, _) in SITES.items())
    endpoints = "".join(f"      - {{site: {site}, ipv4: {values[4]}}}\n" for site, values in SITES.items())
    return (
        "geoip:\n"
        f"  database: {json.dumps(str(GEOIP))}\n"
        "server:\n"
        f"  http: {{listen: \"127.0.0.1:0\", token: \"{TOKEN}\"}}\n"
        "zones:\n"
        "  map.test:\n"
        "    ttl: 300\n"
        "    negative_ttl: 60\n"
        "    nameservers:\n"
        "      - name: ns1.map.test\n"
        "        addresses: [127.0.0.53]\n"
        "sites:\n"
        + sites
        + "services:\n"
        f"  {NAME}:\n"
        "    ttl: 30\n"
        "    policy: {type: geo}\n"
        f"    monitor: {{type: http, port: {port}, interval: 0.3, timeout: 0.25, rise: 1, fall: 1, jitter: 0}}\n"
        "    endpoints:\n"
        + endpoints
    )


@pytest.fixture
def node(backends: Backends) -> Iterator[ThreadedNode]:
    with threaded_node(config_yaml(backends.port), http=True) as handle:
        yield handle


def base_url(node: ThreadedNode) -> str:
    assert node.node.http_address is not None
    host, port = node.node.http_address
    return f"http://{host}:{port}"


def ask(node: ThreadedNode, subnet: str) -> list[str]:
    """The A records of NAME for a client in ``subnet`` (EDNS Client Subnet)."""
    address, _, prefix = subnet.partition("/")
    query = dns.message.make_query(NAME, "A", use_edns=0, options=[dns.edns.ECSOption(address, int(prefix))])
    reply = dns.query.udp(query, node.host, port=node.port, timeout=3.0)
    return sorted(rd.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


# --------------------------------------------------------------------------- the browser


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with the browser console log kept."""
    chromium = require_binary("chromium")
    chromedriver = require_binary("chromedriver")
    profile = tempfile.mkdtemp(prefix="gslb-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(node: ThreadedNode) -> Iterator[webdriver.Chrome]:
    """Depends on ``node`` so it quits before the node stops."""
    with chromium() as driver:
        yield driver


# One read of everything the test looks at.
PAGE_STATE = """
const q = (s) => [...document.querySelectorAll(s)];
const detail = document.getElementById("detail");
const btn = document.getElementById("drain-btn");
return {
  land: (document.getElementById("land").getAttribute("d") || "").length,
  sites: Object.fromEntries(q("#sites g.site").map((g) => [g.dataset.site, g.dataset.health])),
  labels: q("#sites g.site text").map((t) => t.textContent.trim()),
  rows: Object.fromEntries(q("tr.ep").map((r) => [r.dataset.endpoint, r.dataset.state])),
  shares: q(".shares").map((s) => s.textContent.trim()),
  status: document.getElementById("status").textContent,
  detail: detail.style.display === "block" ? detail.querySelector("h2").textContent : null,
  button: btn ? btn.textContent : null,
  mesh_hidden: document.getElementById("mesh").hidden,
  links: q("#links g.mlink").map((g) => ({from: g.dataset.from, to: g.dataset.to, state: g.dataset.state,
    sites: [g.dataset.fromSite, g.dataset.toSite], label: g.querySelector("text").textContent.trim(),
    title: g.querySelector("title").textContent})),
  routes: q("tr.mroute").map((r) => [r.dataset.cluster, r.dataset.service, r.dataset.servedBy]),
  gateways: Object.fromEntries(q("tr.mcluster").map((r) => [r.dataset.cluster, r.dataset.state])),
};
"""


def page_state(driver: webdriver.Chrome) -> dict[str, Any]:
    return driver.execute_script(PAGE_STATE)  # type: ignore[no-any-return]


def wait_page(driver: webdriver.Chrome, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Poll the page until ``predicate`` holds of its state, at most WAIT seconds."""
    last: dict[str, Any] = {}

    def check(d: webdriver.Chrome) -> bool:
        nonlocal last
        last = page_state(d)
        return predicate(last)

    try:
        WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check)
    except TimeoutException:
        raise AssertionError(f"not within {WAIT}s: {what}; page: {last}") from None
    return last


def click(driver: webdriver.Chrome, css: str) -> None:
    """Click an element the page may be re-rendering: find it again if it went stale before the click."""
    for _ in range(20):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} kept going stale")


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def all_up(state: dict[str, Any]) -> bool:
    return (state["land"] > 0 and state["sites"] == dict.fromkeys(SITES, "up")
            and state["rows"] == dict.fromkeys(ENDPOINT.values(), "up"))


# --------------------------------------------------------------------------- the test


def test_map_shows_sites_failover_and_drain(backends: Backends, node: ThreadedNode,
                                             browser: webdriver.Chrome) -> None:
    url = base_url(node)
    browser.get(url + "/")

    # 1. first render: land, three sites and three endpoint rows, all up
    wait_page(browser, all_up, "three sites and three endpoints up, land drawn")
    # The map shows shares of answers since the page's first sample: ask only now.
    for subnet, want, count in CLIENTS:
        for _ in range(count):
            assert ask(node, subnet) == [want], f"geo answer for {subnet}"
    state = wait_page(browser, lambda s: all_up(s) and all("%" in label for label in s["labels"])
                      and any("%" in text for text in s["shares"]), "traffic shares shown")
    assert sorted(label.split()[0] for label in state["labels"]) == sorted(SITES)
    assert state["mesh_hidden"] is True and state["links"] == []  # no mesh section in this config
    screenshot(browser, "map-initial.png")

    # 2. eu-west's backend stops: the open page follows (server-sent events / polling)
    backends.stop(SITES["eu-west"][4])
    state = wait_page(browser, lambda s: s["sites"].get("eu-west") == "down"
                      and s["rows"].get(ENDPOINT["eu-west"]) == "down", "eu-west down on the map and in the table")
    assert state["sites"] == {"us-east": "up", "eu-west": "down", "ap-northeast": "up"}
    assert state["rows"][ENDPOINT["us-east"]] == state["rows"][ENDPOINT["ap-northeast"]] == "up"
    screenshot(browser, "map-eu-west-down.png")

    # 3. drain ap-northeast from its detail panel
    ap = ENDPOINT["ap-northeast"]
    click(browser, f'tr.ep[data-endpoint="{ap}"]')
    wait_page(browser, lambda s: s["detail"] == f"{NAME} / {ap}" and s["button"] == "Drain",
              "the detail panel of the ap-northeast endpoint with a Drain button")
    browser.execute_script("sessionStorage.setItem('gslb-token', arguments[0]);", TOKEN)
    click(browser, "#drain-btn")
    state = wait_page(browser, lambda s: s["rows"].get(ap) == "drained" and s["sites"].get("ap-northeast") == "drained",
                      "ap-northeast drained in the table and on the map")
    assert state["sites"] == {"us-east": "up", "eu-west": "down", "ap-northeast": "drained"}
    assert state["button"] == "Undrain"
    drains = get_json(url + "/api/v1/drains")["drains"]
    assert [(d["kind"], d["pattern"]) for d in drains] == [("endpoint", f"{NAME}/{ap}")], drains
    assert drains[0]["reason"] == "drained from the map"
    screenshot(browser, "map-drained.png")

    # 4. nothing went wrong in the page
    errors = [entry for entry in browser.get_log("browser")
              if entry["level"] in ("SEVERE", "ERROR") and "favicon.ico" not in entry["message"]]
    assert errors == [], f"errors in the browser console: {errors}"


# --------------------------------------------------------------------------- the mesh


class MeshGateways:
    """Cluster-link gateways with their status APIs, on a loop in its own thread."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mesh-gateways", daemon=True)
        self.thread.start()
        self.running: dict[str, tuple[Gateway, web.AppRunner]] = {}

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    async def _start(self, cluster: str) -> None:
        gateway = await start_gateway(self.config, cluster)
        address = gateway.plan.cluster.api
        assert address is not None
        runner, _ = await start_api(gateway, address)
        self.running[cluster] = (gateway, runner)

    async def _stop(self, cluster: str) -> None:
        gateway, runner = self.running.pop(cluster)
        await runner.cleanup()
        await gateway.stop()

    def start(self, cluster: str) -> None:
        self._call(self._start(cluster))

    def stop(self, cluster: str) -> None:
        self._call(self._stop(cluster))

    def close(self) -> None:
        for cluster in list(self.running):
            with contextlib.suppress(Exception):
                self.stop(cluster)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def mesh_config(path: Path, pki: MeshPki, export: str) -> Path:
    """West imports echo from east, which exports ``export``; each gateway has a status API.
    Sites and the node's HTTP API are added to the same file, which node and gateways load."""
    write_mesh_config(path, pki, {
        "west": {"site": "eu-west", "api": f"127.0.0.11:{free_port('127.0.0.11')}",
                 "imports": {"echo": {"listen": "127.0.0.1:0"}}},
        "east": {"site": "us-east", "api": f"127.0.0.12:{free_port('127.0.0.12')}",
                 "exports": {"echo": {"endpoints": [export], "to": ["west"]}}},
    })
    data = yaml.safe_load(path.read_text())
    data["sites"] = {site: {"lat": lat, "lon": lon, "country": cc, "continent": cont}
                     for site, (lat, lon, cc, cont, _) in SITES.items()}
    data["server"] = {"http": {"listen": "127.0.0.1:0"}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def mesh_node(tmp_path: Path, mesh_pki: MeshPki, backends: Backends) -> Iterator[tuple[ThreadedNode, MeshGateways]]:
    """A node whose config has a mesh, and both gateways running (east exports the us-east backend)."""
    config = mesh_config(tmp_path / "mesh.yaml", mesh_pki, f"{SITES['us-east'][4]}:{backends.port}")
    gateways = MeshGateways(config)
    try:
        gateways.start("east")
        gateways.start("west")
        with threaded_node(config, http=True) as handle:
            yield handle, gateways
    finally:
        gateways.close()


@pytest.fixture
def mesh_browser(mesh_node: tuple[ThreadedNode, MeshGateways]) -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


def west_east(state: dict[str, Any]) -> dict[str, Any] | None:
    return next((link for link in state["links"] if (link["from"], link["to"]) == ("west", "east")), None)


def test_map_shows_cluster_links(mesh_node: tuple[ThreadedNode, MeshGateways],
                                 mesh_browser: webdriver.Chrome) -> None:
    node, gateways = mesh_node
    mesh_browser.get(base_url(node) + "/")

    # 1. the link between the two sites, up, with its RTT; the route of echo in the panel
    def linked(s: dict[str, Any]) -> bool:
        link = west_east(s)
        return (link is not None and link["state"] == "up" and link["label"].endswith(" ms")
                and ["west", "echo", "east"] in s["routes"])

    state = wait_page(mesh_browser, linked, "the west -> east link up with its RTT, echo served by east")
    assert state["mesh_hidden"] is False
    link = west_east(state)
    assert link is not None and link["sites"] == ["eu-west", "us-east"]
    assert len(state["links"]) == 1
    assert link["title"].startswith("west → east: up · RTT ") and "as west reports" in link["title"], link
    assert state["gateways"] == {"west": "reachable", "east": "reachable"}
    assert "mesh 1/1 links up" in state["status"]
    screenshot(mesh_browser, "map-mesh-up.png")

    # 2. east's gateway stops: the open page shows the link down (west's dialer says so)
    gateways.stop("east")

    def down(s: dict[str, Any]) -> bool:
        link = west_east(s)
        return (link is None or link["state"] in ("down", "unknown")) and s["gateways"].get("east") == "unreachable"

    state = wait_page(mesh_browser, down, "the west -> east link down, east's gateway unreachable")
    link = west_east(state)
    assert link is not None and link["state"] == "down" and link["label"] == "down", link
    assert ["west", "echo", ""] in state["routes"]
    assert "mesh 0/1 links up" in state["status"]
    screenshot(mesh_browser, "map-mesh-down.png")

    errors = [entry for entry in mesh_browser.get_log("browser")
              if entry["level"] in ("SEVERE", "ERROR") and "favicon.ico" not in entry["message"]]
    assert errors == [], f"errors in the browser console: {errors}"
