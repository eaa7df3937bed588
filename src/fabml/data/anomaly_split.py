"""The anomaly job's split: normal images for fitting and calibration, the rest for testing.

Built on :mod:`fabml.data.splits`: every defective image is pinned to ``test`` (and with it every
image of its group); the normal images are split by group with the shares
``train = (1 - val_fraction) * train_fraction``, ``val = val_fraction * train_fraction``,
``test = 1 - train_fraction``. With one image per group (the default) this is the seeded
permutation of the normal images it has always been. The split file is the CSV of
:func:`fabml.data.splits.write_split_file` with the columns ``label``, ``defect_type`` and
``mask_path`` added (and ``reference`` in reference mode); ``split.json`` files of older runs are still read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fabml.console import err
from fabml.data.anomaly_discovery import AnomalyDataConfig, ImageRecord, discover_records, mask_gap_notes
from fabml.data.splits import Split, item_groups, read_split_file, split_items, write_split_file
from fabml.errors import ConfigError, DataError

_LEGACY_FORMAT = "fabml-anomaly-split"


@dataclass
class AnomalySplit:
    """Normal-only ``train`` and ``val`` records; ``test`` = held-out normals + all abnormal.

    ``table``: the generic split (item, part, group, stratum, ...) it came from; ``notes``: types
    too small for every part and defect types without masks while others have them (also shown by
    :meth:`summary`, so a fit's report keeps them). Neither takes part in ``==``."""

    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    table: Split | None = field(default=None, compare=False, repr=False)
    notes: list[str] = field(default_factory=list, compare=False)

    def summary(self) -> str:
        """One line of counts, e.g. ``train 599 normal | val 67 normal | test 286 normal + 392 abnormal (...)``,
        then ``| note: ...`` for each note."""
        abnormal = [r for r in self.test if r.label == 1]
        types: dict[str, int] = {}
        for r in abnormal:
            types[r.defect_type] = types.get(r.defect_type, 0) + 1
        detail = ", ".join(f"{t} {n}" for t, n in sorted(types.items()))
        return (
            f"train {len(self.train)} normal | val {len(self.val)} normal | "
            f"test {len(self.test) - len(abnormal)} normal + {len(abnormal)} abnormal"
            + (f" ({detail})" if detail else "")
            + "".join(f" | note: {n}" for n in self.notes)
        )


def _record_columns(records: Sequence[ImageRecord]) -> dict[str, list]:
    """The split file's record columns: label, defect_type, mask_path, and reference (reference mode only)."""
    columns: dict[str, list] = {
        "label": [int(r.label) for r in records], "defect_type": [r.defect_type for r in records],
        "mask_path": [os.path.abspath(r.mask_path) if r.mask_path else "" for r in records]}
    if any(r.reference for r in records):
        columns["reference"] = [os.path.abspath(r.reference) if r.reference else "" for r in records]
    return columns


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
        raise ConfigError(f"setting '{name}' = {value!r} must lie strictly between 0 and 1")


def split_records(
    records: Sequence[ImageRecord], train_fraction: float = 0.7, val_fraction: float = 0.1, seed: int = 0,
    groups: Sequence[str] | None = None,
) -> AnomalySplit:
    """Split normal images into fit (train + val) and test; every abnormal image goes to test.

    ``groups`` (one per record; default: each image its own) keeps the images of a group in one
    part; a group holding an abnormal image goes to test whole. Of the ``n`` normal images about
    ``train_fraction * n`` form the fitting pool, ``val_fraction`` of which are validation (at least
    one image each for train, val and test when there are 3 normal groups). Each subset keeps the
    order of ``records``.
    """
    _check_fraction("train_fraction", train_fraction)
    _check_fraction("val_fraction", val_fraction)
    n = sum(1 for r in records if r.label == 0)
    if n < 2:
        raise DataError(f"need at least 2 normal images to split into fit and test, found {n}")
    items = [os.path.abspath(r.path) for r in records]
    split = split_items(
        items, groups=groups, strata=[r.defect_type if r.label == 0 else "abnormal" for r in records],
        fractions=((1.0 - val_fraction) * train_fraction, val_fraction * train_fraction, 1.0 - train_fraction),
        seed=seed, fixed=["test" if r.label == 1 else None for r in records],
        extra=_record_columns(records),
        what="normal type",
    )
    parts = split.table["part"].tolist()
    result = AnomalySplit(*([r for r, p in zip(records, parts) if p == part] for part in ("train", "val", "test")),
                          table=split, notes=split.notes)
    if not result.train:
        raise DataError("no normal image is left for fitting: every group holds a defective image "
                        "(check data.group_pattern / data.group_file)")
    return result


def make_split(cfg: AnomalyDataConfig) -> AnomalySplit:
    """``split_records(discover_records(cfg), ...)`` with the config's fractions, seed and groups.

    A defect type without masks while others have them is warned about on stderr and noted in
    the split's ``notes``."""
    records = discover_records(cfg)
    groups = item_groups([r.path for r in records], cfg.group_pattern, cfg.group_file,
                         pattern_setting="data.group_pattern", table_setting="data.group_file")
    split = split_records(records, cfg.train_fraction, cfg.val_fraction, cfg.split_seed, groups)
    for note in mask_gap_notes(records):
        err.print(f"warning: {note}")
        split.notes.append(note)
    return split


def write_split(split: AnomalySplit, path: str | Path) -> None:
    """Write the split as CSV (absolute paths; columns item, part, group, stratum, label, defect_type,
    mask_path) so another program can use the exact same images."""
    table = split.table
    if table is None:  # built by hand: each image its own group
        records = split.train + split.val + split.test
        parts = ["train"] * len(split.train) + ["val"] * len(split.val) + ["test"] * len(split.test)
        table = split_items([os.path.abspath(r.path) for r in records], fixed=parts, extra=_record_columns(records))
    write_split_file(table, path)


def read_split(path: str | Path) -> AnomalySplit:
    """Read a split written by :func:`write_split` (leaks checked); an old run's ``split.json`` is
    read too, also when ``path`` names the CSV file it would have today."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".json").is_file():
        path = path.with_suffix(".json")
    if path.is_file() and path.read_bytes()[:64].lstrip().startswith(b"{"):
        return _read_legacy_json(path)
    split = read_split_file(path)
    table = split.table
    for column in ("label", "defect_type", "mask_path"):
        if column not in table.columns:
            raise DataError(f"split file {path} has no column '{column}': not an anomaly split")
    try:
        references = table["reference"] if "reference" in table.columns else [""] * len(table)
        records = [ImageRecord(item, int(label), dtype, mask or None, ref or None) for item, label, dtype, mask, ref in
                   zip(table["item"], table["label"], table["defect_type"], table["mask_path"], references)]
    except ValueError as exc:
        raise DataError(f"split file {path}: a label is not 0 or 1 ({exc})") from None
    parts = table["part"].tolist()
    if any(r.label != 0 for r, p in zip(records, parts) if p != "test"):
        raise DataError(f"split file {path}: a defective image is in train or val; fit on normal images only")
    return AnomalySplit(*([r for r, p in zip(records, parts) if p == part] for part in ("train", "val", "test")),
                        table=split)


def _read_legacy_json(path: Path) -> AnomalySplit:
    """A ``split.json`` of an older run (format ``fabml-anomaly-split``)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"split file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != _LEGACY_FORMAT:
        raise DataError(f"split file {path} is not a fabml anomaly split (write it with write_split)")
    parts: dict[str, list[ImageRecord]] = {}
    for part in ("train", "val", "test"):
        try:
            parts[part] = [
                ImageRecord(str(e["path"]), int(e["label"]), str(e["defect_type"]), e.get("mask_path"))
                for e in data[part]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"split file {path}: entry list '{part}' is malformed ({exc!r})") from None
    return AnomalySplit(**parts)
