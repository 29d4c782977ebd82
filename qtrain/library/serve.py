"""``session.serve()``: the serving rank of a library run, a loop over the step driver's server
step (``engine/step.py``) until every worker's loop has ended.

Between steps the workers may send control frames instead of uplinks; the server then combines
the model buffers (``session.sync_buffers``: every replica adopts the combination), writes a
checkpoint (the workers' snapshots, with their own buffers and extra state, come by ``gather``;
the file's ``/buffers`` combine them, and the replicas keep their own, so a checkpoint changes
nothing and a resume is bit-exact) or ends the run (the replicas adopt the combined buffers).

With ``evaluate`` (``session.serve(model, evaluate)``, as ``qtrain train`` serves) the server
evaluates its own model where ``train.eval_every``, ``train.steps`` or an agreed stop say, after
the step's downlink asked every worker for its buffers (``FLAG_BUFFERS``): the buffers are
combined and adopted by every replica first, so the evaluation sees what the workers continue
from. A stop that a signal asks for is agreed as in ``qtrain train``: the downlink tells every
worker (``session.should_stop``), and their loops decide how to end. The trace, the checkpoints and
``summary.json`` are written as ``qtrain train`` writes them; the workers' ``session.log`` rows
land in the trace's ``metrics`` table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from qtrain.engine.buffers import checkpoint_buffers, has_buffers
from qtrain.engine.flat import FlatModel
from qtrain.engine.recorder import Recorder
from qtrain.engine.reports import CheckpointReport, FinalReport
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.serving_loop import Served, serve_steps
from qtrain.engine.step import StepResult, worker_report
from qtrain.io.run_dir import params_sha256
from qtrain.library.errors import UsageError
from qtrain.runtime.buffer_sync import server_sync
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.resume import ResumePoint
from qtrain.runtime.server_role import Serving, final_report, gather_snapshots, run_facts, start_serving
from qtrain.runtime.shard_serving import StepPart, down_stats, with_parts
from qtrain.runtime.transport import ServerTransport

if TYPE_CHECKING:
    from qtrain.library.session import Session

NO_EVALUATION = {"loss": None}


@dataclass
class Evaluation:
    """What ``session.serve`` evaluates: ``test(module)`` at the run's cadence and at the end,
    ``train(module)`` once at the end (either may be None); ``own_model``: the server has the
    user's model, not a stand-in."""

    test: Callable[[torch.nn.Module], dict] | None = None
    train: Callable[[torch.nn.Module], dict] | None = None
    own_model: bool = False


def serve_run(
    session: Session,
    plan: RunPlan,
    model: FlatModel,
    transport: ServerTransport,
    resume: ResumePoint | None,
    evaluation: Evaluation | None = None,
) -> dict[str, Any]:
    lead = start_lead(session, plan, model, transport, resume, evaluation)
    try:
        served = serve_steps(lead.serving.step, lead, lead.serving.start)
    finally:
        lead.rec.progress.close()
    if lead.link:  # the final parameters: every owner's master shard
        lead.link.gather_master(model.params)
    if lead.buffered:
        server_sync(transport, model.module, plan.cfg.model.buffers)
    return end_lead(session, lead, served)


def start_lead(
    session: Session,
    plan: RunPlan,
    model: FlatModel,
    transport: ServerTransport,
    resume: ResumePoint | None,
    evaluation: Evaluation | None = None,
) -> _Lead:
    """The lead serving rank started (``server_role.start_serving``), with what it does between
    steps: a separate serving rank loops over it (:func:`serve_run`), a co-located rank 0 takes
    its turns inside its worker's steps (``library/colocated.py``)."""
    evaluation = evaluation or Evaluation()
    svc, world, out_dir = session._svc, session._world, session.out_dir
    serving = start_serving(plan, model, transport, svc, world, out_dir, resume)
    lead = _Lead(serving, transport, model, plan, svc, evaluation, resume)
    rec, topo = serving.rec, plan.topology
    evaluates, buffered = evaluation.test is not None, lead.buffered
    serving.step.wants_buffers = lambda step, stopping: buffered and evaluates and rec.eval_due(stopping)
    serving.step.before_step = lambda step: maybe_fail(svc.fault, topo.rank, step)
    return lead


def end_lead(session: Session, lead: _Lead, served: Served) -> dict[str, Any]:
    """The run's end on the lead, once the master copy and the buffers are whole: the workers'
    final reports, the final evaluation and the summary."""
    svc, rec, model, evaluation = lead.svc, lead.rec, lead.model, lead.evaluation
    start, test = lead.serving.start, evaluation.test
    final_report(lead.transport, lead.serving, svc, on_report=lead.metrics)
    if served.last_step == start == 0:
        raise UsageError(
            "every worker's loop ended before its first optimizer.step(): nothing was trained "
            "(does the script's loop run? is its data empty?)"
        )
    svc.watchdog.enter("final evaluation")
    final = rec.last_eval_at(rec.step)
    if final is None:
        final = _evaluate(rec, test, model.module) if test is not None else NO_EVALUATION
    train = _checked(evaluation.train, model.module, "evaluate_train") if evaluation.train else NO_EVALUATION
    label = {} if evaluation.own_model else {"model": f"{model.module.kind} (the workers' own)"}
    builtin = session._builtin_model is not None
    return rec.stats.summary(
        lead.plan.setup,
        served.last_step,
        final,
        train,
        params_sha256(model.params),
        runner="mpi" if builtin else "library",
        stopped_early=served.stop_reason is not None,
        stop_reason=served.stop_reason,
        **label,
        **run_facts(lead.topo, session._world, rec, lead.resume),
    )


