"""The public API: ``qtrain.init(...)`` under ``mpiexec``/``srun`` returns this rank's
:class:`Session`. The serving rank calls :meth:`Session.serve`; every worker wraps its own
``nn.Module`` with :meth:`Session.optimizer` and keeps its own loop, loss, schedule and data
(:meth:`Session.shard`). See docs/library.md for the whole story and a 30-line example.

Start-up is the same agreement as ``qtrain train`` (``runtime/startup.py``): every rank loads the
config, and ranks that disagree on it, on the arguments of ``init`` or on the versions are
refused with one line from rank 0 (exit 2). The model is agreed when the workers create their
optimizers (``library/model_sharing.py``). From then on an exception on any rank ends the whole job
within seconds, with ``qtrain: rank R failed: ...`` (the traceback too when the error is the
script's own), as in ``qtrain train``."""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from qtrain.library.errors import UsageError

_SESSION: Session | None = None


@dataclass(frozen=True)
class _Request:
    """``init``'s arguments: every rank must pass the same ones."""

    config: str | None
    overrides: tuple[str, ...]
    out: str | None
    resume: str | None
    reset_worker_state: bool
    overwrite: bool


_NO_ARGUMENTS = _Request(None, (), None, None, False, False)  # qtrain.init(), qtrain.session()
# ``qtrain run`` (cli/run.py). Given no settings of its own, it lets the script's first
# ``qtrain.init(...)`` / ``qtrain.session()`` start the session: ``_JOIN(request)`` tells the
# serving rank whether the script configures itself, and returns the request to start with.
# Given settings (``_RUN_OPTIONS``: the script and those options, as words), it started the
# session before the script, and a script that calls ``qtrain.init`` with other arguments is
# refused in one line.
_JOIN = None
_RUN_OPTIONS: tuple[str, str] | None = None


def init(
    config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
    *,
    resume: str | None = None,
    reset_worker_state: bool = False,
    overwrite: bool = False,
) -> Session:
    """Join the job: load ``config`` (a YAML path; None: the defaults) with ``overrides``
    (``"algorithm.lr=0.01"``, as ``--set``), agree with every other rank, prepare the output
    directory ``out`` (default ``runs/run-ALGORITHM-TIME``) and return this rank's session.
    ``resume``: a checkpoint path or ``"auto"`` (the newest valid one in ``out``).
    Under ``qtrain run`` with options (``-c``, ``--set``, ``--out``...) the session exists already:
    ``init`` with the same arguments (or none) returns it, other arguments are refused (exit 2).
    Under ``qtrain run`` without options the script's own arguments configure the session, as
    under ``mpiexec python SCRIPT``."""
    global _SESSION, _JOIN
    request = _Request(
        str(config) if config is not None else None,
        tuple(overrides),
        str(out) if out is not None else None,
        resume,
        reset_worker_state,
        overwrite,
    )
    if _SESSION is None and _JOIN is not None:  # the script's first call under `qtrain run`
        join, _JOIN = _JOIN, None
        request = join(request)
    if _SESSION is not None:
        if request == _SESSION._request or request == _NO_ARGUMENTS:
            return _SESSION
        if _RUN_OPTIONS is not None and not _SESSION.is_server and _SESSION._worker is None:
            _refuse_script_settings(_SESSION, *_RUN_OPTIONS)
        raise UsageError(
            "qtrain.init() was called already (by `qtrain run` or earlier in this script) with other "
            "arguments; call qtrain.session() to get that session"
        )
    _SESSION = Session._start(request)
    return _SESSION


def _refuse_script_settings(sess: Session, script: str, options: str) -> None:
    """A script that configures itself under ``qtrain run OPTIONS``: every rank exits 2, rank 0
    says why (the serving ranks learn it where they wait for the workers' models)."""
    from qtrain.library.model_sharing import share_model

    why = (
        f"{script} calls qtrain.init() with settings of its own, and `qtrain run` was given {options}: "
        "configure the run in one place (drop those options and pass settings through the "
        "script's own arguments after --, or call qtrain.session() in the script)"
    )
    sess._agreed(lambda: share_model(sess._topology, None, sess.device, refusal=why))


