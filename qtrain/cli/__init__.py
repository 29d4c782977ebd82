"""The typer command-line app; each subcommand lives in its own module."""
