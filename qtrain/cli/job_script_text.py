"""How a value given to ``qtrain slurm render`` may stand in the job script, by where it goes.

A rendered script has three kinds of places, each read by something else, and every value the user
gave goes into one of them through one of these functions:

- a shell word (``set -- CONFIG``, ``export QTRAIN=...``): bash parses it, so it is quoted
  (:func:`shell_word`, ``shlex.quote``: any text, line breaks included, stays one word);
- an ``#SBATCH --option=value`` line: sbatch reads these itself, without a shell: it splits the
  line at whitespace, takes quotes and backslashes away, ends it at an unquoted ``#``, and a line
  break ends the directive (the next line is a command, and sbatch stops reading ``#SBATCH``
  lines at the first command). Slurm's names, sizes, times and feature expressions need none of
  these characters, so :func:`sbatch_value` refuses a value with any of them, naming the option;
- a comment (``# Rendered by ...``): bash ignores it up to the end of the line, so the text must
  not end the line: :func:`comment_text` writes every unprintable character as its escape
  (``\\n``, ``\\r``, ``\\x1b``).
"""

from __future__ import annotations

import shlex

SBATCH_MISREAD = "'\"\\#"  # quotes, backslash (taken away by sbatch), '#' (starts a comment there)


def shell_word(value: str) -> str:
    """``value`` as one bash word, whatever it holds."""
    return shlex.quote(value)


def sbatch_value(option: str, value: str) -> str:
    """``value`` as it may follow ``#SBATCH --option=``: returned unchanged, or ValueError naming
    the option, the character and what sbatch would do with it (see the module docstring)."""
    bad = next((c for c in value if not c.isprintable() or c.isspace() or c in SBATCH_MISREAD), None)
    if bad is None and value:
        return value
    if not value:
        what, why = "an empty value", "the option would have none"
    elif bad in "\n\r\v\f\x85\u2028\u2029":
        what, why = "a line break", "it would end the line, and what follows would run as a command"
    elif bad.isspace():
        what, why = "whitespace", "sbatch splits the line there; Slurm's names have none"
    elif not bad.isprintable():
        what, why = f"the control character {bad!r}", "no Slurm value holds one"
    elif bad == "#":
        what, why = "'#'", "sbatch ends the line's value there"
    else:
        what, why = f"the character {bad!r}", "sbatch takes quotes and backslashes away"
    raise ValueError(f"--{option} {value!r}: {what} cannot go into '#SBATCH --{option}=' ({why})")


def comment_text(text: str) -> str:
    """``text`` inside a ``# ...`` line: every unprintable character (a line break, a carriage
    return, an escape, ...) as its Python escape, so that the comment stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
