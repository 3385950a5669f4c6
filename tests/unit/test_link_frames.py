"""The link's frame parser: any split of the byte stream yields the same frames, and
oversized or malformed frames are refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterlink.frames import (
    HEADER_SIZE,
    MAX_CONTROL,
    MAX_PAYLOAD,
    FrameReader,
    FrameType,
    ProtocolError,
    frame,
    pack_header,
    window_frame,
)

CONTROL = [FrameType.OPEN, FrameType.FIN, FrameType.RST, FrameType.PING, FrameType.STATUS, FrameType.GOAWAY]


def collect(chunks: list[bytes]) -> list[tuple[str, int, int, bytes]]:
    """Feed chunks; merge consecutive DATA pieces of one frame back together."""
    events: list[tuple[str, int, int, bytes]] = []

    def on_data(sid: int, chunk: bytes | memoryview) -> None:
        events.append(("data", FrameType.DATA, sid, bytes(chunk)))

    def on_control(kind: int, sid: int, payload: bytes) -> None:
        events.append(("control", kind, sid, payload))

    reader = FrameReader(on_data, on_control)
    for chunk in chunks:
        reader.feed(chunk)
    return events


def data_bytes(events: list[tuple[str, int, int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for kind, _, sid, payload in events:
        if kind == "data":
            out[sid] = out.get(sid, b"") + payload
    return out


frames_strategy = st.lists(
    st.one_of(
        st.tuples(st.just(FrameType.DATA), st.integers(1, 50), st.binary(min_size=0, max_size=3000)),
        st.tuples(st.sampled_from(CONTROL), st.integers(0, 50), st.binary(max_size=200)),
        st.tuples(st.just(FrameType.WINDOW), st.integers(1, 50), st.integers(0, 2**32 - 1).map(
            lambda n: n.to_bytes(4, "big"))),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(frames=frames_strategy, cuts=st.lists(st.integers(0, 100_000), max_size=20))
def test_any_split_gives_the_same_frames(frames: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(frame(FrameType(kind), sid, payload) for kind, sid, payload in frames)
    points = sorted({c % (len(wire) + 1) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    whole = collect([wire])
    split = collect(chunks)
    assert [e for e in split if e[0] == "control"] == [e for e in whole if e[0] == "control"]
    assert data_bytes(split) == data_bytes(whole)
    expected_data: dict[int, bytes] = {}
    for kind, sid, payload in frames:
        if kind == FrameType.DATA:
            expected_data[sid] = expected_data.get(sid, b"") + payload
    assert {k: v for k, v in data_bytes(whole).items() if v} == {k: v for k, v in expected_data.items() if v}


def test_data_is_streamed_not_buffered() -> None:
    """A 1 MiB DATA frame arriving in pieces is handed on piece by piece."""
    payload = bytes(range(256)) * 4096
    wire = frame(FrameType.DATA, 7, payload)
    events = collect([wire[:HEADER_SIZE + 10], wire[HEADER_SIZE + 10:500_000], wire[500_000:]])
    assert [len(e[3]) for e in events] == [10, 500_000 - HEADER_SIZE - 10, len(wire) - 500_000]
    assert b"".join(e[3] for e in events) == payload


@pytest.mark.parametrize("wire", [
    pack_header(FrameType.DATA, 1, MAX_PAYLOAD + 1),
    pack_header(FrameType.PING, 0, MAX_CONTROL + 1),
])
def test_oversized_frames_refused(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        collect([wire])
    with pytest.raises(ProtocolError):  # the same header split across reads
        collect([wire[:3], wire[3:]])


def test_window_frame_layout() -> None:
    events = collect([window_frame(5, 123456)])
    assert events == [("control", FrameType.WINDOW, 5, (123456).to_bytes(4, "big"))]
