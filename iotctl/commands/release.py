"""``iotctl release``: firmware releases: sign a manifest (offline, with the release key), upload an
artifact with its signed manifest, list and show releases, print the release public key."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from iotctl.apiclient import ApiOption, JsonOption, TokenOption, call
from iotctl.errors import CliError
from iotctl.statedir import StateDirOption

app = typer.Typer(no_args_is_help=True, help="Firmware releases: sign, upload, list.")

KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        help="Release private key (PEM). Default: <state dir>/release-signing.pem, the API's in embedded mode.",
    ),
]


def _json(body: Any) -> None:
    typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise CliError(f"artifact {path} does not exist") from None
    except OSError as exc:
        raise CliError(f"cannot read artifact {path}: {exc.strerror}") from None
    if size == 0:
        raise CliError(f"artifact {path} is empty")
    return size, h.hexdigest()


def _key_path(key: Path | None) -> Path:
    if key is not None:
        return key
    from cloud_core.paths import default_state_dir

    return default_state_dir() / "release-signing.pem"


@app.command()
def sign(
    artifact: Annotated[Path, typer.Argument(help="The build to release.", show_default=False)],
    version: Annotated[str, typer.Option("--version", help="Its version, e.g. 1.2.0.", show_default=False)],
    device_type: Annotated[list[str], typer.Option("--device-type", help="Device type it is for (repeatable).")],
    min_version: Annotated[
        str | None,
        typer.Option("--min-version", help="Anti-rollback floor: devices refuse older releases after this one."),
    ] = None,
    notes: Annotated[str, typer.Option("--notes", help="Release notes (short).")] = "",
    key: KeyOption = None,
    new_key: Annotated[bool, typer.Option("--new-key", help="Create the key file if it does not exist.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write the signed manifest here (default: stdout).")] = None,
) -> None:
    """Sign a release manifest (size, SHA-256, device types, versions) with the release key, offline."""
    from iot_protocol import Manifest, ProtocolError, load_private_key, parse_version, public_key_b64, seal_manifest

    try:
        parse_version(version)
        if min_version is not None:
            parse_version(min_version)
    except ProtocolError as exc:
        raise CliError(str(exc)) from None
    size, digest = _digest(artifact)
    path = _key_path(key)
    if not path.exists():
        if not new_key:
            raise CliError(f"no release key at {path}: pass --key FILE, or --new-key to create one there")
        from cloud_core.core.security import load_or_create_signing_key

        created = load_or_create_signing_key(path)
        print(f"created release key {path}; its public key (EDU_ROLLOUT_RELEASE_PUBLIC_KEY): {public_key_b64(created)}",
              file=sys.stderr)  # fmt: skip
    try:
        private = load_private_key(path)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot load the release key {path}: {exc}") from None
    manifest = Manifest(
        version=version,
        size=size,
        sha256=digest,
        device_types=tuple(dict.fromkeys(device_type)),
        min_version=min_version,
        created_at=time.time_ns() // 1_000_000,
        notes=notes,
    )
    try:
        token = seal_manifest(manifest, private).decode("ascii")
    except ProtocolError as exc:
        raise CliError(str(exc)) from None
    if out is None:
        typer.echo(token)
    else:
        out.write_text(token + "\n", encoding="utf-8")
        print(f"signed manifest of {version} ({size} bytes, sha256 {digest[:16]}...) -> {out}", file=sys.stderr)


@app.command()
def key(key_: KeyOption = None) -> None:
    """Print the release public key (what devices verify manifests with)."""
    from iot_protocol import load_private_key, public_key_b64

    path = _key_path(key_)
    try:
        typer.echo(public_key_b64(load_private_key(path)))
    except FileNotFoundError:
        raise CliError(f"no release key at {path}: pass --key FILE") from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot load the release key {path}: {exc}") from None


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


@app.command()
def upload(
    artifact: Annotated[Path, typer.Argument(help="The build to release.", show_default=False)],
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Signed manifest from 'iotctl release sign' (offline key).")
    ] = None,
    version: Annotated[str | None, typer.Option("--version", help="Without --manifest: the API signs this.")] = None,
    device_type: Annotated[
        list[str] | None, typer.Option("--device-type", help="Without --manifest: device type (repeatable).")
    ] = None,
    min_version: Annotated[str | None, typer.Option("--min-version", help="Without --manifest: floor.")] = None,
    notes: Annotated[str, typer.Option("--notes", help="Without --manifest: release notes.")] = "",
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a release from a signed manifest (or have the API sign one) and upload its artifact;
    the API keeps it only if its size and SHA-256 are the manifest's."""
    size, digest = _digest(artifact)
    if manifest is not None:
        if version or device_type or min_version:
            raise CliError("--manifest already says the version, device types and minimum version: leave those out")
        try:
            signed = manifest.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"cannot read manifest {manifest}: {exc.strerror}") from None
    else:
        if not version or not device_type:
            raise CliError("give --manifest FILE, or --version and --device-type for the API to sign")
        body = {"version": version, "size": size, "sha256": digest, "device_types": device_type,
                "min_version": min_version, "notes": notes}  # fmt: skip
        signed = call("POST", "/v1/releases/sign", api=api, token=token, json=body)["manifest"]
    release = call("POST", "/v1/releases", api=api, token=token, json={"manifest": signed})
    release = call(
        "PUT",
        f"/v1/releases/{release['version']}/artifact",
        api=api,
        token=token,
        content=_chunks(artifact),
        headers={"Content-Type": "application/octet-stream"},
        timeout_s=600,
    )
    if as_json:
        _json(release)
    else:
        typer.echo(f"release {release['version']} ready: {release['size']} bytes, sha256 {release['sha256'][:16]}..., "
                   f"for {', '.join(release['device_types'])}")  # fmt: skip


@app.command()
def build(
    version: Annotated[str, typer.Option("--version", help="Version to stamp the build with.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Where to write the .tar.gz artifact.", show_default=False)],
) -> None:
    """Build an agent release artifact (the installed edge_agent + iot_protocol code, stamped with
    --version) to sign and upload: what an A/B-updatable Raspberry Pi agent installs."""
    import tempfile

    from edge_agent.ota_build import build_artifact
    from iot_protocol import ProtocolError, parse_version

    try:
        parse_version(version)
    except ProtocolError as exc:
        raise CliError(str(exc)) from None
    with tempfile.TemporaryDirectory() as tmp:
        build_artifact(out, version, workdir=Path(tmp))
    size, digest = _digest(out)
    typer.echo(f"built {out}: agent {version}, {size} bytes, sha256 {digest[:16]}...")


@app.command("list")
def list_(
    api: ApiOption = None, state_dir: StateDirOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Releases, newest first."""
    rows = call("GET", "/v1/releases", api=api, token=token)
    if as_json:
        _json(rows)
        return
    if not rows:
        typer.echo("no releases: 'iotctl release upload FILE --version V --device-type T'")
        return
    for r in rows:
        floor = f"  min {r['min_version']}" if r.get("min_version") else ""
        typer.echo(
            f"{r['version']:12} {r['status']:18} {r['size']:>10} B  {', '.join(r['device_types'])}{floor}  {r['notes']}"
        )


@app.command()
def show(
    version: Annotated[str, typer.Argument(help="Release version.", show_default=False)],
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    """One release with its signed manifest."""
    _json(call("GET", f"/v1/releases/{version}", api=api, token=token))
