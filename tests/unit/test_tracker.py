"""The anti-flap tracker on its own: raw probe results in, verdicts and events out.

Pure: a fake clock, no sleeping, no sockets. Sequences are written as strings of
``+`` (probe ok) and ``-`` (probe failed).
"""

from __future__ import annotations

import pytest

from healthmon.base import MonitorConfig, ProbeResult
from healthmon.tracker import DOWN, UP, Event, HealthTracker, TargetHealth

KEY = ("http", "192.0.2.1")


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(**overrides: object) -> MonitorConfig:
    values: dict[str, object] = {"type": "http", "interval": 2.0, "rise": 2, "fall": 3, "jitter": 0}
    values.update(overrides)
    return MonitorConfig(**values)  # type: ignore[arg-type]


def ok(detail: str = "HTTP 200") -> ProbeResult:
    return ProbeResult(True, detail, 0.001)


def fail(detail: str = "HTTP 500") -> ProbeResult:
    return ProbeResult(False, detail, 0.001)


class Harness:
    """One tracker with one target; each ``feed`` advances the clock by one interval."""

    def __init__(self, history: int = 1000, **overrides: object) -> None:
        self.clock = FakeClock()
        self.tracker = HealthTracker(clock=self.clock, history=history)
        self.cfg = config(**overrides)
        self.health: TargetHealth = self.tracker.add(KEY, "http://192.0.2.1:80", self.cfg)

    def feed(self, sequence: str) -> list[Event]:
        """Apply ``+``/``-`` results in order; return the events they caused."""
        events = []
        for mark in sequence:
            assert mark in "+-", f"test bug: {mark!r}"
            self.clock.advance(self.cfg.interval)
            event = self.tracker.record(KEY, ok() if mark == "+" else fail())
            if event is not None:
                events.append(event)
        return events

    def states(self, sequence: str) -> str:
        """The state after each result, as ``U``/``D`` letters."""
        out = ""
        for mark in sequence:
            self.feed(mark)
            out += "U" if self.health.state == UP else "D"
        return out

    @property
    def state(self) -> str:
        return self.health.state


# --------------------------------------------------------------------------- rise and fall, consecutive


def test_fall_three_two_failures_keep_it_up_the_third_takes_it_down() -> None:
    h = Harness(fall=3)
    assert h.feed("--") == []
    assert h.state == UP
    events = h.feed("-")
    assert h.state == DOWN
    assert [(e.old, e.new) for e in events] == [(UP, DOWN)]


def test_rise_two_one_success_keeps_it_down_the_second_brings_it_up() -> None:
    h = Harness(fall=3, rise=2)
    h.feed("---")
    assert h.state == DOWN
    assert h.feed("+") == []
    assert h.state == DOWN
    events = h.feed("+")
    assert h.state == UP
    assert [(e.old, e.new) for e in events] == [(DOWN, UP)]


@pytest.mark.parametrize("fall", [1, 2, 3, 5])
def test_fall_threshold_exact(fall: int) -> None:
    h = Harness(fall=fall)
    assert h.states("-" * fall) == "U" * (fall - 1) + "D"


@pytest.mark.parametrize("rise", [1, 2, 4])
def test_rise_threshold_exact(rise: int) -> None:
    h = Harness(fall=1, rise=rise)
    h.feed("-")
    assert h.state == DOWN
    assert h.states("+" * rise) == "D" * (rise - 1) + "U"


def test_a_success_resets_the_failure_count() -> None:
    h = Harness(fall=3)
    assert h.states("--+--+--") == "UUUUUUUU"
    assert h.health.failures == 2
    assert h.states("-") == "D"


def test_a_failure_resets_the_success_count() -> None:
    h = Harness(fall=1, rise=3)
    h.feed("-")
    assert h.states("++-++-++") == "DDDDDDDD"
    assert h.states("+") == "U"


def test_failures_while_down_and_successes_while_up_change_nothing() -> None:
    h = Harness(fall=2, rise=2)
    assert h.feed("+++++") == []
    assert h.state == UP
    assert len(h.feed("--")) == 1
    assert h.feed("------") == []
    assert h.state == DOWN


