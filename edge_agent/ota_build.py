"""Building what OTA installs, and preparing a device for it. Not imported by the running agent.

*Firmware* for the Python agent is the agent's own code: the ``edge_agent`` and ``iot_protocol``
packages plus a ``VERSION`` file, as a ``.tar.gz`` (the release artifact). Third-party packages
(paho-mqtt, cryptography, orjson) come from the device's virtualenv and are not part of a release.

- :func:`build_artifact`: the artifact of the installed code, stamped with a version;
- :func:`init_layout`: the A/B layout on a device: ``slots/a`` holds the installed code,
  ``current -> slots/a``, ``boot.py`` (the boot step, outside the slots), ``state.json`` idle.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from . import FIRMWARE_VERSION
from .ota_boot import Layout

__all__ = ["PACKAGES", "build_artifact", "init_layout", "write_tree"]

PACKAGES = ("edge_agent", "iot_protocol")
_FW_LINE = re.compile(r'^FIRMWARE_VERSION = "([^"/]*)/[^"]*"$', re.M)


def _package_dir(name: str) -> Path:
    module = __import__(name)
    return Path(module.__file__).resolve().parent  # type: ignore[arg-type]


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


def write_tree(dest: Path, version: str, *, patch: Callable[[Path], None] | None = None) -> Path:
    """Copy the installed agent packages into ``dest`` stamped with ``version`` (``FIRMWARE_VERSION``
    and ``VERSION``); ``patch(dest)`` may then change files (tests build broken releases with it)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(_package_dir(name), target, ignore=_ignore)
    init = dest / "edge_agent" / "__init__.py"
    text = init.read_text(encoding="utf-8")
    stamped, n = _FW_LINE.subn(lambda m: f'FIRMWARE_VERSION = "{m.group(1)}/{version}"', text)
    if n != 1:
        raise RuntimeError("edge_agent/__init__.py has no FIRMWARE_VERSION line to stamp")
    init.write_text(stamped, encoding="utf-8")
    (dest / "VERSION").write_text(version + "\n", encoding="utf-8")
    if patch is not None:
        patch(dest)
    return dest


def build_artifact(out: Path, version: str, *, patch: Callable[[Path], None] | None = None, workdir: Path) -> Path:
    """Write the release artifact (``.tar.gz``) of the installed agent code as ``version`` to ``out``."""
    tree = write_tree(workdir / f"build-{version}", version, patch=patch)
    buf = io.BytesIO()
    # gzip with mtime 0 and members with mtime 0: the same code gives the same bytes
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in sorted(tree.rglob("*")):
            rel = path.relative_to(tree)
            if "__pycache__" in rel.parts:
                continue
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    out.write_bytes(buf.getvalue())
    shutil.rmtree(tree, ignore_errors=True)
    return out


def init_layout(ota_dir: Path, *, version: str | None = None) -> Layout:
    """Prepare ``ota_dir`` for A/B updates: slot ``a`` holds the installed code, ``current`` points
    at it, ``boot.py`` is copied beside the slots. Refuses a directory that already has slots."""
    layout = Layout(ota_dir)
    if layout.current_link.exists() or layout.current_link.is_symlink():
        raise FileExistsError(f"{ota_dir} is already set up (current -> {layout.current()})")
    running = version or FIRMWARE_VERSION.rsplit("/", 1)[-1]
    write_tree(layout.slot_dir("a"), running)
    layout.slot_dir("b").mkdir(parents=True, exist_ok=True)
    layout.switch("a")
    shutil.copyfile(Path(__file__).with_name("ota_boot.py"), ota_dir / "boot.py")
    layout.write_state({"phase": "idle", "slots": {"a": {"version": running}}, "failed_versions": []})
    return layout
