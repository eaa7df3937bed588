"""The public Python API: every `from fabml... import ...` the README shows imports; each job exports its
names from `fabml.<job>`; `create_anomaly_model` takes the same common settings for every model."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fabml.anomaly
import fabml.wafer
from fabml.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"
IMPORT = re.compile(r"from[ \t]+(fabml(?:\.\w+)*)[ \t]+import[ \t]+(\([\w\s,]+\)|[\w \t,]+)")


def readme_imports() -> list[tuple[str, list[str]]]:
    """(module, names) of every `from fabml... import a, b` in the README (code blocks and inline code)."""
    found = []
    for module, names in IMPORT.findall(README.read_text(encoding="utf-8")):
        names = [n.strip() for n in names.strip("()").replace("\n", " ").split(",") if n.strip()]
        found.append((module, [n.split()[0] for n in names]))
    return found


def test_every_readme_import_works() -> None:
    imports = readme_imports()
    assert {"fabml.anomaly", "fabml.wafer"} <= {module for module, _ in imports}  # each job shows its API
    for module, names in imports:
        imported = importlib.import_module(module)
        for name in names:
            assert hasattr(imported, name), f"README: `from {module} import {name}` fails"


@pytest.mark.parametrize("job", [fabml.anomaly, fabml.wafer])
def test_each_job_exports_its_public_names(job) -> None:
    assert job.__all__, job.__name__
    for name in job.__all__:
        value = getattr(job, name)
        assert value is not None and not isinstance(value, type(sys)), f"{job.__name__}.{name} is a module"
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        job.nope  # noqa: B018


def test_the_names_the_readme_uses_in_prose() -> None:
    from fabml.anomaly import AnomalyOutput, create_anomaly_method, create_anomaly_model, evaluate, fit, predict
    from fabml.wafer import WaferConfig, embed, load_trained, train

    assert callable(create_anomaly_model) and callable(create_anomaly_method) and AnomalyOutput._fields == (
        "pred_score", "anomaly_map")
    assert all(callable(f) for f in (fit, evaluate, predict, train, embed, load_trained)) and WaferConfig


def test_importing_a_job_package_stays_light() -> None:
    code = "import sys, fabml.anomaly, fabml.wafer; print(sorted(m for m in ('pandas', 'timm') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_common_settings_are_accepted_by_every_model() -> None:
    from fabml.anomaly import COMMON_SETTINGS, create_anomaly_model
    from fabml.anomaly.models.registry import MODEL_MODULES

    assert {"image_size", "in_chans", "pooling", "pretrained", "backbone", "weights", "weights_dir"} <= set(
        COMMON_SETTINGS)
    common = {"image_size": (64, 64), "in_chans": 1, "pretrained": False, "backbone": "resnet18", "layers": [1, 2],
              "pooling": {"method": "mean"}, "channel_mode": "repeat", "weights": None, "weights_dir": None}
    small = {"draem": {"base_width": 4, "disc_base_width": 4}, "efficient_ad": {"out_channels": 4, "width_scale": 1 / 16},
             "padim": {"n_features": 8}, "fastflow": {"flow_steps": 2}}
    torch.set_num_threads(1)
    for name in sorted(MODEL_MODULES):
        model = create_anomaly_model(name, **common, **small.get(name, {})).eval()
        assert model.image_size == (64, 64) and model.in_chans == 1 and model.pooling.method == "mean"
    draem = create_anomaly_model("draem", pretrained=False)  # refused before: DRAEM has no backbone
    assert not hasattr(draem.config, "pretrained")


def test_unknown_setting_is_one_line_listing_the_valid_ones() -> None:
    from fabml.anomaly import create_anomaly_model

    with pytest.raises(ConfigError) as err:
        create_anomaly_model("draem", image_size=(64, 64), coreset_ratio=0.1)
    message = str(err.value)
    assert "\n" not in message and "'model.coreset_ratio'" in message and "'draem'" in message
    assert "base_width" in message and "pretrained" in message  # its own and the common settings
