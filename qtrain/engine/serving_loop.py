"""The loop between steps, written once (DESIGN.md section 9): every separate serving rank and the
simulator run :func:`serve_steps` over the step driver's server step (``engine/step.py``); a
co-located rank takes the same turns (:class:`ServingTurns`) inside its worker's steps.

Each turn asks the driver for step ``step``. The workers sent either that step's uplinks, and the
step ran, or a control frame in its place, saying what they do between steps ``step - 1`` and
``step``: combine the model buffers (``FLAG_BUFFERS``), checkpoint (``FLAG_CHECKPOINT``) or end
(``FLAG_END``); the step is then asked for again. What a rank does at each of these depends on
its role, and is the :class:`BetweenSteps` it brings:

- ``library/serve.py``: the lead serving rank (the recorder, evaluation, checkpoints, the other
  owners' parts of each step, the summary);
- ``runtime/shard_serving.py``: another owner (its part of each step and its shard to the lead);
- ``engine/simulator.py``: the simulator's server, whose virtual workers live in this process:
  they are :class:`Peers`, asked to produce each step's uplinks (or control frames) before the
  driver takes them and to apply its downlink after.

The loop keeps what every role shares: the step count, the control frames, and the first agreed
stop (a stop agreed after step s ends the run once the workers' loops end; their loops decide)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from qtrain.engine.records import FLAG_BUFFERS, FLAG_CHECKPOINT, FLAG_END
from qtrain.engine.step import ServerStep, StepResult


class BetweenSteps(Protocol):
    """What a role does between the steps of :func:`serve_steps`."""

    def sync_buffers(self, step: int) -> None:
        """The workers combine their model buffers after step ``step`` (``session.sync_buffers``)."""
        ...

    def checkpoint(self, step: int) -> None:
        """The workers checkpoint after step ``step``."""
        ...

    def after_step(self, step: int, result: StepResult) -> None:
        """Step ``step`` ran (its downlinks are posted): what follows it on this rank."""
        ...

    def stop_agreed(self, step: int, reason: str) -> None:
        """The first stop agreed, with step ``step``'s downlink."""
        ...


class Peers(Protocol):
    """Workers that run in this process (the simulator's): asked for each step's uplinks before
    the driver takes them, and to apply its downlink after. Under MPI the workers are other
    ranks, and there are none."""

    def produce(self, step: int) -> None:
        """Post step ``step``'s uplinks, or a control frame in their place."""
        ...

    def consume(self, step: int) -> None:
        """Apply step ``step``'s downlink."""
        ...


@dataclass(frozen=True)
class Served:
    """How the loop ended: the last step that ran and the first agreed stop (None: none)."""

    last_step: int
    stop_reason: str | None


class ServingTurns:
    """The loop one turn at a time: a serving rank of its own runs :func:`serve_steps` over it; a
    co-located rank (``runtime/colocated.py``) takes one turn inside its worker's step, between
    posting its uplinks (or control frame) and taking the downlinks."""

    def __init__(self, driver: ServerStep, role: BetweenSteps, start: int):
        self.driver, self.role = driver, role
        self.step, self.ended = start + 1, False
        self.stop_reason: str | None = None  # the first agreed stop

    def turn(self, consume: Callable[[int], None] | None = None) -> StepResult:
        """Serve step ``self.step``, or the control frame the workers sent in its place.
        ``consume(step)``: what runs once a step's downlinks are posted, before the role's
        ``after_step`` (the simulator's workers apply them)."""
        step = self.step
        result = self.driver.run(step)
        if result.control == FLAG_END:
            self.ended = True
        elif result.control == FLAG_BUFFERS:
            self.role.sync_buffers(step - 1)
        elif result.control == FLAG_CHECKPOINT:
            self.role.checkpoint(step - 1)
        else:
            if consume is not None:
                consume(step)
            self.role.after_step(step, result)
            if result.stop_reason is not None and self.stop_reason is None:
                self.stop_reason = result.stop_reason
                self.role.stop_agreed(step, result.stop_reason)
            self.step += 1
        return result

    @property
    def served(self) -> Served:
        return Served(self.step - 1, self.stop_reason)


def serve_steps(driver: ServerStep, role: BetweenSteps, start: int, peers: Peers | None = None) -> Served:
    """Serve steps ``start + 1, ...`` until the workers send ``FLAG_END``."""
    turns = ServingTurns(driver, role, start)
    while not turns.ended:
        if peers is not None:
            peers.produce(turns.step)
        turns.turn(peers.consume if peers is not None else None)
    return turns.served
