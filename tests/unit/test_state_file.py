"""The memory store's state file: encoding, decoding with located errors, atomic writes,
coalesced saving, and the store reading back what it wrote."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from gslb.store.base import Drain, Registration, StoreEvent
from gslb.store.memory import MemoryStore
from gslb.store.state_file import State, StateFile, StateFileError, decode, encode, read, write_atomic

NOW = 1_800_000_000.0
STATE = State(
    drains=(Drain("site", "eu-*", "maintenance", NOW - 60), Drain("endpoint", "app.x/pod-*", "", NOW - 5, NOW + 600)),
    registrations=(
        Registration("app.x", "pod-7", "us-east", IPv4Address("192.0.2.77"), None, 3, NOW + 30, NOW - 100),
        Registration("app.x", "pod-8", "eu-west", None, IPv6Address("2001:db8::8"), 1, NOW + 30, NOW - 10),
    ),
    events=(StoreEvent(NOW - 60, "drain", "site:eu-*", "serving", "drained", "maintenance"),),
)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def raw(**changes: object) -> bytes:
    data = json.loads(encode(STATE, now=NOW))
    data.update(changes)
    return json.dumps(data).encode()


# --------------------------------------------------------------------------- (de)serialising


def test_round_trip() -> None:
    assert decode(encode(STATE, now=NOW)) == STATE
    assert decode(encode(State(), now=NOW)) == State()


def test_encoded_form() -> None:
    data = json.loads(encode(STATE, now=NOW))
    assert (data["format"], data["version"], data["saved"]) == ("gslb-state", 1, NOW)
    assert data["drains"][1] == {"kind": "endpoint", "pattern": "app.x/pod-*", "reason": "", "created": NOW - 5,
                                 "expires": NOW + 600}
    assert data["registrations"][1]["ipv6"] == "2001:db8::8" and data["registrations"][1]["ipv4"] is None


def test_unexpired_drops_what_ran_out() -> None:
    later = STATE.unexpired(NOW + 31)
    assert later.registrations == ()
    assert later.drains == STATE.drains  # one never expires, the other at NOW + 600
    assert STATE.unexpired(NOW + 601).drains == STATE.drains[:1]
    assert STATE.unexpired(NOW + 601).events == STATE.events


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b'{"format": "gslb-state", "vers', "not JSON: Unterminated string"),
    (b"\xff\xfe", "not JSON:"),
    (b"[1, 2]", "<root>: Input should be a valid dictionary"),
    (raw(format="other"), "format: Input should be 'gslb-state'"),
    (raw(version=2), "version: Input should be 1"),
    (raw(drains=[{"kind": "planet", "pattern": "x", "reason": "", "created": 1}]),
     "drains[0].kind: Input should be 'endpoint' or 'site'"),
    (raw(registrations=[{"service": "a", "id": "b", "site": "s", "ipv4": "192.0.2.999", "ipv6": None,
                         "weight": 1, "expires": 1, "registered": 1}]),
     "registrations[0].ipv4: Input is not a valid IPv4 address"),
    (raw(events=[{}]), "events[0].at: Field required"),
    (raw(extra=1), "extra: Extra inputs are not permitted"),
])
def test_decode_names_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(StateFileError) as info:
        decode(data)
    assert str(info.value).startswith(message), str(info.value)


def test_decode_reports_a_few_problems_and_counts_the_rest() -> None:
    bad = [{"kind": "planet", "pattern": "x", "reason": "", "created": 1}] * 5
    with pytest.raises(StateFileError) as info:
        decode(raw(drains=bad))
    assert str(info.value).count("Input should be 'endpoint' or 'site'") == 3
    assert str(info.value).endswith("(and 2 more)")


# --------------------------------------------------------------------------- files


def test_read_missing_file_is_none(tmp_path: Path) -> None:
    assert read(tmp_path / "absent.json") is None


def test_read_unreadable(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="unreadable: Is a directory"):
        read(tmp_path)


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    (tmp_path / f".state.json.{os.getpid()}.tmp").mkdir()  # the temp name is taken
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"


# --------------------------------------------------------------------------- StateFile


def test_load_corrupt_file_starts_empty_and_keeps_a_copy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"{garbage")
    with caplog.at_level(logging.ERROR, logger="gslb.store"):
        assert StateFile(path, State).load() == State()
    assert path.read_bytes() == b"{garbage"  # untouched until the first change
    assert (tmp_path / "state.json.corrupt").read_bytes() == b"{garbage"
    assert f"state file {path}: not JSON: Expecting property name enclosed in double quotes" in caplog.text
    assert f"a copy is at {path}.corrupt" in caplog.text


def test_changes_are_coalesced(tmp_path: Path) -> None:
    asyncio.run(_changes_are_coalesced(tmp_path))


async def _changes_are_coalesced(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    current = [State()]
    state_file = StateFile(path, lambda: current[0], clock=Clock())
    writes: list[int] = []
    write = state_file._write

    def counted(sequence: int, data: bytes) -> None:
        writes.append(sequence)
        write(sequence, data)

    state_file._write = counted  # type: ignore[method-assign]
    for i in range(100):  # one burst, no await in between: one write
        current[0] = State(events=(StoreEvent(NOW + i, "k", "t", "o", "n", "r"),))
        state_file.changed()
    for _ in range(500):  # bounded wait for the saver task
        if path.exists():
            break
        await asyncio.sleep(0.01)
    assert writes == [1]
    assert decode(path.read_bytes()).events[0].at == NOW + 99
    await state_file.close()
    assert writes == [1]  # nothing left to write at shutdown


def test_read_only_state_file_never_writes(tmp_path: Path) -> None:
    asyncio.run(_read_only_state_file_never_writes(tmp_path))


async def _read_only_state_file_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(encode(STATE, now=NOW))
    state_file = StateFile(path, State, writable=False, clock=Clock())
    assert state_file.load() == STATE
    state_file.changed()
    await state_file.close()
    assert path.read_bytes() == encode(STATE, now=NOW)


# --------------------------------------------------------------------------- MemoryStore


def test_memory_store_saves_and_restores(tmp_path: Path) -> None:
    asyncio.run(_memory_store_saves_and_restores(tmp_path))


async def _memory_store_saves_and_restores(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    clock = Clock()
    store = MemoryStore(state_file=path, clock=clock, save_interval=0.01)
    await store.start()
    for drain in STATE.drains:
        await store.set_drain(drain)
    for registration in STATE.registrations:
        await store.register(registration)
    await store.add_event(STATE.events[0])
    await store.close()
    assert decode(path.read_bytes()) == STATE

    clock.now = NOW + 31  # the registrations ran out while the node was down
    again = MemoryStore(state_file=path, clock=clock)
    await again.start()
    overrides = await again.overrides()
    assert overrides.drains == STATE.drains
    assert overrides.registrations == ()
    assert await again.events() == list(STATE.events)
    await again.close()
    assert decode(path.read_bytes()) == STATE  # nothing changed: not rewritten


def test_heartbeat_is_saved(tmp_path: Path) -> None:
    asyncio.run(_heartbeat_is_saved(tmp_path))


async def _heartbeat_is_saved(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = MemoryStore(state_file=path, clock=Clock())
    await store.start()
    registration = STATE.registrations[0]
    await store.register(registration)
    await store.close()
    store = MemoryStore(state_file=path, clock=Clock())
    await store.start()
    refreshed = dataclasses.replace(registration, expires=NOW + 90)
    assert await store.register(refreshed) is False  # not new, same answers: only the expiry moved
    await store.close()
    assert decode(path.read_bytes()).registrations == (refreshed,)


def test_memory_store_without_state_file_writes_nothing(tmp_path: Path) -> None:
    asyncio.run(_memory_store_without_state_file_writes_nothing(tmp_path))


async def _memory_store_without_state_file_writes_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    await store.start()
    await store.set_drain(STATE.drains[0])
    await store.close()
    assert store.state_file is None
    assert "state lost at restart" in store.status().detail
