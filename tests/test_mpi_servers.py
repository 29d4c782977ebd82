"""Several serving ranks under mpiexec (issue 23): the transport sends each segment's uplink to
its owner, and each owner broadcasts its own segments' downlinks on its own communicator
(runtime/communicators.py), fixed-size and variable-size codecs alike. The simulator's K servers
are compared with one in test_servers_invariance.py."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mpiexec_command

SCRIPT = Path(__file__).parent / "mpi_scripts" / "transport_owners.py"


@pytest.mark.parametrize("servers, ranks, codec", [(2, 5, "sign"), (3, 6, "threshold")])
def test_each_owner_receives_its_segments_and_broadcasts_them(servers, ranks, codec):
    p = subprocess.run(
        [*mpiexec_command(), "-n", str(ranks), sys.executable, str(SCRIPT), str(servers), codec],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    owners = list(range(servers))
    # the ranks' lines may interleave on the launcher's stdout: count them, not the line breaks
    ranks_ok = sorted(
        int(r) for r in re.findall(rf"ok rank (\d+) owners {re.escape(str(owners))} segments 5", p.stdout)
    )
    assert ranks_ok == list(range(ranks)), p.stdout
