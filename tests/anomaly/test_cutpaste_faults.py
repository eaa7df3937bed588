"""CutPasteFaults: mask / severity map / label agree, probability, patch geometry, bounds, paste rule, errors."""

from __future__ import annotations

import pytest
import torch

from fabml.anomaly.cutpaste_faults import CutPasteFaultConfig, CutPasteFaults
from fabml.config import from_dict
from fabml.errors import ConfigError


def images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 0.5


def box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the bounding box of a [H, W] mask."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_mask_severity_map_and_label_agree() -> None:
    x = images(32)
    out = CutPasteFaults(CutPasteFaultConfig(probability=0.5))(x, torch.Generator().manual_seed(1))
    assert out.images.shape == x.shape and out.masks.shape == (32, 1, 64, 64) and out.severity.shape == (32,)
    for i in range(32):
        mask, smap, s = out.masks[i, 0], out.severity_map[i, 0], float(out.severity[i])
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(smap, mask * s)  # the severity map is the label inside the mask, 0 outside
        if mask.any():
            assert 0.0 < s <= 10.0
        else:
            assert s == 0.0 and torch.equal(out.images[i], x[i])  # normal images come back unchanged
        assert torch.equal(out.images[i][mask[None].expand_as(x[i]) == 0], x[i][mask[None].expand_as(x[i]) == 0])
    assert 0 < int((out.severity > 0).sum()) < 32


def test_paste_is_additive_severity_times_scale_and_clipped() -> None:
    cfg = CutPasteFaultConfig(probability=1.0, scale=0.05, patch_ratio_range=(1.0, 1.0))
    x = images(8)
    g = torch.Generator().manual_seed(3)
    out = CutPasteFaults(cfg)(x, g)
    for i in range(8):
        top, left, h, w = box(out.masks[i, 0])
        pasted = out.images[i, 0, top:top + h, left:left + w]
        s = float(out.severity[i])
        # the pasted values are some source rectangle of the same image plus s * scale
        candidates = x[i, 0].unfold(0, h, 1).unfold(1, w, 1)  # [H-h+1, W-w+1, h, w]
        diffs = (candidates + s * cfg.scale).clamp(0, 1) - pasted
        assert float(diffs.abs().flatten(2).amax(dim=2).min()) < 1e-6
    bright = CutPasteFaults(CutPasteFaultConfig(probability=1.0, scale=1.0))(torch.full((4, 1, 64, 64), 0.9),
                                                                             torch.Generator().manual_seed(0))
    assert float(bright.images.max()) == 1.0  # clipped to the valid range


