"""``qtrain checkpoint inspect|export``."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Inspect or export HDF5 checkpoints.", no_args_is_help=True)


def _load(path: str):
    from qtrain.cli.errors import fail
    from qtrain.engine.checkpoint_files import load_run_checkpoint
    from qtrain.io.checkpoint import CheckpointError

    try:
        return load_run_checkpoint(path)
    except CheckpointError as exc:
        fail(str(exc))


def _walk(tree: dict, prefix: str = ""):
    import torch

    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}/{k}")
        elif isinstance(v, torch.Tensor):
            what = f"{v.dtype} {tuple(v.shape)}"
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                what += f"  NON-FINITE: {int(torch.isnan(v).sum())} NaN, {int(torch.isinf(v).sum())} Inf"
            yield f"{prefix}/{k}", what, v.numel() * v.element_size()
        else:
            text = v if not isinstance(v, str) or len(v) < 40 else f"<{len(v)} characters>"
            yield f"{prefix}/{k}", repr(text), 0


@app.command("inspect")
def inspect(
    ckpt: str = typer.Argument(..., help="A checkpoint file (OUT/checkpoints/step-N.h5)."),
    show_config: bool = typer.Option(False, "--config", help="Also print the stored config."),
) -> None:
    """What is inside, sizes, step, config, and the verification result (exit 2 when a stored
    value is NaN or Inf)."""
    from qtrain.cli.errors import fail

    tree, meta = _load(ckpt)
    entries = list(_walk(tree))
    arrays = sum(1 for _, _, size in entries if size)
    m = {k: meta.get(k, "?") for k in ("algorithm", "workers", "world_size", "created", "qtrain_version")}
    m |= {k: meta.get(k, "?") for k in ("torch_version", "mpi_library", "params_sha256")}
    typer.echo(
        f"{ckpt}: step {tree.get('step', '?')}, {m['algorithm']}, {m['workers']} workers "
        f"(world {m['world_size']}), created {m['created']}"
    )
    typer.echo(f"qtrain {m['qtrain_version']}, torch {m['torch_version']}, {m['mpi_library']}")
    typer.echo(
        f"verified: the file SHA-256; no links or outside storage; every item against the checkpoint "
        f"layout of its config; all datasets' fletcher32 checksums ({arrays} arrays); params_sha256 "
        f"{m['params_sha256'][:16]}... matches"
    )
    width = max(len(p) for p, _, _ in entries)
    for path, what, size in entries:
        typer.echo(f"  {path:<{width}}  {what}{f'  {size / 1e6:.3f} MB' if size else ''}")
    if show_config:
        typer.echo(tree["config"])
    bad = [path for path, what, _ in entries if "NON-FINITE" in what]
    if bad:  # intact bytes, but not a state to train from (qtrain itself never writes one)
        fail(f"{ckpt}: non-finite values in {', '.join(bad)}")


@app.command("export")
def export(
    ckpt: str = typer.Argument(..., help="A checkpoint file."),
    out: str = typer.Argument(..., help="Output .pt file: a plain state_dict."),
) -> None:
    """Write the model (parameters and buffers) as a plain state_dict, loadable with
    torch.load(weights_only=True) and then the model's load_state_dict(strict=True): a tied
    parameter under every name its model's state_dict has (one tensor, as torch's own). Frozen
    parameters are not in checkpoints: a model with some needs strict=False."""
    import torch

    from qtrain.cli.errors import fail

    tree, _ = _load(ckpt)
    params = tree["params"]
    state = {}
    for name, offset, shape in json.loads(tree["layout"]):
        n = 1
        for d in shape:
            n *= d
        state[name] = params[offset : offset + n].view(*shape).clone()
    # tied parameters' other names (checked against /layout on load); a checkpoint written
    # before they were recorded has none
    aliases = json.loads(tree.get("aliases", "{}"))
    state.update({alias: state[name] for alias, name in aliases.items()})
    buffers = tree.get("buffers", {})  # BatchNorm statistics and the like, as the server evaluated
    state.update({name: b.clone() for name, b in buffers.items()})
    try:
        torch.save(state, out)
    except (OSError, RuntimeError) as exc:  # a directory, a missing parent, no permission, no space
        cause = exc.__cause__ or exc
        fail(f"checkpoint export: cannot write {out!r} ({getattr(cause, 'strerror', None) or cause})")
    also = f" and {len(buffers)} buffers" if buffers else ""
    tied = f", {len(aliases)} tied name(s) sharing a parameter" if aliases else ""
    typer.echo(f"wrote {len(state)} tensors ({params.numel()} parameters{also}{tied}) to {out}")
