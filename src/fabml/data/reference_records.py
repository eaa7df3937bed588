"""Reference (golden-template) mode: anomaly image records that carry their reference image.

Two ways, set in :class:`~fabml.data.anomaly_discovery.AnomalyDataConfig`:

* ``pairs_csv``: the CSV of :func:`fabml.data.reference_pairs.pairs_from_csv` lists every image
  with its reference, its ``label`` (0 good, 1 defective; required, since the split fits on the
  good ones), optionally a ``mask`` (or ``boxes``) file and a ``defect_type`` (or ``defects``).
  Good images get the type ``good``; defective ones their ``defect_type`` or ``defect``. The
  folder discovery is not used.
* ``reference_image`` or ``reference_pattern`` + ``reference_dir``: the images (labels, types,
  masks) come from the usual folder discovery, and each gets its reference by
  :func:`fabml.data.reference_pairs.pairs_single_reference` / ``pairs_from_pattern``.

Relative paths in the settings are taken from ``data.root``.
"""

from __future__ import annotations

import os
from dataclasses import replace

from fabml.data.anomaly_discovery import AnomalyDataConfig, ImageRecord, _spec, resolve_path
from fabml.data.reference_pairs import pairs_from_csv, pairs_from_pattern, pairs_single_reference
from fabml.errors import ConfigError, DataError


def records_from_pairs(cfg: AnomalyDataConfig) -> list[ImageRecord]:
    """One record per row of ``cfg.pairs_csv`` (file order), each with its reference."""
    path = resolve_path(cfg.root, cfg.pairs_csv)
    records = []
    for pair in pairs_from_csv(path):
        if pair.label is None:
            raise DataError(f"pairs file {path}: test image {pair.image} has no label; give every row a label "
                            "column value, 0 (good) or 1 (defective): fitting uses the good pairs only")
        dtype = (pair.defect_type or "defect") if pair.label == 1 else "good"
        mask = _spec(pair.mask, cfg) if pair.mask and pair.label == 1 else None
        records.append(ImageRecord(pair.image, pair.label, dtype, mask, pair.reference))
    return records


def attach_references(records: list[ImageRecord], cfg: AnomalyDataConfig) -> list[ImageRecord]:
    """``records`` each with its reference by ``cfg.reference_image`` or ``cfg.reference_pattern``;
    a record that is itself the one golden image is dropped."""
    if cfg.reference_image and cfg.reference_pattern:
        raise ConfigError("set either data.reference_image (one golden image for all) or data.reference_pattern "
                          "with data.reference_dir, not both")
    paths = [r.path for r in records]
    if not paths:
        raise DataError("no images found to pair with references (check data.root)")
    if cfg.reference_image:
        pairs = pairs_single_reference(paths, resolve_path(cfg.root, cfg.reference_image))
    else:
        if not cfg.reference_dir:
            raise ConfigError("data.reference_pattern needs data.reference_dir, the folder of golden images")
        pairs = pairs_from_pattern(paths, cfg.reference_pattern, resolve_path(cfg.root, cfg.reference_dir))
    by_image = {os.path.realpath(p.image): p.reference for p in pairs}  # the pairs hold resolved paths
    return [replace(r, reference=by_image[os.path.realpath(r.path)]) for r in records
            if os.path.realpath(r.path) in by_image]
