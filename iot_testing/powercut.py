"""Power cuts in tests: what a disk would hold after losing power, for a real process and real SQLite.

A ``kill -9`` only kills the process: the kernel still holds every write, so it cannot show what
``fsync`` (SQLite's ``synchronous`` setting) is for. :class:`PowerCut` compiles ``powercut.c`` (once
per source version, with ``cc``) into a library that, preloaded into a process, copies a file under a
watched directory to ``<file>.synced`` at each successful ``fsync``/``fdatasync`` of it. After the
process is killed, :meth:`PowerCut.restore` replaces each watched file by its last synced copy and
removes files that were never synced (like SQLite's ``-shm``): the state of a disk that persisted
exactly what was synced, which is the worst case a power cut can leave and the one SQLite's
durability is specified against. Files already in the directory when the watch starts, and the files a
restore leaves, count as synced (no process is writing them then)::

    cut = PowerCut(buffer_dir)
    proc = subprocess.Popen(argv, env={**os.environ, **cut.env()})
    ...                      # the process writes and syncs
    proc.kill(); proc.wait()
    cut.restore()            # buffer_dir now holds what survives a power cut at that instant

Errors: :class:`PowerCutUnavailable` (no C compiler) names the Debian package to install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PowerCut", "PowerCutUnavailable", "build_library"]

_SOURCE = Path(__file__).with_name("powercut.c")
_SUFFIX = ".synced"


class PowerCutUnavailable(RuntimeError):
    """The preload library cannot be built here (the message names what to install)."""


def build_library() -> Path:
    """The compiled preload library (built on first use into the temp dir, keyed by the source's hash).

    Raises:
        PowerCutUnavailable: no C compiler, or it failed (the message has its output).
    """
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"iot-testing-powercut-{digest}-{os.getuid()}.so"
    if lib.exists():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise PowerCutUnavailable("no C compiler for the power-cut library: install the Debian package 'gcc'")
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-pthread", "-o", str(tmp), str(_SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PowerCutUnavailable(f"building {_SOURCE.name} failed: {done.stderr.strip()[-500:]}")
    os.replace(tmp, lib)
    return lib


class PowerCut:
    """Watches ``directory`` (resolved) for syncs; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.library = build_library()
        self._baseline()

    def _baseline(self) -> None:
        """Count every file now in the directory as synced (call only while nothing writes there)."""
        for path in list(self.dir.rglob("*")):
            if path.is_file() and not path.name.endswith((_SUFFIX, f"{_SUFFIX}.tmp")):
                shutil.copyfile(path, path.with_name(path.name + _SUFFIX))

    def env(self) -> dict[str, str]:
        """Environment for the process to watch (preload and directory)."""
        preload = os.environ.get("LD_PRELOAD", "")
        return {
            "LD_PRELOAD": f"{self.library} {preload}".strip(),
            "POWERCUT_DIR": str(self.dir),
        }

    def synced_copies(self) -> dict[Path, Path]:
        """``{file: its last synced copy}`` for every watched file synced so far."""
        return {p.with_name(p.name[: -len(_SUFFIX)]): p for p in self.dir.rglob(f"*{_SUFFIX}")}

    def image(self, dest: Path) -> Path:
        """Copy what a power cut now would leave into ``dest`` (same relative paths); the process may
        still be running (each copy is whole: the library renames it into place)."""
        dest.mkdir(parents=True, exist_ok=True)
        for original, copy in self.synced_copies().items():
            target = dest / original.relative_to(self.dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(copy, target)
        return dest

    def restore(self) -> None:
        """After the watched process is dead: make the directory hold only what survived the cut."""
        synced = self.synced_copies()
        for path in list(self.dir.rglob("*")):
            if not path.is_file() or path.name.endswith((_SUFFIX, f"{_SUFFIX}.tmp")):
                continue
            if path not in synced:
                path.unlink()
        for original, copy in synced.items():
            os.replace(copy, original)
        for leftover in self.dir.rglob(f"*{_SUFFIX}.tmp"):
            leftover.unlink()
        self._baseline()  # what survived is on the disk: the next process starts from it
