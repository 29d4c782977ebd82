"""MPI lives here and nowhere else: roles, transport, launch/topology, signals, watchdog."""
