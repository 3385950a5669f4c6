"""A bounded run of the atheris target (tests/fuzz/fuzz_handler.py) in a subprocess:
``GSLB_FUZZ_SECONDS`` (default 45) of coverage-guided fuzzing from the generated seeds.
A crash (a broken invariant or an exception) fails the test with the reproducer's bytes;
every file the run writes goes to pytest's temporary directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TARGET = Path(__file__).with_name("fuzz_handler.py")
SECONDS = int(os.environ.get("GSLB_FUZZ_SECONDS", "45"))
NOISE = re.compile(r"^(#\d+\s+(NEW|REDUCE|pulse)|INFO: Instrumenting)")


def test_fuzz_handler_bounded(tmp_path: Path) -> None:
    corpus, seeds = tmp_path / "corpus", tmp_path / "seeds"
    corpus.mkdir()
    cmd = [sys.executable, str(TARGET), "--seeds", str(seeds), str(corpus), f"-max_total_time={SECONDS}",
           f"-artifact_prefix={tmp_path}/", "-max_len=1500", "-timeout=30", "-rss_limit_mb=2048"]
    proc = subprocess.run(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=SECONDS + 300)
    log = "\n".join(line for line in proc.stdout.splitlines() if not NOISE.match(line))
    found = sorted(p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    if proc.returncode != 0 or found:
        reproducers = "\n".join(f"{p.name}: {p.read_bytes().hex()}" for p in found) or "(none written)"
        pytest.fail(f"the fuzzer found a problem (exit {proc.returncode}); reproducers as hex:\n{reproducers}\n"
                    f"replay one with: python {TARGET.relative_to(TARGET.parents[2])} FILE\n"
                    f"--- fuzzer output ---\n{log[-6000:]}", pytrace=False)
    seeded = len(list(seeds.iterdir()))
    runs = re.search(r"^Done (\d+) runs", proc.stdout, re.MULTILINE)
    assert runs is not None, f"no run summary:\n{log[-3000:]}"
    assert int(runs.group(1)) > seeded, f"{runs.group(1)} runs: the seeds alone are {seeded}"
