"""``qtrain checkpoint export`` writes a tied parameter under every name its model's
``state_dict`` has, so ``load_state_dict(strict=True)`` loads the export (issue 35). Before, a
nanoGPT-shaped model (``self.transformer.wte.weight = self.lm_head.weight``) exported
``transformer.wte.weight`` alone and the strict load failed with ``Missing key(s) in state_dict:
"lm_head.weight"``. A checkpoint records the other names as ``/aliases`` (docs/hdf5-schema.md);
one written before that exports as it always did.

The MPI launch here also checks issue 35's ``qtrain run`` of a script that configures itself and
the strict ``summary.json`` of a run whose loss was never reported."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import mpiexec_command
from mpi_helpers import QTRAIN
from tied_models import TiedMLP, TinyGPT, tied_mlp
from torch import nn
from typer.testing import CliRunner

from qtrain.cli.app import app
from qtrain.config import load_config
from qtrain.engine.flat import FlatModel, parameter_aliases
from qtrain.engine.simulator import simulate
from qtrain.io.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from qtrain.io.summary_file import read_summary

TESTS = Path(__file__).parent
CPU = torch.device("cpu")


def export(ckpt: Path, out: Path):
    return CliRunner().invoke(app, ["checkpoint", "export", str(ckpt), str(out)])


def strict_json(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity, as strict parsers do."""

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_the_aliases_are_every_other_state_dict_name_of_a_trained_parameter():
    gpt = TinyGPT()
    assert parameter_aliases(gpt, ["transformer.wte.weight"]) == {"lm_head.weight": "transformer.wte.weight"}
    shared = nn.Linear(3, 3)
    twice = nn.Sequential(shared, nn.ReLU(), shared)  # one submodule under two names
    flat = FlatModel(twice, CPU)
    assert [name for name, _, _ in flat.layout] == ["0.weight", "0.bias"]
    assert flat.layout.aliases == {"2.weight": "0.weight", "2.bias": "0.bias"}
    names = {name for name, _, _ in flat.layout} | set(flat.layout.aliases)
    assert names == set(twice.state_dict())  # what the export writes is what strict loading needs
    frozen = TinyGPT()
    frozen.lm_head.weight.requires_grad_(False)  # frozen parameters are not trained nor exported
    assert parameter_aliases(frozen, ["transformer.wpe.weight"]) == {}
    assert FlatModel(nn.Linear(2, 2), CPU).layout.aliases == {}


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory):
    """A simulated run of an MLP whose middle weight is used twice (``again.weight`` is
    ``block.weight``): its final checkpoint."""
    out = tmp_path_factory.mktemp("tied") / "run"
    cfg = load_config("configs/default.yaml", ["model.name=tied_models:tied_mlp", "train.steps=20"])
    simulate(cfg, 2, out, log=lambda _: None)
    return out / "checkpoints" / "step-0000020.h5"


def test_a_simulated_tied_model_exports_under_both_names(tied_run, tmp_path):
    tree, _ = read_checkpoint(tied_run)
    assert json.loads(tree["aliases"]) == {"again.weight": "block.weight"}
    result = export(tied_run, tmp_path / "m.pt")
    assert result.exit_code == 0 and "1 tied name(s)" in result.output, result.output
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    model = tied_mlp((1, 8, 8), 10)
    model.load_state_dict(state, strict=True)
    offset, shape = next((o, s) for n, o, s in json.loads(tree["layout"]) if n == "block.weight")
    trained = tree["params"][offset : offset + shape[0] * shape[1]].view(*shape)
    assert torch.equal(model.block.weight, trained) and torch.equal(model.again.weight, trained)
    assert model.again.weight is model.block.weight  # still one parameter after loading
    assert not torch.equal(trained, TiedMLP(64, 10).block.weight.detach())  # it did train


def test_a_checkpoint_without_aliases_exports_as_before(tied_run, tmp_path):
    tree, meta = read_checkpoint(tied_run)
    del tree["aliases"]  # what every checkpoint written before the record looks like
    old = write_checkpoint(tmp_path / "step-0000020.h5", tree, meta)
    result = export(old, tmp_path / "m.pt")
    assert result.exit_code == 0 and "tied" not in result.output, result.output
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert sorted(state) == sorted(n for n, _, _ in json.loads(tree["layout"]))
    with pytest.raises(RuntimeError, match='Missing key.*"again.weight"'):
        tied_mlp((1, 8, 8), 10).load_state_dict(state, strict=True)


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        (
            '{"again.weight": "nothing.weight"}',
            "'again.weight' names 'nothing.weight', which is not a parameter",
        ),
        ('{"head.weight": "block.weight"}', "'head.weight' is a parameter of its own"),
        ('["again.weight"]', "must be a JSON object"),
        ("{", "not JSON"),
    ],
)
def test_a_bad_alias_record_is_one_line_naming_it(tied_run, tmp_path, aliases, message):
    tree, meta = read_checkpoint(tied_run)
    bad = write_checkpoint(tmp_path / "step-0000020.h5", {**tree, "aliases": aliases}, meta)
    result = export(bad, tmp_path / "m.pt")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{bad}: /aliases: {message}" in lines[0]
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(CheckpointError):
        from qtrain.engine.checkpoint_files import load_run_checkpoint

        load_run_checkpoint(bad)


@pytest.mark.mpi
def test_a_self_configuring_script_under_qtrain_run_trains_a_tied_model_that_exports(tmp_path):
    """``qtrain run tied_gpt.py -- OUT`` with no qtrain run options: the script's own
    ``qtrain.init(None, [...], out=OUT)`` configures the run on every rank, the serving rank
    included (before: "qtrain.init() was called already ... with other arguments"). Its
    nanoGPT-shaped model's export loads strictly into a fresh instance and equals worker 0's
    trained state_dict under both tied names; the summary of a run whose loss was never reported
    is strict JSON (null, not NaN)."""
    out = tmp_path / "gpt"
    p = subprocess.run(
        [*mpiexec_command(), "-n", "3", *QTRAIN, "run", str(TESTS / "library_scripts" / "tied_gpt.py")]
        + ["--", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / "served-by-script").exists(), "the serving rank did not run the script"

    ckpt = out / "checkpoints" / "step-0000006.h5"
    assert json.loads(read_checkpoint(ckpt)[0]["aliases"]) == {"lm_head.weight": "transformer.wte.weight"}
    result = export(ckpt, tmp_path / "gpt.pt")
    assert result.exit_code == 0, result.output
    exported = torch.load(tmp_path / "gpt.pt", weights_only=True)
    trained = torch.load(out / "worker-0.pt", weights_only=True)
    assert sorted(exported) == sorted(trained)  # lm_head.weight and both names of the shared buffer
    fresh = TinyGPT()
    fresh.load_state_dict(exported, strict=True)
    for name, value in trained.items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert torch.equal(fresh.lm_head.weight, trained["lm_head.weight"])
    assert torch.equal(fresh.transformer.wte.weight, trained["transformer.wte.weight"])
    assert not torch.equal(trained["lm_head.weight"], TinyGPT().lm_head.weight.detach())  # trained

    text = (out / "summary.json").read_text()
    summary = strict_json(text)  # before: "final_batch_loss": NaN, which this refuses
    assert summary["final_batch_loss"] is None and summary["steps"] == 6
    assert read_summary(out / "summary.json")["final_batch_loss"] is None
