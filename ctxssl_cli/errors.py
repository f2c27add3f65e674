"""User-facing errors: every bad input becomes one line `Error: <what> — <fix>`.

Core code raises `CtxsslError(what, fix)`; the CLI's single handler (cli/app.py) prints it to stderr and
exits non-zero, with a traceback only when CTXSSL_DEBUG=1.
"""

from __future__ import annotations


class CtxsslError(Exception):
    """A problem the user can fix. `what` names the problem, `fix` says how to fix it."""

    exit_code = 2

    def __init__(self, what: str, fix: str = ""):
        self.what = what.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what


class NonFiniteLossError(CtxsslError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""

    exit_code = 3