class _Lead:
    """The lead serving rank between steps (``engine/serving_loop.BetweenSteps``): the buffers,
    checkpoints (the workers' snapshots, every owner's state), the other owners' parts of each
    step, evaluation and the step's trace rows."""

    def __init__(
        self,
        serving: Serving,
        transport: ServerTransport,
        model: FlatModel,
        plan: RunPlan,
        svc: Any,  # runtime/services.RankServices
        evaluation: Evaluation,
        resume: ResumePoint | None,
    ):
        self.serving, self.transport, self.model, self.svc = serving, transport, model, svc
        self.rec, self.link, self.topo, self.cfg = serving.rec, serving.link, plan.topology, plan.cfg
        self.plan, self.evaluation, self.resume = plan, evaluation, resume
        self.test = evaluation.test
        self.buffered = has_buffers(model.module)
        # combine the workers' buffers into the lead's model and every replica (co-located: every
        # rank combines them, ``library/colocated.py``)
        self.combine_buffers: Callable[[], object] = lambda: server_sync(
            transport, model.module, plan.cfg.model.buffers
        )

    def metrics(self, reports: Sequence[CheckpointReport | FinalReport]) -> None:
        """The workers' ``session.log`` rows, from their checkpoint or final reports."""
        _metrics(self.rec, self.topo.workers, reports)

    def sync_buffers(self, step: int) -> None:
        with self.rec.phase("buffers"):
            self.combine_buffers()

    def checkpoint(self, step: int) -> None:
        rec, link, model, server = self.rec, self.link, self.model, self.serving.server
        with rec.phase("checkpoint"):
            snaps = gather_snapshots(self.transport, rec, on_report=self.metrics)
            buffers = None
            if self.buffered:  # the file's /buffers combine the replicas, which keep their own
                buffers = checkpoint_buffers(
                    self.cfg.model.buffers, [s["buffers"] for s in snaps], model.module
                )
            whole = link.gather_state(server, model.params) if link else server
            self.serving.checkpointer.write(step, whole, snaps, rec, whole.replica, buffers)

    def after_step(self, step: int, result: StepResult) -> None:
        rec, link, topo = self.rec, self.link, self.topo
        if link:
            rec.enter(f"step {step}: the other serving ranks' reports (ranks {list(topo.servers[1:])})")
        parts: list[StepPart] = link.collect() if link else []  # the other owners' part of the step
        evaluating = self.test is not None and rec.eval_due(result.stop_reason is not None)
        if link:
            link.tell(evaluating)
            if evaluating:  # evaluate the whole master copy
                link.gather_master(self.model.params)
            for rank, part in zip(topo.servers[1:], parts, strict=True):
                rec.add_shard(rank, part.up, part.down, part.times, part.wire)
            self.serving.timeline.add_parts([p.timeline for p in parts])
            asked = next((p.stop for p in parts if p.stop), None)
            if asked:  # a signal on another owner: agreed with the next step
                self.svc.stop.adopt(asked)
        if result.buffers:  # the downlink asked for them: the server evaluates after this step
            self.sync_buffers(step)
        if evaluating and self.test is not None:
            self.svc.log.info("step %d eval %s", step, _evaluate(rec, self.test, self.model.module))
        report = with_parts(worker_report(result.records or []), parts)
        server = self.serving.server
        rec.end_step(report, down_stats(server.stats, parts) if parts else server.last_stats)

    def stop_agreed(self, step: int, reason: str) -> None:
        self.svc.log.info("stop agreed after step %d: %s", step, reason)


def _evaluate(rec: Recorder, evaluate: Callable[[torch.nn.Module], dict], module: torch.nn.Module) -> dict:
    """One evaluation, recorded (summary history, the trace's evaluations; keys other than loss
    and accuracy go to its metrics table as the serving rank's)."""
    ev = rec.evaluate_with(lambda: _checked(evaluate, module, "evaluate"))
    extra = [(rec.step, k, float(v)) for k, v in ev.items() if k not in ("loss", "accuracy")]
    if extra and rec.trace is not None:
        rec.trace.add_metrics(rec.topology.server, extra)
    return ev


def _checked(evaluate: Callable[[torch.nn.Module], dict], module: torch.nn.Module, name: str) -> dict:
    ev = evaluate(module)
    if not isinstance(ev, dict) or "loss" not in ev:
        raise UsageError(
            f"session.serve({name}=...) must return a dict with a 'loss' (and optional numbers), not {ev!r}"
        )
    try:
        return {k: float(v) for k, v in ev.items()}
    except (TypeError, ValueError):
        raise UsageError(f"session.serve({name}=...) returned a value that is not a number: {ev!r}") from None


def _metrics(rec: Recorder, ranks: Sequence[int], reports: Sequence[CheckpointReport | FinalReport]) -> None:
    """The ``session.log`` rows each worker (``ranks``) sent in its checkpoint or final report."""
    if rec.trace is None:
        return
    for r, report in zip(ranks, reports, strict=True):
        rec.trace.add_metrics(r, report.metrics)
