"""The library's own error: a call qtrain cannot serve, with a message that says how to fix it."""

from __future__ import annotations


class UsageError(ValueError):
    """The library was called in a way qtrain cannot serve (an optimizer on the serving rank,
    ``step()`` without a backward pass, parameters reshaped after ``session.optimizer(model)``...).
    Raised on the rank that made the call; the job then ends with one line naming that rank."""