def test_polarity_dark_subtracts_both_mixes_and_bright_keeps_the_seed_stream() -> None:
    x = images(64) + 0.25  # in [0.25, 0.75]: no clipping at either end for scale 0.02
    settings = {"probability": 1.0, "scale": 0.02}
    bright = CutPasteFaults(CutPasteFaultConfig(**settings))(x, torch.Generator().manual_seed(5))
    default = CutPasteFaults(CutPasteFaultConfig(**settings, polarity="bright"))(x, torch.Generator().manual_seed(5))
    assert torch.equal(bright.images, default.images)
    dark = CutPasteFaults(CutPasteFaultConfig(**settings, polarity="dark"))(x, torch.Generator().manual_seed(5))
    both = CutPasteFaults(CutPasteFaultConfig(**settings, polarity="both"))(x, torch.Generator().manual_seed(5))
    for out, sign in ((bright, 1.0), (dark, -1.0)):
        m = out.masks[:, 0] > 0
        # the mean change inside the mask has the polarity's sign (the source rectangle is of the same image)
        change = ((out.images - x)[:, 0] * m).flatten(1).sum(1) / m.flatten(1).sum(1)
        assert bool((change * sign > 0).float().mean() > 0.9)
    m = both.masks[:, 0] > 0
    change = ((both.images - x)[:, 0] * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    assert 16 < int((change < 0).sum()) < 48  # about half dark, half bright


def test_probability_zero_and_one_exact_and_half_within_tolerance() -> None:
    x = images(2000, size=32)
    none = CutPasteFaults(CutPasteFaultConfig(probability=0.0))(x, torch.Generator().manual_seed(0))
    assert float(none.masks.sum()) == 0 and float(none.severity.sum()) == 0 and torch.equal(none.images, x)
    x_small = x[:200]
    every = CutPasteFaults(CutPasteFaultConfig(probability=1.0))(x_small, torch.Generator().manual_seed(0))
    assert bool((every.severity > 0).all()) and bool((every.masks.flatten(1).sum(1) > 0).all())
    half = CutPasteFaults(CutPasteFaultConfig(probability=0.5))(x, torch.Generator().manual_seed(0))
    share = float((half.severity > 0).float().mean())
    assert abs(share - 0.5) < 0.035  # 2,000 draws: 3.1 standard deviations


@pytest.mark.parametrize(("ratio", "orientation"), [((2.0, 4.0), "landscape"), ((0.25, 0.5), "portrait"),
                                                    ((1.0, 1.0), "square")])
def test_patch_size_and_ratio_stay_in_range(ratio: tuple[float, float], orientation: str) -> None:
    """Ratio = width / height: landscape patches are wider than tall; widths scale with the image width."""
    size = 128
    cfg = CutPasteFaultConfig(probability=1.0, patch_ratio_range=ratio)
    out = CutPasteFaults(cfg)(images(40, size), torch.Generator().manual_seed(2))
    factor = size / cfg.reference_size  # (20, 80) px at 256 -> (10, 40) px at 128
    for i in range(40):
        _, _, h, w = box(out.masks[i, 0])
        assert round(20 * factor) - 1 <= w <= round(80 * factor) + 1
        assert ratio[0] - 0.2 * ratio[0] <= w / h <= ratio[1] + 0.2 * ratio[1]  # rounding to whole pixels
        assert {"landscape": w > h, "portrait": h > w, "square": h == w}[orientation]


def test_bounds_and_shared_geometry_with_several_patches() -> None:
    cfg = CutPasteFaultConfig(probability=1.0, patch_count=3, patch_width_range=(40.0, 256.0),
                              patch_ratio_range=(0.25, 0.5))
    faults = CutPasteFaults(cfg)
    g = torch.Generator().manual_seed(5)
    for _ in range(20):  # tall patches near the image size still fit
        h, w = faults.patch_size(64, 64, g)
        assert 1 <= h <= 64 and 1 <= w <= 64 and 0.25 - 0.05 <= w / h <= 0.5 + 0.05
    out = faults(images(10, 64), torch.Generator().manual_seed(6))
    assert out.masks.shape == (10, 1, 64, 64)  # slicing never goes out of the image
    assert bool((out.severity > 0).all())
    # one image at a time: replay the generator to get the patch size; all three patches have it
    triple = CutPasteFaults(CutPasteFaultConfig(probability=1.0, patch_count=3, patch_ratio_range=(1.0, 1.0)))
    for seed in range(5):
        out = triple(images(1), torch.Generator().manual_seed(seed))
        replay = torch.Generator().manual_seed(seed)
        torch.rand(1, generator=replay)  # the probability draw
        torch.rand((), generator=replay, dtype=torch.float64)  # the severity draw
        h, w = triple.patch_size(64, 64, replay)
        area = int(out.masks.sum())
        assert h * w <= area <= 3 * h * w
        # every masked pixel belongs to an h x w all-ones window of the mask
        windows = out.masks[0, 0].unfold(0, h, 1).unfold(1, w, 1).flatten(2).amin(dim=2)  # 1 where full
        covered = torch.zeros(64, 64)
        for y, x in torch.nonzero(windows).tolist():
            covered[y:y + h, x:x + w] = 1
        assert torch.equal(covered, out.masks[0, 0])


def test_same_generator_seed_gives_the_same_faults() -> None:
    faults = CutPasteFaults(CutPasteFaultConfig())
    a = faults(images(6), torch.Generator().manual_seed(11))
    b = faults(images(6), torch.Generator().manual_seed(11))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        ({"probability": 1.5}, r"faults.probability=1.5 must be in \[0, 1\]"),
        ({"probability": -0.1}, "faults.probability"),
        ({"patch_width_range": (20.0, 300.0)}, "wider than the 256-pixel reference image"),
        ({"patch_ratio_range": (0.0, 2.0)}, "faults.patch_ratio_range"),
        ({"patch_ratio_range": (-1.0, 2.0)}, "faults.patch_ratio_range"),
        ({"patch_count": 0}, "faults.patch_count"),
        ({"severity_max": 0.0}, "faults.severity_max"),
        ({"polarity": "up"}, "faults.polarity='up' is unknown; choose one of: bright, dark, both"),
    ],
)
def test_invalid_settings_are_one_line_config_errors(settings: dict, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as info:
        CutPasteFaultConfig(**settings)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=text):  # the same from a YAML mapping
        from_dict(CutPasteFaultConfig, {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})


def test_a_patch_that_cannot_fit_the_image_is_a_config_error() -> None:
    faults = CutPasteFaults(CutPasteFaultConfig(probability=1.0, patch_width_range=(200.0, 256.0),
                                                patch_ratio_range=(0.25, 0.25)))
    with pytest.raises(ConfigError, match="does not fit an image of 64x64"):
        faults(images(2, 64), torch.Generator().manual_seed(0))