def _start_builtin(request: _Request) -> Session:
    """``qtrain train``'s session (``library/trainer.py``): ``init`` that also loads the config's
    data and model on every rank."""
    global _SESSION
    if _SESSION is not None:
        raise UsageError("a qtrain session exists already in this process")
    _SESSION = Session._start(request, builtin=True)
    return _SESSION


def session() -> Session:
    """The session ``qtrain.init`` (or ``qtrain run``) started."""
    if _SESSION is None and _JOIN is not None:  # under `qtrain run` without options: the defaults
        return init()
    if _SESSION is None:
        raise UsageError(
            "no qtrain session: call qtrain.init(...) first, or launch the script with `qtrain run`"
        )
    return _SESSION


class Session:
    """This rank's part of the job. Attributes: ``rank``; ``is_server``; ``worker_index``
    (0-based, None on the serving rank); ``num_workers``; ``device`` (this rank's torch device);
    ``config`` (the resolved config); ``out_dir``."""

    def __init__(self, request, comm, svc, topology, setup, world, out_dir):
        self._request, self._backend, self._svc = request, comm, svc
        self._topology, self._setup, self._world = topology, setup, world
        self.rank: int = topology.rank
        self.is_server: bool = not topology.is_worker  # serves only (a co-located rank trains)
        self.worker_index: int | None = topology.worker_index if topology.is_worker else None
        self.num_workers: int = topology.num_workers
        self.device: torch.device = torch.device(world.devices[topology.rank])
        self.config = setup.cfg
        self.out_dir: Path = out_dir
        self._worker = None
        self._builtin_model = None  # qtrain train's: the config's model, built at start-up
        self._shards: list = []
        self._pending_shards: list | None = None  # a resume's data positions not yet given to a shard
        self._resumed_from = None  # the checkpoint a resume read (its shards' positions)
        self._resumed_shards = 0  # how many shards' positions that checkpoint holds
        self._resumed_extra = None
        self._finished = False
        # a co-located run (runtime.servers: colocated): this rank's serving side, and what its
        # lead evaluates (qtrain train's test split; None: the script evaluates in its own loop)
        self._colocated = None
        self._colocated_evaluation = None
        self._colocated_module = None  # a library script's model copy the co-located lead evaluates

    # ------------------------------------------------------------------ start-up
    @classmethod
    def _start(cls, request: _Request, builtin: bool = False) -> Session:
        """Start-up on every rank. ``builtin``: ``qtrain train``'s, which also loads the config's
        data and builds its model on every rank and agrees on both (``_builtin_model``)."""
        from qtrain.runtime import backends

        missing = backends.unavailable()
        if missing is not None:  # every rank finds the same, and none can tell the others
            print(f"qtrain: error: {missing}", file=sys.stderr, flush=True)
            raise SystemExit(2)

        from qtrain.config import dump_yaml
        from qtrain.engine.setup import resolved_config
        from qtrain.io.run_dir import write_config
        from qtrain.runtime.services import RankServices
        from qtrain.runtime.startup import Refused, agree_on_builtin, agree_on_config, prepare_outputs

        comm = backends.world()
        rank = comm.rank
        svc = RankServices.start(rank, lambda line: print(line, flush=True))
        try:
            # the resolved config is compared as text, so node-local copies of a file may differ in path
            arguments = repr((request.out, request.resume, request.reset_worker_state, request.overwrite))
            agree = agree_on_builtin if builtin else agree_on_config
            topology, setup, module, world = agree(
                comm, request.config, list(request.overrides), svc, arguments=arguments
            )
            out_dir = prepare_outputs(
                comm,
                topology.server,
                setup.algorithm.name,
                request.out,
                request.resume,
                request.overwrite,
                svc.echo if rank == 0 else None,
                kind="train" if builtin else "run",
            )
        except Refused as exc:
            svc.watchdog.stop()
            if rank == 0:
                print(f"qtrain: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except BaseException as exc:  # noqa: BLE001 - never leave the other ranks waiting
            _fail_rank(comm, svc, exc)
        self = cls(request, comm, svc, topology, setup, world, out_dir)
        self._builtin_model = module
        self._config_text = dump_yaml(resolved_config(setup.cfg, setup))
        try:
            svc.open_log(out_dir, world)
            if topology.is_lead:
                write_config(out_dir, self._config_text)
        except BaseException as exc:  # noqa: BLE001
            _fail_rank(comm, svc, exc)
        sys.excepthook = self._excepthook
        atexit.register(self._at_exit)
        return self

    # ------------------------------------------------------------------ the serving rank
    def serve(self, model: torch.nn.Module | None = None, evaluate=None, evaluate_train=None) -> dict | None:
        """Serve until every worker's loop has ended; write the trace, the checkpoints and
        ``summary.json``; return the summary. Only on a serving rank. With ``runtime.servers`` = K
        every serving rank calls it and serves its shard; the lead (rank 0) writes the run's files
        and returns the summary, the others return None.

        ``model``: this rank's own instance of the workers' architecture (names and shapes are
        checked against theirs; every worker then starts from its initial state, as DDP starts
        from rank 0's, and it holds the server's parameters and the combined buffers); without
        it the server keeps a stand-in with no forward and the workers start from worker 0's.
        ``evaluate(model) -> {"loss": ..., "accuracy": ..., ...}``: the server evaluates it every
        ``train.eval_every`` steps, at ``train.steps``, at an agreed stop and at the end, after
        the workers' buffers are combined (the summary's ``final_test_*``, the trace's
        evaluations, other keys in its ``metrics``). ``evaluate_train(model)``: once at the end,
        the summary's ``final_train_*``."""
        if self._topology.colocated:
            raise UsageError(
                "session.serve() in a co-located run (runtime.servers: colocated): every rank trains and "
                "serves its shard inside optimizer.step(), and no rank serves alone (session.is_server "
                "is False on every rank)"
            )
        if not self.is_server:
            raise UsageError(
                f"session.serve() on a worker (rank {self.rank}): only the serving rank serves "
                "(if session.is_server: session.serve())"
            )
        if self._finished:
            raise UsageError("session.serve() was called already")
        if evaluate is not None and model is None:
            raise UsageError(
                "session.serve(evaluate=...) needs model=: the server evaluates its own instance"
            )
        if model is not None and not isinstance(model, torch.nn.Module):
            raise UsageError(
                f"session.serve(model=...) takes a torch.nn.Module, not a {type(model).__name__}"
            )
        from qtrain.io.run_dir import write_summary
        from qtrain.library.model_sharing import share_model
        from qtrain.library.serve import Evaluation, serve_run

        self._svc.watchdog.enter("waiting for the workers' models (session.optimizer)")
        flat = self._agreed(lambda: share_model(self._topology, None, self.device, server_module=model))
        plan = self._plan(flat, self._agreed_groups(None))
        resume = self._resume_point(plan)
        if not self._topology.is_lead:  # another owner of runtime.servers: the lead reports the run
            from qtrain.runtime.shard_serving import serve_shard

            serve_shard(plan, flat, self._transport(plan), self._svc, resume)
            self._finished = True
            self._svc.watchdog.stop()
            return None
        builtin = self._builtin_model is not None
        title = "qtrain train" if builtin else "qtrain library run"
        self._world.announce(plan, self._svc.echo, resume, title=title, config_workers=builtin)
        evaluation = Evaluation(evaluate, evaluate_train, own_model=model is not None)
        summary = serve_run(self, plan, flat, self._transport(plan), resume, evaluation)
        write_summary(self.out_dir, summary)
        self._finished = True
        self._svc.watchdog.stop()
        return summary

    # ------------------------------------------------------------------ a worker
    def optimizer(
        self,
        params,
        overlap: bool | None = None,
        *,
        model: torch.nn.Module | None = None,
        evaluate=None,
        evaluate_train=None,
        **defaults,
    ):
        """Wrap the model (moved to ``session.device``) for this run: returns a
        :class:`~qtrain.library.optimizer.DistributedOptimizer`. ``params`` is what ``torch.optim``
        optimizers take: the model itself, an iterable of its parameters, or a list of param-group
        dicts (``params`` and per group ``lr``, ``weight_decay``, and the algorithm's own values:
        ``betas``/``eps`` for the Adam-type rules, ``momentum`` for the SGD-type ones); with
        parameters or groups, ``model=`` is the module they belong to. Keyword arguments
        (``lr=``, ``betas=``, ``weight_decay=``...) are every group's defaults, else the config's
        ``algorithm`` values apply. Every trainable parameter must be in one group
        (docs/library.md, "Param groups"). Every worker calls it with the same architecture and
        groups; the initial parameters and buffers then come from worker 0 (from the serving rank
        when it serves with a model of its own).
        ``overlap``: send each segment from backward's hooks (default ``runtime.overlap``); pass
        False to clip, unscale or otherwise change gradients between ``backward()`` and ``step()``.
        ``evaluate(model)`` and ``evaluate_train(model)``: in a co-located run (``runtime.servers:
        colocated``) rank 0, which leads, evaluates a copy of ``model`` (``copy.deepcopy``, made
        here) holding the master parameters with them, as ``session.serve(model, evaluate,
        evaluate_train)`` does on a separate serving rank; with separate serving ranks they are
        refused (pass them to ``session.serve``)."""
        if self.is_server:
            raise UsageError(
                "session.optimizer() on the serving rank (rank 0): only workers train a model "
                "(if session.is_server: session.serve())"
            )
        if self._worker is not None:
            raise UsageError("session.optimizer() was called already: a session trains one model")
        if isinstance(params, torch.nn.Module):
            if model is not None and model is not params:
                raise UsageError("session.optimizer(model, model=other): pass the model once")
            model = params
        elif model is None:
            raise UsageError(
                "session.optimizer(parameters or param groups) needs model=, the nn.Module they belong to "
                "(qtrain flattens and shares the whole model): session.optimizer(groups, model=model)"
            )
        if not isinstance(model, torch.nn.Module):
            raise UsageError(
                f"session.optimizer(): model= takes a torch.nn.Module, not a {type(model).__name__}"
            )
        if isinstance(overlap, (dict, list, tuple)):
            raise UsageError(
                "session.optimizer(): overlap= is a bool; pass param groups as the first argument"
            )
        if (evaluate is not None or evaluate_train is not None) and not self._topology.colocated:
            raise UsageError(
                "session.optimizer(evaluate=...): with separate serving ranks the server evaluates: pass "
                "evaluate= to session.serve(model, evaluate=...) (optimizer takes it in a co-located run, "
                "runtime.servers: colocated)"
            )
        if (evaluate is not None or evaluate_train is not None) and self._topology.is_lead:
            import copy

            from qtrain.library.serve import Evaluation

            # rank 0 leads: its own instance to evaluate, made before qtrain flattens the model
            self._colocated_module = copy.deepcopy(model)
            self._colocated_evaluation = Evaluation(evaluate, evaluate_train, own_model=True)
        from qtrain.engine.flat import FlatModel
        from qtrain.engine.param_groups import GROUP_KEYS, GroupError
        from qtrain.library.group_sharing import group_specs
        from qtrain.library.model_sharing import share_model
        from qtrain.library.optimizer import DistributedOptimizer
        from qtrain.library.worker import LibraryWorker
        from qtrain.runtime.overlap import uses_overlap

        odd = [
            (n, p.dtype) for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32
        ]
        if odd:
            raise UsageError(
                f"session.optimizer(): parameter {odd[0][0]} is {odd[0][1]}; qtrain keeps float32 parameters "
                "(use torch.autocast for bf16/fp16 compute, as examples/bn_cnn.py does)"
            )
        algorithm_name = self.config.algorithm.name
        flat = FlatModel(model, self.device)
        if flat.numel == 0:
            raise UsageError("session.optimizer(): the model has no trainable parameters")
        try:
            specs, shown = group_specs(algorithm_name, params, flat, defaults)
        except GroupError as exc:
            raise UsageError(f"session.optimizer(): {exc}") from None
        if len(specs) == 1 and not specs[0].options:
            specs = []  # one group of every parameter with the config's values: the plain run
        self._svc.watchdog.enter("agreeing on the model")
        flat = self._agreed(lambda: share_model(self._topology, flat, self.device))
        specs = self._agreed_groups(specs)
        plan = self._plan(flat, specs)
        resume = self._resume_point(plan)
        setting = self.config.runtime.overlap if overlap is None else ("on" if overlap else "off")
        use, why = uses_overlap(setting, self.device, self._backend.threads_may_communicate())
        engine = plan.worker_engine(self.worker_index, self.device)
        if self._topology.colocated:
            worker = self._colocated_worker(flat, plan, engine, use, resume)
        else:
            worker = LibraryWorker(self, flat, plan, engine, self._transport(plan), use, resume)
        self._worker = worker
        self._svc.log.info("overlap %s (%s), %d segment(s)", "on" if use else "off", why, len(plan.partition))
        return DistributedOptimizer(worker, shown, GROUP_KEYS[algorithm_name])

    def shard(self, dataset, batch_size: int | None = None, shuffle: bool | None = None, **loader_kwargs):
        """This worker's share of ``dataset`` (any map-style torch Dataset) as a DataLoader-like
        iterable whose position is checkpointed (``library/shard.py``). ``batch_size`` and
        ``shuffle`` default to ``data.batch_size`` and ``data.shuffle``; other keyword arguments go
        to ``torch.utils.data.DataLoader``."""
        if self.is_server:
            raise UsageError("session.shard() on the serving rank: only workers read data")
        from qtrain.library.shard import ShardedLoader

        data = self.config.data
        loader = ShardedLoader(
            dataset,
            data.batch_size if batch_size is None else batch_size,
            data.shuffle if shuffle is None else shuffle,
            self.config.seed,
            self.num_workers,
            self.worker_index,
            **loader_kwargs,
        )
        if self._pending_shards:
            loader.load_state_dict(self._pending_shards.pop(0))
        elif self._pending_shards is not None:  # resumed, and the checkpoint has no position for it
            raise UsageError(
                f"session.shard(): the checkpoint {self._resumed_from} holds the data positions of "
                f"{self._resumed_shards} shard(s), and this is shard {len(self._shards) + 1}: a resumed loop "
                "makes the same shards in the same order"
            )
        self._shards.append(loader)
        return loader

    def log(self, **metrics) -> None:
        """Record numbers (floats, ints, 0-d tensors) at the current step; they land in the
        trace's ``metrics`` table with this rank and step (sent with checkpoints and at the end)."""
        self._need_worker("session.log()").log(metrics)

    @property
    def step(self) -> int:
        """Steps done (``optimizer.step()`` calls, counted from the start of the run, resumes included)."""
        return self._worker.steps_done if self._worker is not None else 0

    @property
    def should_stop(self) -> bool:
        """True on every worker once a stop was agreed (SIGTERM, SIGUSR1, Slurm's preemption signal
        on any rank): checkpoint and leave the loop."""
        return self._worker is not None and self._worker.stopping

    @property
    def checkpoint_due(self) -> bool:
        """Whether the config's cadence (``checkpoint.every``, ``train.steps``) or an agreed stop asks
        for a checkpoint after this step."""
        from qtrain.engine.snapshots import is_checkpoint_step

        step = self.step
        return step > 0 and is_checkpoint_step(self.config, step, self._setup.steps, self.should_stop)

    @property
    def resumed_extra(self):
        """The ``extra`` this worker passed to the checkpoint the run resumed from (None on a fresh
        run). Known once ``session.optimizer()`` returned."""
        return self._resumed_extra

    def checkpoint(self, extra=None) -> None:
        """Write a checkpoint after the current step, on every worker at the same step: qtrain's
        complete state (server, every worker, data positions, RNGs, the learning rate, the
        combined buffers) plus this worker's ``extra`` (dicts, lists, numbers, strings, tensors:
        e.g. ``{"scheduler": sched.state_dict(), "epoch": epoch}``), returned by
        ``resumed_extra`` after a resume."""
        self._need_worker("session.checkpoint()").checkpoint(extra)

    def sync_buffers(self) -> None:
        """Combine the model buffers (``model.buffers``: average or broadcast) on every worker now,
        e.g. before evaluating BatchNorm models. Checkpoints and the end do it themselves."""
        self._need_worker("session.sync_buffers()").sync_buffers()

    def close(self) -> dict | None:
        """End this worker's part (at exit by itself): the server ends once every worker closed.
        Returns the run's summary on rank 0 of a co-located run (``runtime.servers: colocated``,
        whose rank 0 also leads), None elsewhere."""
        if self.is_server or self._finished:
            return None
        self._finished = True
        if self._worker is None:  # the server waits for our model: tell it there is none
            from qtrain.library.model_sharing import share_model

            self._agreed(lambda: share_model(self._topology, None, self.device, ended=True))
            return None
        self._worker.close()
        self._svc.watchdog.stop()
        return self._colocated.summary if self._colocated is not None else None

    # ------------------------------------------------------------------ internals
    def _need_worker(self, what: str):
        if self.is_server:
            raise UsageError(f"{what} on the serving rank: it belongs to the workers' loop")
        if self._worker is None:
            raise UsageError(f"{what} before session.optimizer(model)")
        if self._finished:
            raise UsageError(f"{what} after session.close()")
        return self._worker

    def _agreed(self, share):
        from qtrain.library.model_sharing import ModelsDiffer

        try:
            return share()
        except ModelsDiffer as exc:
            self._refuse(str(exc))

    def _refuse(self, message: str):
        """Every rank knows ``message``: rank 0 says it, every rank exits 2."""
        self._finished = True
        self._svc.watchdog.stop()
        if self.rank == 0:
            print(f"qtrain: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)

    def _agreed_groups(self, specs):
        """The workers' param groups, compared and handed to the serving ranks (every rank)."""
        from qtrain.engine.param_groups import GroupError
        from qtrain.library.group_sharing import share_groups

        try:
            return share_groups(self._topology, specs)
        except GroupError as exc:
            self._refuse(str(exc))

    def _plan(self, flat, specs=()):
        from qtrain.engine.param_groups import GroupError
        from qtrain.engine.partition import Partition
        from qtrain.engine.run_plan import RunPlan

        try:  # every rank computes the same cut from the agreed model, so every rank refuses
            partition = Partition.for_setup(self._setup, flat.numel, len(self._topology.servers))
        except ValueError as exc:  # e.g. too few segments for runtime.servers serving ranks
            self._refuse(str(exc))
        plan = RunPlan(self._setup, self._topology, partition, flat.layout, self._config_text, tuple(specs))
        try:
            plan.groups  # noqa: B018 - built (and checked) once, the same on every rank
        except GroupError as exc:
            self._refuse(str(exc))
        return plan

    def _resume_point(self, plan):
        if not self._request.resume:
            return None

        from qtrain.runtime.resume import distribute_checkpoint
        from qtrain.runtime.startup import Refused

        try:
            return distribute_checkpoint(self._topology, plan, self._request, self.out_dir, self._svc.echo)
        except Refused as exc:
            self._refuse(str(exc))

    def _colocated_worker(self, flat, plan, engine, overlap: bool, resume):
        """This co-located rank's worker, whose steps take its serving turns (``library/colocated.py``)."""
        from qtrain.library.colocated import ColocatedLibraryWorker, ColocatedServing
        from qtrain.runtime.colocated import open_colocated

        if self._topology.is_lead:
            builtin = self._builtin_model is not None
            title = "qtrain train" if builtin else "qtrain library run"
            self._world.announce(plan, self._svc.echo, resume, title=title, config_workers=builtin)
        worker_channel, server_channel = open_colocated(*self._channel_args(plan))
        serving = resume.serving if resume is not None else None
        self._colocated = ColocatedServing(
            self, plan, flat, server_channel, self._colocated_evaluation, serving
        )
        return ColocatedLibraryWorker(
            self, flat, plan, engine, worker_channel, overlap, self._colocated, resume
        )

    def _transport(self, plan):
        from qtrain.runtime.transport import open_transport

        return open_transport(*self._channel_args(plan))

    def _channel_args(self, plan) -> tuple:
        """What opening this rank's channels takes (``open_transport``, ``open_colocated``)."""
        s = plan.setup
        return (
            self._topology,
            plan.partition,
            s.uplink.codec,
            s.downlink.codec,
            self.device,
            self._world.cuda.enabled,
            self.config.runtime.timeout_s,
        )

    def _resume_shards(self, states: list, path) -> None:
        """A resumed worker's data positions (read from the checkpoint ``path``): for the loaders
        made already, and the next ones. A loader made beyond them is refused (:meth:`shard`),
        and so is a checkpoint while some are still unclaimed (:meth:`_shard_positions`)."""
        self._resumed_from, self._resumed_shards = path, len(states)
        for loader, state in zip(self._shards, states, strict=False):
            loader.load_state_dict(state)
        self._pending_shards = states[len(self._shards) :]

    def _shard_positions(self) -> list:
        """Every shard's position, for a checkpoint. After a resume, a loop that has made fewer
        shards than the checkpoint held would drop the others' positions from this checkpoint
        (and a later resume would start them over): refused, naming the first one missing."""
        if self._pending_shards:
            first = len(self._shards) + 1
            raise UsageError(
                f"session.checkpoint(): the run resumed from {self._resumed_from}, which holds the data "
                f"positions of {self._resumed_shards} shard(s), and this loop has made {len(self._shards)}: "
                f"the position of shard {first} would be lost (a resumed loop makes the same shards in the "
                "same order, before its first checkpoint)"
            )
        return [s.state_dict() for s in self._shards]

    def _excepthook(self, kind, exc, tb) -> None:
        _fail_rank(self._backend, self._svc, exc, tb)

    def _at_exit(self) -> None:
        try:
            if self.is_server and not self._finished:  # a script that never served: tell everyone
                from qtrain.library.model_sharing import share_model

                self._svc.watchdog.enter("ending without serving: telling the workers")
                self._agreed(lambda: share_model(self._topology, None, self.device, serving=False))
                return
            self.close()
        except SystemExit as exc:  # a refusal at exit: its status, without "Exception ignored in atexit"
            self._backend.finalize()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        except BaseException as exc:  # noqa: BLE001
            _fail_rank(self._backend, self._svc, exc, exc.__traceback__)


def _fail_rank(comm, svc, exc: BaseException, tb=None, expected: tuple = ()):
    """One line naming this rank and the cause, then the whole job ends (MPI_Abort). qtrain's own
    errors (a usage error, a bad file, a diverged run, and ``expected``) are that line alone;
    anything else is the script's, so its traceback goes first (the rank log has it always)."""
    from qtrain.engine.divergence import Diverged
    from qtrain.engine.step import WorkersDisagree
    from qtrain.io.disk_errors import describe
    from qtrain.runtime.faults import InjectedFault
    from qtrain.runtime.services import abort
    from qtrain.runtime.waiting import Stalled

    ours = isinstance(
        exc, (UsageError, Diverged, OSError, WorkersDisagree, Stalled, InjectedFault, *expected)
    )
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    if svc.log is not None:
        try:
            svc.log.error("failed:\n%s", text)
        except Exception:  # noqa: BLE001 - the log itself may be what failed
            pass
    if not ours:
        print(text, file=sys.stderr, end="", flush=True)
    print(f"qtrain: rank {comm.rank} failed: {describe(exc)}", file=sys.stderr, flush=True)
    abort(comm)