def test_alternating_results_never_go_down_in_consecutive_mode() -> None:
    h = Harness(fall=2, rise=2)
    assert h.feed("-+" * 50) == []
    assert h.state == UP
    assert h.health.flaps == 0


# --------------------------------------------------------------------------- window (gdnsd-style)


def test_window_counts_non_consecutive_failures() -> None:
    h = Harness(fall=3, window=5)
    assert h.states("-+-+-") == "UUUUD"


def test_the_same_sequence_stays_up_without_window() -> None:
    h = Harness(fall=3)
    assert h.states("-+-+-") == "UUUUU"


def test_window_old_failures_slide_out() -> None:
    h = Harness(fall=3, window=5)
    # the first failure leaves the window of 5 before the third failure arrives
    assert h.states("--++++-") == "UUUUUUU"
    assert h.states("-") == "U"  # window now: + + + - -  (2 failures)
    assert h.states("-") == "D"  # window now: + + - - -  (3 failures)


def test_window_alternating_goes_down_with_fall_two_window_three() -> None:
    h = Harness(fall=2, window=3, rise=2)
    assert h.states("-+-") == "UUD"
    # coming back up still needs 'rise' consecutive successes
    assert h.states("+-+-+-") == "DDDDDD"
    assert h.states("++") == "DU"


def test_window_starts_empty_after_coming_back_up() -> None:
    h = Harness(fall=2, window=4, rise=2)
    h.feed("--")
    assert h.state == DOWN
    h.feed("++")
    assert h.state == UP
    # the failures from before the outage do not count against the new up period
    assert h.states("-") == "U"
    assert h.states("+") == "U"
    assert h.states("-") == "D"


def test_window_equal_to_fall_is_consecutive_within_the_window() -> None:
    h = Harness(fall=3, window=3)
    assert h.states("--+--+") == "UUUUUU"
    assert h.states("---") == "UUD"


# --------------------------------------------------------------------------- initial state


def test_initial_up_is_up_before_any_result() -> None:
    h = Harness(initial="up")
    assert h.state == UP
    assert h.health.verdict is False
    assert h.health.since == 1000.0


def test_initial_down_needs_rise_successes() -> None:
    h = Harness(initial="down", rise=3)
    assert h.state == DOWN
    assert h.states("++") == "DD"
    events = h.feed("+")
    assert h.state == UP
    assert [(e.old, e.new) for e in events] == [(DOWN, UP)]


def test_initial_down_stays_down_on_failures_without_an_event() -> None:
    h = Harness(initial="down", fall=2)
    assert h.feed("----") == []
    assert h.state == DOWN
    assert h.health.flaps == 0
    assert h.health.verdict is True  # fall failures confirmed the initial state


def test_initial_up_confirmed_by_rise_successes() -> None:
    h = Harness(initial="up", rise=2)
    h.feed("+")
    assert h.health.verdict is False
    h.feed("+")
    assert h.health.verdict is True
    assert h.tracker.events == type(h.tracker.events)()


def test_add_is_idempotent_and_keeps_state() -> None:
    h = Harness(fall=1)
    h.feed("-")
    again = h.tracker.add(KEY, "other name", h.cfg)
    assert again is h.health
    assert again.state == DOWN


# --------------------------------------------------------------------------- flaps and events


def test_flap_counting() -> None:
    h = Harness(fall=2, rise=2)
    h.feed("--++--++--")
    assert h.health.flaps == 5
    assert [(e.old, e.new) for e in h.tracker.events] == [
        (UP, DOWN), (DOWN, UP), (UP, DOWN), (DOWN, UP), (UP, DOWN)]


def test_event_carries_time_target_old_new_and_reason() -> None:
    h = Harness(fall=2, rise=1)
    h.tracker.record(KEY, fail("HTTP 503, expected 200-399"))
    h.clock.advance(2.0)
    event = h.tracker.record(KEY, fail("timed out after 2s"))
    assert event == Event(1002.0, "http://192.0.2.1:80", UP, DOWN, "timed out after 2s")
    assert h.tracker.events[-1] == event
    assert h.health.since == 1002.0
    h.clock.advance(5.0)
    event = h.tracker.record(KEY, ok("HTTP 200"))
    assert event == Event(1007.0, "http://192.0.2.1:80", DOWN, UP, "HTTP 200")
    assert h.health.since == 1007.0


