"""Coverage-guided fuzzing (atheris) of the DNS wire path: each input is one packet, sent
over UDP and TCP through a fresh ``QueryHandler`` and a long-lived one, from a client the
query ID picks (so mutating the ID also explores clients); tests/fuzz/oracle.py raises when
a reply breaks an invariant, and atheris reports it with the input.

    python tests/fuzz/fuzz_handler.py [--seeds DIR] [CORPUS_DIR ...] [libFuzzer flags]

``--seeds DIR`` writes valid queries for the rich config into DIR (replacing what is there),
reads them as a corpus after the others, and hands libFuzzer a dictionary of DNS tokens
written beside it (DIR.dict). Given a file instead of a directory, libFuzzer replays that one
input. ``scripts/fuzz`` runs a long session; tests/fuzz/test_fuzz_pass.py a bounded one.
"""

from __future__ import annotations

import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["dnsserver", "gslb"]):
    from dnsserver.handler import QueryHandler
    from tests.fuzz import oracle

SNAPSHOT = oracle.rich_snapshot()
WARM = QueryHandler(SNAPSHOT)
TYPES = (1, 2, 5, 6, 15, 16, 28, 33, 255, 251, 252, 257, 41, 99)


def client_of(packet: bytes) -> str:
    return oracle.CLIENTS[packet[1] % len(oracle.CLIENTS)] if len(packet) > 1 else oracle.CLIENTS[0]


def test_one_input(data: bytes) -> None:
    oracle.check(data, client_of(data), WARM, QueryHandler(SNAPSHOT))


def _name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".") if p) + b"\x00"


def seeds() -> Iterator[bytes]:
    """Valid queries: every configured name, common types, with and without EDNS, with
    client subnets the test GeoIP database knows, from each client."""
    ecs = [struct.pack("!HBB", 1, 24, 0) + bytes([81, 2, 69]),
           struct.pack("!HBB", 2, 32, 0) + bytes.fromhex("20010218"),
           struct.pack("!HBB", 1, 0, 0)]
    for i, name in enumerate(oracle.NAMES):
        for j, qtype in enumerate(TYPES):
            ident = (i * len(TYPES) + j) & 0xFFFF
            question = _name(name) + struct.pack("!HH", qtype, 1)
            yield struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + question
            options = b"" if j % 4 else struct.pack("!HH", 8, len(ecs[i % 3])) + ecs[i % 3]
            opt = b"\x00" + struct.pack("!HHIH", 41, 1232 if j % 2 else 512, 0x8000 * (j % 3 == 0), len(options))
            yield struct.pack("!6H", ident ^ 0x5A5A, 0x0110, 1, 0, 0, 1) + question + opt + options


def tokens() -> Iterator[bytes]:
    """Byte strings worth splicing in: record headers, ECS and cookie option heads,
    pointers to the question, the configured names."""
    yield from (b"\x00\x00\x29\x04\xd0", b"\x00\x08\x00\x07\x00\x01\x18\x00", b"\x00\x08\x00\x04\x00\x02\x00\x00",
                b"\x00\x0a\x00\x08", b"\xc0\x0c", b"\xc0\x11", b"\x00\xfc\x00\x01", b"\x00\xfb\x00\x01",
                b"\x00\x01\x00\x01", b"\x00\x06\x00\x01\x00\x00\x00\x00")
    yield from (_name(name) for name in oracle.NAMES)


def _escaped(token: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in token)


def write_seeds(directory: Path) -> Path:
    """The seed corpus in ``directory`` and a libFuzzer dictionary beside it; returns that."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for i, packet in enumerate(seeds()):
        (directory / f"seed-{i:05d}").write_bytes(packet)
    dictionary = directory.with_name(directory.name + ".dict")
    dictionary.write_text("".join(f'"{_escaped(token)}"\n' for token in tokens()))
    return dictionary


def main(argv: list[str]) -> None:
    args = list(argv)
    if "--seeds" in args:
        at = args.index("--seeds")
        directory = Path(args[at + 1])
        del args[at : at + 2]
        args += [str(directory), f"-dict={write_seeds(directory)}"]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
