"""User-facing errors.

Anything a user can cause (a typo in a task name, a missing data set, a bad checkpoint) raises
:class:`UserError`. The CLI prints its message as one line on stderr and exits with status 2,
without a traceback. Messages should name the fix ("... run `lmconv-bench data` to see ...").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error caused by user input; printed as one line, exit status 2."""


class Interrupted(BaseException):
    """Ctrl-C, raised by the CLI's SIGINT handler (click would turn a KeyboardInterrupt into
    "Aborted!"); the CLI prints how to resume and exits with status 130."""


_INTERRUPT = {"requested": False}


def request_interrupt() -> None:
    """Called by the SIGINT handler: remember the request and raise :class:`Interrupted`. Python
    drops an exception raised while a finalizer (``__del__``, a weakref callback) happens to run,
    so long loops also call :func:`check_interrupt`, which raises it again at the next step."""
    _INTERRUPT["requested"] = True
    raise Interrupted()


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if Ctrl-C was pressed (see :func:`request_interrupt`)."""
    if _INTERRUPT["requested"]:
        raise Interrupted()


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def unknown(kind: str, value: str, choices: Iterable[str], where: str = "") -> UserError:
    """Build the standard 'unknown X' error, listing the allowed values and a suggestion."""
    choices = sorted(str(c) for c in choices)
    loc = f" in {where}" if where else ""
    return UserError(
        f"unknown {kind} {value!r}{loc}{did_you_mean(value, choices)}; allowed: {', '.join(choices)}"
    )


SAFE_NAME = r"[A-Za-z0-9_.-]+"
"""What task and checkpoint names may hold: they become file and folder names under the output
folders, so no path separators, no NUL, and (checked separately) no leading dot."""


def check_name(name: object, what: str) -> str:
    """``name`` as a str if it is a safe file name (:data:`SAFE_NAME`, no leading dot), else a
    one-line UserError saying what is allowed."""
    import re

    text = str(name)
    if not re.fullmatch(SAFE_NAME, text) or text.startswith("."):
        shown = text.encode("unicode_escape").decode("ascii")[:60]
        raise UserError(
            f"{what} {shown!r} is not a safe name: use letters, digits, '_', '.' and '-' only, not starting with '.'"
        )
    return text
