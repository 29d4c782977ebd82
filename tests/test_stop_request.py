"""The stop request a signal makes (runtime/signals.py): the first signal of a rank asks for a stop,
a second ends the rank; a request the lead adopted from another serving rank is not its first."""

import signal

from qtrain.runtime.signals import REPEAT_GRACE_S, StopRequest


def test_an_adopted_request_leaves_the_ranks_own_first_signal_a_request(handlers):
    stop = StopRequest()
    stop.install(rank=0)
    stop.adopt("SIGTERM on rank 1")
    assert stop.requested and stop.reason == "SIGTERM on rank 1"
    signal.raise_signal(signal.SIGUSR1)  # the job-wide signal reaching the lead a step later
    assert stop.local == "SIGUSR1 on rank 0" and stop.reason == "SIGUSR1 on rank 0"
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)  # still qtrain's handler
    stop.adopt("SIGTERM on rank 2")  # a request of its own already: nothing to adopt
    assert stop.reason == "SIGUSR1 on rank 0" and stop.adopted == "SIGTERM on rank 1"


def test_a_second_signal_of_its_own_falls_back_to_the_default(handlers, monkeypatch):
    now = [100.0]
    stop = StopRequest(clock=lambda: now[0])
    stop.install(rank=3)
    signal.raise_signal(signal.SIGUSR1)
    assert stop.reason == "SIGUSR1 on rank 3"
    now[0] += REPEAT_GRACE_S + 1  # later than a copy of the same request (tests/test_interrupts.py)
    raised = []
    monkeypatch.setattr(signal, "raise_signal", raised.append)  # the default would end pytest
    signal.getsignal(signal.SIGUSR1)(signal.SIGUSR1, None)
    assert raised == [signal.SIGUSR1] and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
