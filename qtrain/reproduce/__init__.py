"""Paper reproductions (``qtrain reproduce NAME``, ``make reproduce``): each regenerates one
headline result of the four papers on real or synthetic data with the simulator (bit-identical to
an MPI run, docs/architecture.md), and writes ``OUT/NAME/results.json``, ``OUT/NAME/table.md`` and
its PNG plots. docs/reproductions.md puts them beside the papers' claims."""
