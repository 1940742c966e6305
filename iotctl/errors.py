"""The CLI's one user-facing error: raised with a one-line message saying what was wrong and how
to fix it; :func:`iotctl.main.main` prints it without a traceback and exits non-zero."""

from __future__ import annotations


class CliError(Exception):
    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
