"""A short soak with the machinery of ``bench/robustness`` (``bench/_soak.py``): a node
process for about 15 s under a flapping backend, config reloads every 3 s (every third
one invalid), garbage over UDP, TCP connections stalled mid-message, and a paced client
at 100 queries a second. Bounded in time and count; asserts no timings, only outcomes."""

from __future__ import annotations

import sys

from tests.support.servers import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import _soak


def test_short_soak(tmp_path):
    plan = _soak.SoakPlan(duration=15.0, flap_period=4.0, reload_every=3.0, invalid_every=3, paced_rate=100,
                          garbage_rate=100, stalled_tcp=2)
    result = _soak.run_soak(plan, tmp_path)
    details = result.details()
    assert result.crashes == 0, result.log_tail
    assert result.wrong_answers == 0, result.wrong_examples
    # every reload was confirmed: valid ones applied, invalid ones rejected (the checker saw
    # the previous version's answers all along)
    assert result.reloads_failed == 0, result.reload_events
    assert result.reloads_ok >= 2 and result.reloads_rejected >= 1, result.reload_events
    assert result.paced_sent >= 750 and result.paced_lost == 0, details
    assert result.checker_sent >= 40 and result.checker_lost == 0, details
    assert result.garbage_sent >= 750 and result.malformed_seen > 0, details
    assert result.stalled_cut >= 1 and result.tcp_closed.get("read_timeout", 0) >= 1, details
    assert result.lost == 0
