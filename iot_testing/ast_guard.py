"""One lock around ``ast.parse`` for a test process that runs servers in threads.

CPython 3.11 keeps the AST constructor's recursion counter in state shared by every thread of the
interpreter (gh-95185; gh-106905 mended only its error path). When two threads build ASTs at once and
the garbage collector runs Python code in the middle of one, the other thread moves the counter and
``ast.parse`` fails with "SystemError: AST constructor recursion depth mismatch".

The test process does exactly that: the in-process API (uvicorn on a thread, see
``cloud_core.testing.running_api``) parses signatures through pydantic and ``inspect`` and has pytest
rewrite the anyio modules it imports lazily, while the test's own thread has pytest rewrite
schemathesis and hypothesis modules. The suite failed once in CI this way. Every one of those callers
goes through ``ast.parse``, so one lock around it is enough; the cost is nothing next to parsing.
"""

from __future__ import annotations

import ast
import functools
import threading
from typing import Any

_lock = threading.RLock()


def serialize_ast_parse() -> None:
    """Make ``ast.parse`` take one process-wide lock (idempotent)."""
    if getattr(ast.parse, "_serialized", False):
        return
    unlocked = ast.parse

    @functools.wraps(unlocked)
    def parse(*args: Any, **kwargs: Any) -> ast.AST:
        with _lock:
            return unlocked(*args, **kwargs)

    parse._serialized = True  # type: ignore[attr-defined]
    ast.parse = parse  # type: ignore[assignment]
