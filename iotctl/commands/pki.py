"""``iotctl pki``: the platform's small offline CA: create it, issue server and device certificates,
re-issue them with new keys. Keep the directory (it holds ``ca.key``) off the servers."""

from __future__ import annotations

from pathlib import Path

import typer

from iotctl.errors import CliError

app = typer.Typer(no_args_is_help=True, help="A small offline CA: TLS certificates for the broker, API and devices.")

_DIR_HELP = "PKI directory (ca.key lives here: keep it offline)."


@app.command()
def init(
    dir: Path = typer.Option(Path("pki"), "--dir", help=_DIR_HELP),
    common_name: str = typer.Option("edu-platform CA", "--cn", help="The CA's common name."),
    days: int = typer.Option(3650, "--days", min=1, help="Validity of the CA certificate."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA (invalidates all it issued)."),
) -> None:
    """Create the CA: ca.key (0600) and ca.crt (give ca.crt to servers; devices receive it at enrollment)."""
    from cloud_core.pki import CertificateAuthority, PkiError, cert_summary

    try:
        ca = CertificateAuthority.init(dir, common_name=common_name, days=days, force=force)
    except PkiError as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"CA created in {ca.directory}: {cert_summary(ca.ca_path)}")


@app.command()
def issue(
    name: str = typer.Argument(..., help="Certificate name: mqtt, api, or a device id with --client."),
    dir: Path = typer.Option(Path("pki"), "--dir", help=_DIR_HELP),
    dns: list[str] = typer.Option([], "--dns", help="DNS name clients connect to (repeat)."),
    ip: list[str] = typer.Option([], "--ip", help="IP address clients connect to (repeat)."),
    client: bool = typer.Option(False, "--client", help="A client certificate for mTLS (CN = NAME)."),
    days: int = typer.Option(397, "--days", min=1, help="Validity in days."),
) -> None:
    """Issue a server (default) or client certificate into DIR/issued/NAME/ (tls.crt, tls.key, ca.crt)."""
    from cloud_core.pki import CertificateAuthority, PkiError, cert_summary

    try:
        ca = CertificateAuthority.load(dir)
        done = ca.issue(name, kind="client" if client else "server", dns_names=dns, ip_addresses=ip, days=days)
    except PkiError as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"issued {done.directory}: {cert_summary(done.cert_path)}")


@app.command()
def rotate(
    name: str = typer.Argument(..., help="A certificate issued before."),
    dir: Path = typer.Option(Path("pki"), "--dir", help=_DIR_HELP),
    days: int | None = typer.Option(None, "--days", min=1, help="New validity (default: as first issued)."),
) -> None:
    """Issue NAME again with a new key and fresh validity (same names); then reload the server using it."""
    from cloud_core.pki import CertificateAuthority, PkiError, cert_summary

    try:
        done = CertificateAuthority.load(dir).rotate(name, days=days)
    except PkiError as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"rotated {done.directory}: {cert_summary(done.cert_path)}")


@app.command("list")
def list_(dir: Path = typer.Option(Path("pki"), "--dir", help=_DIR_HELP)) -> None:
    """Show the CA and every certificate it issued, with names and expiry."""
    from cloud_core.pki import CertificateAuthority, PkiError, cert_summary

    try:
        ca = CertificateAuthority.load(dir)
    except PkiError as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"CA      {cert_summary(ca.ca_path)}")
    for item in ca.issued():
        typer.echo(f"{item.kind:<7} {item.name}: {cert_summary(item.cert_path)}")
