"""The job table: the one place that lists fabml's jobs.

Each :class:`Job` names its parts by import path (``"module:attribute"``), loaded only when used, so
``fabml --help`` lists the jobs without importing any of them. The root CLI mounts one sub-app per entry,
``fabml demo --job`` takes its choices and demo functions from here, and ``fabml info --run`` finds a run's job
and its artefact loader here.

Adding a job: create its folder (``fabml/<job>/`` with ``model.py``/``models/``, ``method.py``, ``pipeline.py``,
``cli.py``, ``config.py``, ``runs.py``, ``demo.py``) and add one entry to :data:`JOBS`. No other file changes.

The parts every entry names:

==================  ============================================================================================
``app``             the job's Typer sub-app (``fabml <job> ...``)
``config``          its config dataclass (``RUN/config.yaml`` holds one)
``build_method``    ``build_method(cfg) -> method``: what the job trains or fits
``demo``            ``demo(out: Path, **options) -> {name: path}``: the job on generated data
``demo_options``    which options of ``fabml demo`` the demo function takes, as ``{cli option: parameter}``
``save_artefact``   writes ``RUN/model.pt`` (see :mod:`fabml.engine.runs`)
``load_artefact``   ``load_artefact(run_dir)``: the fitted model back from a run folder
``open_run``        ``open_run(run_dir) -> RunFolder``: the run checked to be this job's (old layouts accepted)
``is_legacy_run``   ``is_legacy_run(path) -> bool``: a folder written before run.json named its job
``summary``         ``summary(config: dict) -> {setting: value}``: the few settings ``fabml info`` shows
==================  ============================================================================================
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fabml.errors import ConfigError, DataError


def _load(target: str) -> Any:
    """``"package.module:attr"`` -> the attribute (imports the module)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Job:
    """One entry of the job table; every part is an import path, resolved by the accessor of the same name."""

    name: str
    help: str
    app: str
    config: str
    build_method: str
    demo: str
    save_artefact: str
    load_artefact: str
    open_run: str
    is_legacy_run: str
    summary: str
    artefact: str  # what RUN/model.pt holds, in words (README, ``fabml info``)
    demo_options: dict[str, str] = field(default_factory=dict)

    def part(self, name: str) -> Any:
        """The object an entry field names (``job.part("app")`` -> the Typer app)."""
        return _load(getattr(self, name))

    def typer_app(self) -> Any:
        return self.part("app")

    def config_class(self) -> type:
        return self.part("config")

    def run_demo(self, out: Path, **options: Any) -> dict[str, Path]:
        """The job's demo in ``out``, with the options of ``fabml demo`` it takes (the others are ignored)."""
        kwargs = {param: options[opt] for opt, param in self.demo_options.items() if opt in options}
        return self.part("demo")(Path(out), **kwargs)


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            name="wafer",
            help="Wafer-map patterns: BYOL embeddings, pattern families, similar maps, novelty, trend.",
            app="fabml.wafer.cli:app",
            config="fabml.wafer.config:WaferConfig",
            build_method="fabml.wafer.runs:build_method",
            demo="fabml.wafer.demo:run_demo",
            demo_options={"maps": "n_maps", "epochs": "epochs"},
            save_artefact="fabml.wafer.runs:save_model",
            load_artefact="fabml.wafer.runs:load_trained",
            open_run="fabml.wafer.runs:open_run",
            is_legacy_run="fabml.wafer.runs:is_legacy_run",
            summary="fabml.wafer.runs:config_summary",
            artefact="BYOL weights from the best checkpoint (+ config)",
        ),
        Job(
            name="anomaly",
            help="Visual anomaly detection: fit on good images, score, threshold, grade, export.",
            app="fabml.anomaly.cli:app",
            config="fabml.anomaly.config:AnomalyConfig",
            build_method="fabml.anomaly.runs:build_method",
            demo="fabml.anomaly.demo:run_anomaly_demo",
            save_artefact="fabml.anomaly.runs:save_fitted",
            load_artefact="fabml.anomaly.runs:load_fitted",
            open_run="fabml.anomaly.runs:open_run",
            is_legacy_run="fabml.anomaly.runs:is_legacy_run",
            summary="fabml.anomaly.runs:config_summary",
            artefact="model weights + score normaliser, thresholds, grades (+ config)",
        ),
        Job(
            name="retrieval",
            help="Retrieval-based classification: ArcFace embeddings, a vector index, Recall@k, open-set predict.",
            app="fabml.retrieval.cli:app",
            config="fabml.retrieval.config:RetrievalConfig",
            build_method="fabml.retrieval.runs:build_method",
            demo="fabml.retrieval.demo:run_demo",
            save_artefact="fabml.retrieval.runs:save_model",
            load_artefact="fabml.retrieval.runs:load_artefact",
            open_run="fabml.retrieval.runs:open_run",
            is_legacy_run="fabml.retrieval.runs:is_legacy_run",
            summary="fabml.retrieval.runs:config_summary",
            artefact="embedding model (backbone, neck, ArcFace head) from the best checkpoint + classes (+ config)",
        ),
        Job(
            name="surrogate",
            help="Simulation surrogate: hierarchical VAE over fields + latent conditioner, predict whole fields.",
            app="fabml.surrogate.cli:app",
            config="fabml.surrogate.config:SurrogateConfig",
            build_method="fabml.surrogate.runs:build_method",
            demo="fabml.surrogate.demo:run_demo",
            save_artefact="fabml.surrogate.runs:save_model",
            load_artefact="fabml.surrogate.runs:load_artefact",
            open_run="fabml.surrogate.runs:open_run",
            is_legacy_run="fabml.surrogate.runs:is_legacy_run",
            summary="fabml.surrogate.runs:config_summary",
            artefact="VAE + conditioner from each mode's best checkpoint, field/parameter scalers, shapes (+ config)",
        ),
    )
}


