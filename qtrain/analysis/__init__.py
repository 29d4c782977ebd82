"""Reads traces and checkpoints: tables, figures, comparisons."""
