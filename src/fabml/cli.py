"""The ``fabml`` command: one sub-app per job. Errors a user can fix print one line, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fabml import __version__
from fabml.errors import ConfigError, FabmlError
from fabml.anomaly.cli import app as anomaly_app
from fabml.wafer.cli import app as wafer_app

app = typer.Typer(help=f"fabml {__version__}: deep learning for fabs.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(wafer_app, name="wafer")
app.add_typer(anomaly_app, name="anomaly")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo runs.")] = Path("outputs/demo"),
    job: Annotated[str, typer.Option(help="wafer | anomaly | all")] = "all",
    maps: Annotated[int, typer.Option(help="Synthetic wafer maps to train on.")] = 3000,
    epochs: Annotated[int, typer.Option(help="Wafer training epochs.")] = 10,
) -> None:
    """Run the jobs on generated data: wafer (train, embed, cluster, search, evaluate, report) and anomaly
    (fit PatchCore, evaluate, predict, export ONNX)."""
    if job not in ("wafer", "anomaly", "all"):
        raise ConfigError(f"--job {job!r} is unknown; choose wafer, anomaly or all")
    if job in ("wafer", "all"):
        from fabml.wafer.demo import run_demo

        run_demo(out / "wafer" if job == "all" else out, n_maps=maps, epochs=epochs, console=Console())
    if job in ("anomaly", "all"):
        from fabml.anomaly.demo import run_anomaly_demo

        run_anomaly_demo(out / "anomaly" if job == "all" else out, console=Console())


@app.command()
def version() -> None:
    """Print the fabml version."""
    print(__version__)


def main() -> None:
    try:
        app()
    except FabmlError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
