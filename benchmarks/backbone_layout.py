"""Benchmark: fabml's backbone (channels_last convolutions) against the same timm feature model in NCHW.

Both are ``tf_efficientnet_lite0`` feature models with random weights (the layout, not the weights, sets the
speed), out_indices (2, 3) as PatchCore's magnetic-tile recipe, batch 16 x 3 x 256 x 256, inference mode, timed
alternately in one process so machine noise hits both alike. Writes benchmarks/results/backbone_layout.{md,json}.

    python benchmarks/backbone_layout.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fabml.backbones import FeatureExtractor  # noqa: E402
from provenance import machine  # noqa: E402


def ms_per_image(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Mean wall milliseconds per image over ``repeats`` forward passes after one warm-up pass."""
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return 1000 * (time.perf_counter() - start) / repeats / len(x)


def main() -> None:
    import timm

    x = torch.rand(16, 3, 256, 256)
    ours = FeatureExtractor("tf_efficientnet_lite0", layers=[2, 3], pretrained=False).eval()
    nchw = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3)).eval()
    rounds = [{"fabml_channels_last": ms_per_image(ours, x, 5), "timm_nchw": ms_per_image(nchw, x, 5)} for _ in range(4)]
    median = {k: sorted(r[k] for r in rounds)[len(rounds) // 2] for k in rounds[0]}
    results = {"rounds_ms_per_image": rounds, "median_ms_per_image": median,
               "speedup": median["timm_nchw"] / median["fabml_channels_last"],
               "settings": {"backbone": "tf_efficientnet_lite0", "out_indices": [2, 3], "batch": 16, "size": 256},
               "machine": machine()}
    out = ROOT / "benchmarks" / "results"
    (out / "backbone_layout.json").write_text(json.dumps(results, indent=2))
    lines = ["# Backbone memory layout: fabml (channels_last) vs timm (NCHW), Lite0 features, batch 16 x 256 px", "",
             f"Machine: {json.dumps(results['machine'])}", "", "| round | fabml channels_last ms/image | timm NCHW ms/image |",
             "|---|---|---|"]
    lines += [f"| {i + 1} | {r['fabml_channels_last']:.1f} | {r['timm_nchw']:.1f} |" for i, r in enumerate(rounds)]
    lines += ["", f"Median: {median['fabml_channels_last']:.1f} against {median['timm_nchw']:.1f} ms/image "
              f"({results['speedup']:.2f}x).", ""]
    (out / "backbone_layout.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
