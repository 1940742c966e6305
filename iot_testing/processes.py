"""Signals the way the kernel may deliver them: to any thread of a process, not only its main thread.

A process-directed signal (``kill PID``, systemd's or Kubernetes' SIGTERM) goes to whichever thread can
take it, and Python runs the handler only in the main thread, when that thread next runs bytecode. A
main thread blocked in a long wait then never hears of it. :func:`signal_worker_thread` makes the rare
case certain, for tests that a service stops promptly whichever thread the signal lands in.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["signal_worker_thread"]


def signal_worker_thread(pid: int, sig: int) -> int:
    """Send ``sig`` to one thread of process ``pid`` other than its main thread (``tgkill``); returns
    that thread's id.

    Raises:
        ValueError: the process has no thread besides its main one.
        OSError: the signal could not be sent.
    """
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    if not tids:
        raise ValueError(f"process {pid} has no worker thread to signal")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tids[0], sig) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"tgkill({pid}, {tids[0]}, {sig}): {os.strerror(err)}")
    return tids[0]