def job_names() -> list[str]:
    """The jobs in table order."""
    return list(JOBS)


def get_job(name: str, option: str = "--job") -> Job:
    """The entry called ``name``; an unknown name is a ConfigError that lists the table's jobs."""
    try:
        return JOBS[name]
    except KeyError:
        raise ConfigError(f"{option} {name!r} is unknown; choose one of: {', '.join(JOBS)}") from None


def detect_job(run_dir: str | Path) -> Job:
    """The job a run folder belongs to: the one ``run.json`` names, else the one whose old layout it matches."""
    from fabml.engine.runs import RUN_INFO, RunFolder

    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"run folder {root} not found")
    recorded = RunFolder(root, "").recorded_job()
    if recorded is not None:
        return get_job(recorded, option=f"{root / RUN_INFO}: job")
    matches = [job for job in JOBS.values() if job.part("is_legacy_run")(root)]
    if len(matches) == 1:
        return matches[0]
    raise DataError(f"{root} is not a fabml run: it has no {RUN_INFO} naming a job and matches no job's files "
                    f"({', '.join(JOBS)})")


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """What ``fabml info`` shows about a run: job, config summary, artefacts and the start record of run.json."""
    import yaml

    job = detect_job(run_dir)
    run = job.part("open_run")(run_dir)
    config: dict[str, Any] = {}
    if run.config_path.is_file():
        config = yaml.safe_load(run.config_path.read_text(encoding="utf-8")) or {}
    info = run.read_info()
    return {
        "run": str(run.root),
        "job": job.name,
        "layout": "old (no job in run.json)" if run.legacy else "current",
        "artefact": job.artefact if run.has_artefact() else None,
        "config": {k: v for k, v in job.part("summary")(config).items() if v is not None},
        "files": run.artefacts(),
        "started": info.get("started"),
        "seed": info.get("seed"),
        "versions": info.get("versions", {}),
        "resumes": len(info.get("resumes", [])),
        "argv": info.get("argv"),
        "kind": info.get("kind", "run"),  # a job may record another kind of folder (surrogate: "ensemble")
        "members": info.get("members"),
    }


def callable_parts(job: Job) -> dict[str, Callable[..., Any] | type]:
    """Every part of ``job`` loaded (the test of the table imports each one once)."""
    names = ("app", "config", "build_method", "demo", "save_artefact", "load_artefact", "open_run", "is_legacy_run",
             "summary")
    return {name: job.part(name) for name in names}
