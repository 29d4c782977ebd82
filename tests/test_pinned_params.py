"""Numerics that must not drift: the final ``params_sha256`` of short simulator runs, pinned.

Refactors of the engine, the codecs or the drivers must leave every one of these unchanged (the MPI
runs equal the simulator, tested elsewhere, so these pin them too). What is pinned is the output of
one commit's code, ``pinned_at`` in ``golden/params_sha256.json``; how that output rounds depends on
the host, so the file keeps it per **numerics fingerprint** (``numerics_fingerprint.py``: a probe
through the same GEMM, ATen, numpy and numba kernels the runs use, hashed with their versions).
On 2026-12-01 an Intel and an AMD host that both report torch's ``AVX512`` capability gave
different values for all twelve cases; a key of torch version and capability could not tell them
apart, and the fingerprint does.

Every case is checked, on every host, against one of:

1. **the golden** for this host's fingerprint, when the file has one (fast: just the case);
2. **the reference**: the pinned commit's own code, run on this host. Its tree comes from
   ``git archive`` into a temporary folder, its test script runs there with this venv's python
   (``reference_command``), and the values are cached per commit and fingerprint under
   ``~/.cache/qtrain/pinned`` (``QTRAIN_PINNED_CACHE``): about 30 s, once per host.

The reference also guards the golden: if a case differs from its golden, the reference decides.
It agrees with the golden: the code drifted, and the test fails. It agrees with this run: this host
shares a fingerprint with the one that recorded the golden but rounds differently (the probe missed
a kernel); the case passes, and the summary says so, so that the probe can be extended.

Nothing is skipped silently. ``make test`` ends with a "pinned numerics" section that says what each
case was checked against. A case that cannot be checked (no golden for this fingerprint and no git
history to build the reference from, as in a source tarball) is skipped with a line saying so there;
under ``CI=true`` it fails instead.

Commands (from the repository root):

- ``python tests/test_pinned_params.py --fingerprint``: this host's fingerprint and description;
- ``python tests/test_pinned_params.py --add-host [--how TEXT]``: record the golden for this host,
  computed from the *pinned commit* (never from the working tree), e.g. under
  ``ATEN_CPU_CAPABILITY=avx2`` with ``--how "emulated: ATEN_CPU_CAPABILITY=avx2"``;
- ``python tests/test_pinned_params.py --repin``: only for a change whose numerics are meant to
  differ, committed first: pins HEAD's values, computed from ``git archive HEAD`` as every other
  host's reference will be (a clean tree is required), and drops every other host's golden;
- ``python tests/test_pinned_params.py --print``: the working tree's values (what the reference
  runs at a commit pinned by ``--repin``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # numerics_fingerprint, when run as a script
from numerics_fingerprint import fingerprint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "params_sha256.json"
SHORT = ["train.steps=30", "train.eval_every=10"]
CASES = {
    "default-600": ("configs/default.yaml", [], 2),
    "sgd": ("configs/sgd.yaml", SHORT, 2),
    "adam": ("configs/adam.yaml", SHORT, 2),
    "ecq-sgd": ("configs/ecq-sgd.yaml", SHORT, 2),
    "qadam": ("configs/qadam.yaml", SHORT, 2),
    "qadam-weights": ("configs/qadam.yaml", [*SHORT, "algorithm.weight_quantization=true"], 2),
    "efficient-adam": ("configs/efficient-adam.yaml", SHORT, 3),
    "efficient-adam-uniform4": (
        "configs/efficient-adam.yaml",
        [*SHORT, "uplink.codec=uniform", "uplink.bits=4", "downlink.codec=ternary"],
        3,
    ),
    "qcmd-adagrad": ("configs/qcmd-adagrad.yaml", [*SHORT, "algorithm.l1=0.01"], 2),
    "qrda-adagrad": ("configs/qrda-adagrad.yaml", SHORT, 2),
    "sgd-topk-ef": (
        "configs/sgd.yaml",
        [
            *SHORT,
            "uplink.codec=topk",
            "uplink.ratio=0.05",
            "uplink.error_feedback=true",
            "downlink.codec=fp16",
        ],
        2,
    ),
    "adam-bf16-threshold-dense": (
        "configs/adam.yaml",
        [*SHORT, "uplink.codec=threshold", "uplink.layout=dense", "downlink.codec=bf16"],
        2,
    ),
}


def final_sha(name: str) -> str:
    from qtrain.config import load_config
    from qtrain.engine.simulator import simulate

    config, overrides, workers = CASES[name]
    return simulate(load_config(config, overrides), workers, None, log=lambda _: None)["params_sha256"]


def describe_numerics() -> str:
    """What the golden's ``recorded_on`` says about a host."""
    from qtrain.bench.host import cpu_model

    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"{cpu_model()} ({capability}), torch {torch.__version__}, numpy {np.__version__}, "
        f"numba {numba.__version__}"
    )


def load_golden() -> dict:
    return json.loads(GOLDEN.read_text())


# ------------------------------------------------------------------ the reference: the pinned commit
class ReferenceUnavailable(Exception):
    """The pinned commit's code cannot be run here (no git, or a history without that commit)."""


