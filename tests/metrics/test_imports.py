"""Dependencies point one way: nothing in fabml.metrics imports a job (wafer, anomaly, retrieval, surrogate)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fabml.metrics

METRICS = Path(fabml.metrics.__file__).parent
JOBS = ("fabml.wafer", "fabml.anomaly", "fabml.retrieval", "fabml.surrogate")


def _imported_modules(path: Path) -> list[str]:
    """Every module an ``import`` / ``from ... import`` statement in ``path`` names (lazy ones included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_no_metrics_module_imports_a_job() -> None:
    files = sorted(METRICS.glob("*.py"))
    assert len(files) >= 5  # anomaly, classification, clustering, invariance, retrieval (+ __init__)
    offending = {
        f"{path.name}: {name}" for path in files for name in _imported_modules(path)
        if name.startswith(JOBS)
    }
    assert not offending, f"fabml.metrics imports a job: {sorted(offending)}"
    for path in files:  # and no source text names one (strings passed to importlib included)
        text = path.read_text(encoding="utf-8")
        assert "fabml.wafer" not in text and "fabml.anomaly" not in text, path.name


def test_metrics_load_without_any_job() -> None:
    code = (
        "import sys, torch\n"
        "import fabml.metrics.anomaly, fabml.metrics.classification, fabml.metrics.clustering\n"
        "import fabml.metrics.invariance, fabml.metrics.retrieval as r\n"
        "db, owner = r.d4_orbit_db(torch.zeros(2, 1, 4, 4))\n"
        "assert db.shape == (14, 1, 4, 4) and owner.tolist() == [0] * 7 + [1] * 7\n"
        "print(sorted(m for m in sys.modules if m.startswith(('fabml.wafer', 'fabml.anomaly'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
