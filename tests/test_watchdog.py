"""The watchdog: a phase that runs past 1.5 x ``runtime.timeout_s`` is named and ends the job; the
config's deadline counts from when it was read, not from the start of the process."""

import threading

import pytest

from qtrain.runtime import watchdog as watchdog_module
from qtrain.runtime.watchdog import Watchdog


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(watchdog_module.time, "monotonic", lambda: now[0])
    return now


def test_a_phase_past_its_deadline_is_named(clock):
    dog = Watchdog(2, 10.0, lambda _: None)
    dog.enter("step 5: uplink gather")
    clock[0] += 15.0  # exactly 1.5 x: still within the slack
    assert dog.overdue() is None
    clock[0] += 0.5
    assert dog.overdue() == "qtrain: rank 2 watchdog: phase 'step 5: uplink gather' has run 16 s"
    dog.enter("step 6: compute")  # a new phase starts its own clock
    assert dog.overdue() is None


def test_the_configs_deadline_counts_from_when_the_config_was_read(clock):
    dog = Watchdog(0, 300.0, lambda _: None)  # start-up runs under the default deadline
    clock[0] += 5.0  # imports and MPI start-up on a loaded host
    dog.set_timeout(3.0, "set-up: data and model")
    assert dog.overdue() is None  # the old code said "phase 'start-up' has run 5 s" here
    clock[0] += 4.0
    assert dog.overdue() is None
    clock[0] += 0.6
    assert dog.overdue() == "qtrain: rank 0 watchdog: phase 'set-up: data and model' has run 5 s"


def test_the_thread_calls_back_once_and_stops():
    fired = []
    done = threading.Event()

    def on_timeout(message):
        fired.append(message)
        done.set()

    dog = Watchdog(1, 0.04, on_timeout).start()
    dog.enter("step 1: compute")
    assert done.wait(5.0), "the watchdog never fired"
    dog._thread.join(5.0)
    assert not dog._thread.is_alive() and len(fired) == 1 and "phase 'step 1: compute'" in fired[0]