def cache_file(commit: str, fp: str) -> Path:
    """Keyed by the commit, the fingerprint and what the host says about itself (its CPU model,
    capability and versions), so that two hosts sharing a home directory and a fingerprint do not
    share a reference."""
    root = Path(os.environ.get("QTRAIN_PINNED_CACHE", Path.home() / ".cache" / "qtrain" / "pinned"))
    host = hashlib.sha256(describe_numerics().encode()).hexdigest()[:8]
    return root / f"{commit[:12]}-{fp}-{host}.json"


def _git(*args: str) -> bytes:
    try:
        p = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ReferenceUnavailable(f"git cannot run: {e}") from None
    if p.returncode:
        msg = p.stderr.decode(errors="replace").strip().splitlines()
        raise ReferenceUnavailable(f"git {args[0]} failed: {msg[-1] if msg else p.returncode}")
    return p.stdout


def run_reference(golden: dict) -> dict[str, str]:
    """The pinned commit's values on this host: its tree unpacked from ``git archive`` into a
    temporary folder, its ``reference_command`` run there (this venv's python, that tree first on
    ``PYTHONPATH``, its numba cache inside the folder), the JSON object it prints parsed."""
    commit = golden["pinned_at"]
    _git("cat-file", "-e", f"{commit}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="qtrain-pinned-") as tree:
        with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", commit))) as tar:
            # our own repository's archive; the "data" filter where this Python has it (3.11.4+)
            tar.extractall(tree, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        env = {**os.environ, "PYTHONPATH": tree, "NUMBA_CACHE_DIR": str(Path(tree) / ".numba")}
        p = subprocess.run(
            [sys.executable, *golden["reference_command"]],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    if p.returncode:
        raise RuntimeError(f"the reference at {commit[:12]} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout[p.stdout.index("{") :])


def reference_values(golden: dict, fp: str, use_cache: bool = True) -> dict[str, str]:
    """The pinned commit's values for this fingerprint, from the cache or computed (and cached)."""
    cached = cache_file(golden["pinned_at"], fp)
    if use_cache and cached.exists():
        return json.loads(cached.read_text())
    values = run_reference(golden)
    missing = sorted(set(CASES) - set(values))
    if missing:
        raise RuntimeError(
            f"the pinned commit {golden['pinned_at'][:12]} computes no value for {missing}: "
            "a new case needs --repin"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    tmp.replace(cached)
    return values


# ------------------------------------------------------------------ the test
class Pinned:
    """One host's view of the golden file: this fingerprint's golden, and the reference on demand."""

    def __init__(self, report: list[str], golden: dict, fp: str, compute_reference=reference_values):
        self.golden, self.fp, self.report = golden, fp, report
        self.entry = golden["hosts"].get(fp)
        self._compute_reference = compute_reference
        self._reference: dict | BaseException | None = None

    @property
    def commit(self) -> str:
        return self.golden["pinned_at"][:12]

    def reference(self, use_cache: bool = True) -> dict[str, str]:
        """The pinned commit's values on this host, computed once per session (a failure too, so
        that twelve cases do not each rerun a reference that cannot work); ``use_cache=False`` the
        first time: when it arbitrates a golden mismatch, nothing cached is trusted."""
        if self._reference is None:
            try:
                self._reference = self._compute_reference(self.golden, self.fp, use_cache)
            except Exception as e:  # noqa: BLE001 - kept and raised again for every case
                self._reference = e
        if isinstance(self._reference, BaseException):
            raise self._reference
        return self._reference

    def check(self, name: str, got: str) -> None:
        if self.entry is not None:
            self._check_golden(name, got)
            return
        try:
            expected = self.reference()[name]
        except ReferenceUnavailable as e:
            line = (
                f"NOT CHECKED: fingerprint {self.fp} has no golden and the reference at {self.commit} "
                f"cannot be built ({e})"
            )
            self.report.append(line)
            if os.environ.get("CI") == "true":
                pytest.fail(line)
            pytest.skip(line)
        self.report.append(
            f"checked against the reference computed from {self.commit} on this host "
            f"(fingerprint {self.fp} has no golden; "
            f"cached in {cache_file(self.golden['pinned_at'], self.fp)})"
        )
        assert got == expected, f"{name}: drifted from the pinned commit {self.commit} on this host"

    def _check_golden(self, name: str, got: str) -> None:
        pinned = self.entry["params_sha256"][name]
        source = (
            f"fingerprint {self.fp}'s golden (recorded on {self.entry['recorded_on']}; {self.entry['how']})"
        )
        if got == pinned:
            self.report.append(f"checked against {source}")
            return
        try:
            reference = self.reference(use_cache=False)[name]
        except ReferenceUnavailable as e:
            pytest.fail(f"{name}: differs from {source}, and the reference cannot be built to tell why ({e})")
        if reference == got:
            self.report.append(
                f"checked against the reference computed from {self.commit} on this host: it agrees with "
                f"this run, not with {source}; two hosts share a fingerprint but round differently, "
                "so extend tests/numerics_fingerprint.py"
            )
            return
        assert got == reference, (
            f"{name}: drifted from the pinned commit {self.commit} (its reference on this host "
            f"{'matches' if reference == pinned else 'differs from'} {source})"
        )


@pytest.fixture(scope="module")
def pinned(pinned_report) -> Pinned:
    return Pinned(pinned_report, load_golden(), fingerprint())


@pytest.mark.parametrize("name", list(CASES))
def test_final_parameters_are_unchanged(name, pinned):
    pinned.check(name, final_sha(name))


def test_the_golden_file_pins_every_case_for_every_host():
    golden = load_golden()
    assert len(golden["pinned_at"]) == 40 and golden["reference_command"]
    for fp, entry in golden["hosts"].items():
        assert set(entry["params_sha256"]) == set(CASES), fp
        assert entry["recorded_on"] and entry["how"], fp


class TestTheCheckItself:
    """What ``Pinned.check`` concludes, with a made-up golden and reference."""

    GOLDEN = {
        "pinned_at": "a" * 40,
        "hosts": {"fp1": {"recorded_on": "host 1", "how": "native", "params_sha256": {"c": "x"}}},
    }

    def pinned(self, fp, reference):
        def compute(golden, fp, use_cache=True):
            if isinstance(reference, Exception):
                raise reference
            return {"c": reference}

        report = []
        return Pinned(report, self.GOLDEN, fp, compute), report

    def test_a_match_with_the_golden_needs_no_reference(self):
        p, report = self.pinned("fp1", ReferenceUnavailable("never asked"))
        p.check("c", "x")
        assert report == ["checked against fingerprint fp1's golden (recorded on host 1; native)"]

    def test_a_drift_fails_when_the_reference_agrees_with_the_golden(self):
        with pytest.raises(AssertionError, match="drifted from the pinned commit aaaaaaaaaaaa"):
            self.pinned("fp1", "x")[0].check("c", "y")

    def test_a_fingerprint_collision_passes_and_says_so(self):
        p, report = self.pinned("fp1", "y")
        p.check("c", "y")
        assert "two hosts share a fingerprint but round differently" in report[0]

    def test_a_mismatch_that_cannot_be_explained_fails(self):
        with pytest.raises(pytest.fail.Exception, match="reference cannot be built"):
            self.pinned("fp1", ReferenceUnavailable("no git"))[0].check("c", "y")

    def test_no_golden_uses_the_reference(self):
        p, report = self.pinned("fp2", "y")
        p.check("c", "y")
        assert report[0].startswith("checked against the reference computed from aaaaaaaaaaaa")
        with pytest.raises(AssertionError, match="drifted"):
            p.check("c", "z")

    @pytest.mark.parametrize("ci", ["", "true"])
    def test_an_unchecked_case_is_said_and_fails_under_ci(self, ci, monkeypatch):
        monkeypatch.setenv("CI", ci)
        p, report = self.pinned("fp2", ReferenceUnavailable("no git"))
        with pytest.raises(pytest.fail.Exception if ci else pytest.skip.Exception, match="NOT CHECKED"):
            p.check("c", "y")
        assert report[0].startswith("NOT CHECKED: fingerprint fp2 has no golden")


# ------------------------------------------------------------------ commands
def _write(golden: dict) -> None:
    GOLDEN.write_text(json.dumps(golden, indent=2) + "\n")


def main(argv: list[str]) -> None:
    if argv == ["--print"]:
        print(json.dumps({name: final_sha(name) for name in CASES}, indent=2))
    elif argv == ["--fingerprint"]:
        print(f"{fingerprint()}  {describe_numerics()}")
    elif argv[:1] == ["--add-host"] and (len(argv) == 1 or (len(argv) == 3 and argv[1] == "--how")):
        golden, fp = load_golden(), fingerprint()
        how = argv[2] if len(argv) == 3 else "native"
        values = reference_values(golden, fp)
        entry = {"recorded_on": describe_numerics(), "how": how, "params_sha256": values}
        golden["hosts"][fp] = entry
        _write(golden)
        print(f"{fp}: golden from {golden['pinned_at'][:12]} recorded ({how})")
    elif argv == ["--repin"]:
        dirty = _git("status", "--porcelain").decode().splitlines()
        if [line for line in dirty if not line.endswith(str(GOLDEN.relative_to(REPO)))]:
            sys.exit("--repin pins HEAD's code: commit the change first (the tree is not clean)")
        golden = {
            "pinned_at": _git("rev-parse", "HEAD").decode().strip(),
            "reference_command": ["tests/test_pinned_params.py", "--print"],
            "hosts": {},
        }
        values = run_reference(golden)  # HEAD's own tree, as every other host's reference will be
        golden["hosts"][fingerprint()] = {
            "recorded_on": describe_numerics(),
            "how": "native",
            "params_sha256": values,
        }
        _write(golden)
        print(f"pinned at {golden['pinned_at'][:12]}; other hosts' goldens dropped")
    else:
        sys.exit(
            "usage: tests/test_pinned_params.py --print | --fingerprint | --add-host [--how TEXT] | --repin"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
