import subprocess
import sys

import pytest

pytestmark = pytest.mark.mpi


def test_workers_send_packed_buffers_to_rank0(mpiexec):
    proc = subprocess.run(
        [*mpiexec, "-n", "3", sys.executable, "-m", "qtrain.runtime.smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "9 codecs x 2 workers, 0 failures" in proc.stdout
