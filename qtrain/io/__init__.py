"""Files a run writes: resolved config and summary (HDF5 checkpoints and traces come later)."""
