"""Where a rank's main thread is in its own script's code, for the watchdog's message.

After ``qtrain.init()`` returns, the script runs its own code until it calls qtrain again; qtrain's
last phase ('set-up') is then the wrong name for a rank that blocks there: a worker blocked in
``input()`` under ``qtrain run`` was reported as "phase 'set-up' has run 450 s" (issue #37). The
main thread's stack tells the two apart: a frame of qtrain at work (any module but the launchers
that run the script) means qtrain's phase is the right name; none means the rank is in the
script, and its innermost line of the user's own code is the one to name.
"""

from __future__ import annotations

import sys
import sysconfig
import threading
import traceback
from pathlib import Path

_QTRAIN = Path(__file__).resolve().parent.parent
# qtrain's modules that only run a user's script (the CLI entry and `qtrain run`): around the
# script's frames, never at work inside them
_LAUNCHERS = {_QTRAIN / "__main__.py", _QTRAIN / "cli" / "app.py", _QTRAIN / "cli" / "run.py"}
_INSTALLED = {
    Path(p).resolve()
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_path(key))
}


def _kind(filename: str) -> str:
    """'launcher', 'qtrain', 'installed' (the standard library and installed packages) or 'user'."""
    if filename.startswith("<"):  # <frozen runpy>, <string>
        return "installed"
    path = Path(filename).resolve()
    if path in _LAUNCHERS:
        return "launcher"
    if path.is_relative_to(_QTRAIN):
        return "qtrain"
    if any(path.is_relative_to(root) for root in _INSTALLED):
        return "installed"
    return "user"


def own_code(thread: threading.Thread | None = None) -> str | None:
    """``FILE:LINE (source)`` of the innermost frame of the user's own code when ``thread`` (the
    main thread) is in the script and not inside qtrain; None while qtrain is at work, or where
    no frame of the user's code is on the stack."""
    frame = sys._current_frames().get((thread or threading.main_thread()).ident)
    if frame is None:
        return None
    user = None
    for entry in reversed(traceback.extract_stack(frame)):  # innermost first
        kind = _kind(entry.filename)
        if kind == "qtrain":
            return None
        if kind == "launcher":
            break
        if kind == "user" and user is None:
            user = entry
    if user is None:
        return None
    source = f" ({user.line.strip()})" if user.line else ""
    return f"{user.filename}:{user.lineno}{source}"
