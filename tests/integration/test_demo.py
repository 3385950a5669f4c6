"""`gslb demo` end to end: three backends, a node, a scripted outage, answers that move."""

import re
import subprocess
import sys

from tests.support.servers import ROOT


def test_demo_fails_over_and_back():
    out = subprocess.run(
        [sys.executable, "-m", "gslb.cli", "--log-level", "WARNING", "demo",
         "--script", "1.5:stop eu-west,5:start eu-west", "--duration", "9"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    frames = out.stdout.split("--- t=")[1:]
    europe = [re.search(r"Europe \(London\)\s+\S+\s+(\S+)\s+(\S+)", f) for f in frames]
    sites = [m.group(2) for m in europe if m]
    assert sites[0] == "eu-west"                      # closest to London while it is up
    assert "us-east" in sites                         # failed over while eu-west was stopped
    assert sites[-1] == "eu-west"                     # and back after it restarted
    first_away = sites.index("us-east")
    assert "eu-west" in sites[first_away:]
    japan = [re.search(r"Japan\s+\S+\s+(\S+)\s+(\S+)", f).group(2) for f in frames]  # type: ignore[union-attr]
    assert set(japan) == {"ap-northeast"}             # untouched by the European outage
    assert "(no answer)" not in out.stdout


def test_demo_rejects_a_bad_script():
    out = subprocess.run([sys.executable, "-m", "gslb.cli", "demo", "--script", "2:explode mars"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "bad script step" in out.stderr
