"""``python -m qtrain.runtime.smoke`` under mpiexec: every codec's messages through the product's
transport (Isend uplinks, Ibcast downlinks), each received message checked byte for byte and by
the values it decodes to (qtrain/runtime/smoke.py). The line's counts say every message was
checked: codecs x segments x workers each way."""

import subprocess
import sys

import pytest

from qtrain.runtime.smoke import CASES

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks, servers", [(3, 1), (4, 2)], ids=["one-server", "two-serving-ranks"])
def test_every_codec_crosses_the_transport_both_ways_intact(mpiexec, ranks, servers):
    proc = subprocess.run(
        [*mpiexec, "-n", str(ranks), sys.executable, "-m", "qtrain.runtime.smoke", str(servers)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    messages = len(CASES) * 2 * (ranks - servers)  # 2 segments, every worker's each way
    assert proc.stdout.splitlines() == [
        f"smoke: {len(CASES)} codecs x 2 segments: {messages} uplink and {messages} downlink messages "
        "checked, 0 failures"
    ], proc.stdout + proc.stderr
