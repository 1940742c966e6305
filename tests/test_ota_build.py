"""Building agent releases and preparing a device for A/B updates, through the CLI; the boot step's
rules (count trial boots, switch back on a crash loop or a passed deadline); unsafe archives refused."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edge_agent.errors import VerifyError
from edge_agent.ota import install_artifact
from edge_agent.ota_boot import Layout, boot


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotctl", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**os.environ, "EDU_STATE_DIR": str(cwd / "state")},
    )  # fmt: skip


def test_release_build_and_ota_init(tmp_path: Path) -> None:
    out = _cli("release", "build", "--version", "0.9.0", "--out", str(tmp_path / "a.tgz"), cwd=tmp_path)
    assert out.returncode == 0 and "built" in out.stdout, out.stderr
    with tarfile.open(tmp_path / "a.tgz") as tar:
        names = tar.getnames()
        assert "VERSION" in names and "edge_agent/ota_boot.py" in names and "iot_protocol/firmware.py" in names
        assert not any("__pycache__" in n for n in names)
        init = tar.extractfile("edge_agent/__init__.py").read().decode()  # type: ignore[union-attr]
        assert 'FIRMWARE_VERSION = "edu-agent/0.9.0"' in init
    again = _cli("release", "build", "--version", "0.9.0", "--out", str(tmp_path / "b.tgz"), cwd=tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "a.tgz").read_bytes() == (tmp_path / "b.tgz").read_bytes()  # reproducible
    bad = _cli("release", "build", "--version", "v1", "--out", str(tmp_path / "c.tgz"), cwd=tmp_path)
    assert bad.returncode == 2 and "bad firmware version 'v1'" in bad.stderr

    ota = tmp_path / "ota"
    init_out = _cli("agent", "ota-init", "--ota-dir", str(ota), cwd=tmp_path)
    assert init_out.returncode == 0, init_out.stderr
    layout = Layout(ota)
    assert layout.current() == "a" and layout.slot_version("a") == "0.1.0" and (ota / "boot.py").is_file()
    twice = _cli("agent", "ota-init", "--ota-dir", str(ota), cwd=tmp_path)
    assert twice.returncode == 2 and "already set up" in twice.stderr

    # the artifact installs into slot b; an archive with a link or a path outside is refused
    install_artifact(layout, "b", tmp_path / "a.tgz", "0.9.0")
    assert layout.slot_version("b") == "0.9.0"
    with pytest.raises(VerifyError, match=r"says version '0.9.0', the manifest '1.0'"):
        install_artifact(layout, "b", tmp_path / "a.tgz", "1.0")
    assert layout.slot_version("b") == "0.9.0"  # a refused install leaves the slot as it was
    for member in ("link", "escape"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("VERSION" if member == "link" else "../outside")
            if member == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                data = b"x"
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        evil = tmp_path / f"{member}.tgz"
        evil.write_bytes(buf.getvalue())
        with pytest.raises(VerifyError):
            install_artifact(layout, "a", evil, "0.9.0")
        assert layout.slot_version("a") == "0.1.0" and not (tmp_path / "outside").exists()


def test_the_boot_step_counts_trial_boots_and_switches_back(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for slot in ("a", "b"):
        layout.slot_dir(slot).mkdir(parents=True)
    layout.switch("b")
    trial = {"phase": "trial", "version": "2.0", "from_slot": "a", "to_slot": "b", "boots": 0, "max_boots": 2,
             "deadline": 1000.0, "confirm_timeout_s": 60}  # fmt: skip
    layout.write_state(trial)
    assert boot(layout, now=900.0)["boots"] == 1 and layout.current() == "b"
    assert boot(layout, now=901.0)["boots"] == 2 and layout.current() == "b"
    state = boot(layout, now=902.0)
    assert layout.current() == "a"
    assert (state["phase"], state["reason"], state["reported"]) == (
        "rolled_back",
        "crash loop: 2 boots without confirmation",
        False,
    )
    assert state["failed_versions"] == ["2.0"]
    assert boot(layout, now=903.0)["phase"] == "rolled_back" and layout.current() == "a"  # no more counting
    layout.switch("b")
    layout.write_state(trial)
    state = boot(layout, now=1001.0)  # first boot, but past its deadline (the device was off a long time)
    assert layout.current() == "a" and state["reason"] == "not confirmed within 60s of the switch"
    (tmp_path / "state.json").write_text("{torn")
    assert boot(layout)["phase"] == "idle"  # a garbled state file does not stop the boot
