"""The loop between steps (``engine/serving_loop.py``), against a scripted step driver: control
frames reach the role as what the workers do after the previous step, and the same step is asked
for again; a step that ran reaches ``after_step`` after the in-process peers applied it; the first
agreed stop is reported once and returned; the loop ends at ``FLAG_END`` with the last step run."""

from qtrain.engine.records import FLAG_BUFFERS, FLAG_CHECKPOINT, FLAG_END
from qtrain.engine.serving_loop import Served, serve_steps
from qtrain.engine.step import StepResult


class ScriptedDriver:
    """``run(step)`` answers from a script of (control, stop_reason, buffers) and logs each call."""

    def __init__(self, script, log):
        self.script, self.log = list(script), log

    def run(self, step):
        control, stop, buffers = self.script.pop(0)
        self.log.append(("run", step))
        return StepResult([] if not control else None, stop, control, buffers)


class Recording:
    def __init__(self, log):
        self.log = log

    def sync_buffers(self, step):
        self.log.append(("buffers", step))

    def checkpoint(self, step):
        self.log.append(("checkpoint", step))

    def after_step(self, step, result):
        self.log.append(("after", step, result.buffers))

    def stop_agreed(self, step, reason):
        self.log.append(("stop", step, reason))

    def produce(self, step):
        self.log.append(("produce", step))

    def consume(self, step):
        self.log.append(("consume", step))


def test_control_frames_steps_and_the_first_stop_in_order():
    log = []
    script = [
        (0, None, False),  # step 11 runs
        (FLAG_BUFFERS, None, False),  # after step 11: combine buffers, then step 12 again
        (0, "SIGTERM", True),  # step 12 runs, a stop is agreed, buffers asked
        (0, "SIGTERM", False),  # step 13 runs (the workers' loops decide when to end)
        (FLAG_CHECKPOINT, None, False),  # after step 13: checkpoint
        (FLAG_END, None, False),
    ]
    role = Recording(log)
    served = serve_steps(ScriptedDriver(script, log), role, 10, peers=role)
    assert served == Served(13, "SIGTERM")
    assert log == [
        ("produce", 11), ("run", 11), ("consume", 11), ("after", 11, False),
        ("produce", 12), ("run", 12), ("buffers", 11),
        ("produce", 12), ("run", 12), ("consume", 12), ("after", 12, True), ("stop", 12, "SIGTERM"),
        ("produce", 13), ("run", 13), ("consume", 13), ("after", 13, False),
        ("produce", 14), ("run", 14), ("checkpoint", 13),
        ("produce", 14), ("run", 14),
    ]  # fmt: skip


def test_an_end_before_any_step_returns_the_start():
    log = []
    served = serve_steps(ScriptedDriver([(FLAG_END, None, False)], log), Recording(log), 7)
    assert served == Served(7, None)
    assert log == [("run", 8)]