def test_last_result_and_last_checked_follow_every_record() -> None:
    h = Harness()
    result = fail("ConnectionRefusedError: Connect call failed")
    h.tracker.record(KEY, result)
    assert h.health.last_result is result
    assert h.health.last_checked == 1000.0


def test_history_is_bounded_and_drops_the_oldest() -> None:
    h = Harness(history=3, fall=1, rise=1)
    reasons = []
    for i in range(5):
        h.clock.advance(1)
        h.tracker.record(KEY, fail(f"fail {i}"))
        h.clock.advance(1)
        h.tracker.record(KEY, ok(f"ok {i}"))
        reasons += [f"fail {i}", f"ok {i}"]
    assert h.health.flaps == 10
    assert len(h.tracker.events) == 3
    assert [e.reason for e in h.tracker.events] == reasons[-3:]
    assert [e.at for e in h.tracker.events] == [1008.0, 1009.0, 1010.0]


def test_targets_are_independent() -> None:
    clock = FakeClock()
    tracker = HealthTracker(clock=clock)
    cfg = config(fall=1)
    tracker.add("a", "a", cfg)
    tracker.add("b", "b", cfg)
    tracker.record("a", fail())
    assert tracker.targets["a"].state == DOWN
    assert tracker.targets["b"].state == UP


# --------------------------------------------------------------------------- seconds_to_change


def test_seconds_to_change_is_none_when_stable() -> None:
    h = Harness(fall=3, rise=2, interval=2.0)
    assert h.health.seconds_to_change() is None  # no result yet
    h.feed("++++")
    assert h.health.seconds_to_change() is None
    h.feed("---")
    assert h.state == DOWN
    assert h.health.seconds_to_change() is None  # down and still failing
    h.feed("++")
    assert h.state == UP
    assert h.health.seconds_to_change() is None  # just came up


def test_seconds_to_change_while_going_down() -> None:
    h = Harness(fall=4, interval=2.5)
    expected = []
    for _ in range(3):
        h.feed("-")
        expected.append(h.health.seconds_to_change())
    assert expected == [(4 - 1) * 2.5, (4 - 2) * 2.5, (4 - 3) * 2.5]
    h.feed("+")
    assert h.health.seconds_to_change() is None


def test_seconds_to_change_while_coming_up() -> None:
    h = Harness(fall=1, rise=3, interval=0.5)
    h.feed("-")
    assert h.health.seconds_to_change() is None
    h.feed("+")
    assert h.health.seconds_to_change() == (3 - 1) * 0.5
    h.feed("+")
    assert h.health.seconds_to_change() == (3 - 2) * 0.5
    h.feed("-")
    assert h.health.seconds_to_change() is None


def test_seconds_to_change_with_fall_one_and_rise_one() -> None:
    h = Harness(fall=1, rise=1, interval=3.0)
    h.feed("-")
    assert h.state == DOWN
    assert h.health.seconds_to_change() is None
    h.feed("+")
    assert h.state == UP
    assert h.health.seconds_to_change() is None


def test_seconds_to_change_in_window_mode_counts_failures_in_the_window() -> None:
    h = Harness(fall=3, window=5, interval=1.0)
    h.feed("-")
    assert h.health.seconds_to_change() == 2.0
    h.feed("+")
    # a success does not clear failures still inside the window
    assert h.health.seconds_to_change() == 2.0
    h.feed("-")
    assert h.health.seconds_to_change() == 1.0
    h.feed("+++")
    # window now: + - + + +  (the first failure slid out)
    assert h.health.seconds_to_change() == 2.0
    h.feed("+")
    # window now: - + + + +
    assert h.health.seconds_to_change() == 2.0
    h.feed("+")
    # window now: + + + + +
    assert h.health.seconds_to_change() is None
