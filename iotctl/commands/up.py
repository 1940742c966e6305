"""``iotctl up``: placeholder until the orchestration lands."""

import typer

app = typer.Typer()


@app.callback(invoke_without_command=True)
def up() -> None:
    """Run the whole platform on this machine."""
    raise typer.Exit(0)
