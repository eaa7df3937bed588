"""The ``fabml`` command: one sub-app per entry of the job table, plus ``demo``, ``info`` and ``version``.

The job sub-apps are imported only when one of them runs (or its own ``--help`` is asked for): ``fabml --help``
lists the jobs from :data:`fabml.jobs.JOBS` without importing them. Errors a user can fix print one line
(``error: ...``) and exit with status 2, no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from fabml import __version__
from fabml.console import out, print_error, print_table
from fabml.errors import ConfigError, FabmlError
from fabml.jobs import JOBS, job_names, run_info


class JobTableGroup(TyperGroup):
    """The root command group: its own commands plus one lazily imported sub-app per job of the table."""

    _listing = False  # True while `--help` lists the commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*JOBS, *(name for name in super().list_commands(ctx) if name not in JOBS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        job = JOBS.get(cmd_name)
        if job is None:
            return super().get_command(ctx, cmd_name)
        if self._listing:  # `fabml --help`: the table's help line is enough, import nothing
            return click.Group(name=cmd_name, help=job.help)
        loaded: dict[str, click.Command] = self.__dict__.setdefault("_loaded", {})
        if cmd_name not in loaded:
            loaded[cmd_name] = typer.main.get_command(job.typer_app())
            loaded[cmd_name].name = cmd_name
        return loaded[cmd_name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(cls=JobTableGroup, help=f"fabml {__version__}: deep learning for fabs.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo runs.")] = Path("outputs/demo"),
    job: Annotated[str, typer.Option(help=f"{' | '.join(JOBS)} | all")] = "all",
    maps: Annotated[int, typer.Option(help="Synthetic wafer maps to train on.")] = 3000,
    epochs: Annotated[int, typer.Option(help="Wafer training epochs.")] = 10,
) -> None:
    """Run each job on generated data (wafer: train, embed, cluster, search, evaluate, report;
    anomaly: fit PatchCore, evaluate, predict, export ONNX; retrieval: split, train, index, evaluate,
    predict, add a new class without retraining, export ONNX; surrogate: train VAE, conditioner and e2e,
    evaluate, predict with a Monte-Carlo-dropout spread, report)."""
    if job != "all" and job not in JOBS:
        raise ConfigError(f"--job {job!r} is unknown; choose one of: {', '.join(JOBS)}, all")
    names = job_names() if job == "all" else [job]
    for name in names:
        JOBS[name].run_demo(out_dir / name if job == "all" else out_dir, maps=maps, epochs=epochs)


@app.command()
def info(
    run: Annotated[Path, typer.Option("--run", "-r", help="A run folder of any job.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Which job a run folder belongs to, its main settings, its files and how it was started."""
    details = run_info(run)
    if as_json:
        out.print(json.dumps(details, indent=2, default=str))
        return
    keys = ["run", "job", "kind", "layout", "artefact", "started", "seed", "resumes"]
    keys += ["members"] if details["members"] else []
    print_table(["field", "value"], [[key, _cell(details[key])] for key in keys], title="run")
    print_table(["setting", "value"], [[k, _cell(v)] for k, v in details["config"].items()], title="config")
    print_table(["file", "bytes"], [[k, v] for k, v in details["files"].items()], title="files")


def _cell(value: Any) -> str:
    return "n/a" if value is None else str(value)


@app.command()
def version() -> None:
    """Print the fabml version."""
    out.print(__version__)


def main() -> None:
    """Entry point of the console script: a :class:`FabmlError` prints one line and exits 2."""
    try:
        app()
    except FabmlError as err:
        print_error(str(err))
        sys.exit(2)


if __name__ == "__main__":
    main()
