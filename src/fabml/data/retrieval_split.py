"""The retrieval job's split: train / val / test by object ID, stratified by class, written once.

:func:`make_retrieval_split` discovers the images (:mod:`fabml.data.retrieval_discovery`) and
splits them with :func:`fabml.data.splits.split_items`: groups = object IDs, strata = classes,
fractions ``data.train_fraction / val_fraction / test_fraction`` (0.70 / 0.15 / 0.15), seed
``data.split_seed``. It writes ``SPLITS/train.csv``, ``val.csv`` and ``test.csv`` (the columns of
:func:`fabml.data.splits.write_split_file`: ``item, part, group, stratum`` plus ``label``; items
are absolute paths) and ``SPLITS/classes.txt`` (one class name per line, in label-index order).

When the three files exist they are read instead (the data is not scanned again: delete the
folder to split again, e.g. after changing ``min_image_size``), and checked: an item listed twice
or an ID found in two files is a leak, a one-line error naming the ID. Classes too small to appear
in every part are listed in :attr:`RetrievalSplit.notes`, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fabml.data.retrieval_discovery import RetrievalRecord, discover_records, natural_key
from fabml.data.splits import PARTS, Split, read_split_file, split_items, write_split_file
from fabml.errors import DataError

CLASSES_FILE = "classes.txt"


@dataclass
class RetrievalSplit:
    """Records of each part, the class names (label index = position) and notes for the user."""

    train: list[RetrievalRecord]
    val: list[RetrievalRecord]
    test: list[RetrievalRecord]
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    def part(self, name: str) -> list[RetrievalRecord]:
        """The records of part ``name`` (train, val or test)."""
        if name not in PARTS:
            raise DataError(f"split part '{name}' is unknown; use one of {', '.join(PARTS)}")
        return getattr(self, name)

    def summary(self) -> str:
        """One line: images and ID groups per part, e.g. ``train 70 images (35 IDs) | val ... | 4 classes``."""
        parts = [f"{p} {len(self.part(p))} images ({len({r.group for r in self.part(p)})} IDs)" for p in PARTS]
        return " | ".join(parts + [f"{len(self.classes)} classes"])


def split_paths(splits_dir: str | Path) -> dict[str, Path]:
    """``{part: SPLITS/<part>.csv}``."""
    return {p: Path(splits_dir) / f"{p}.csv" for p in PARTS}


def _records(table: pd.DataFrame) -> list[RetrievalRecord]:
    return [RetrievalRecord(i, lab, g) for i, lab, g in zip(table["item"], table["label"], table["group"])]


def _coverage_notes(table: pd.DataFrame, classes: list[str]) -> list[str]:
    """One note per class missing from a part that the split uses."""
    used = [p for p in PARTS if (table["part"] == p).any()]
    notes = []
    for name in classes:
        rows = table[table["label"] == name]
        present = [p for p in used if (rows["part"] == p).any()]
        if len(present) < len(used):
            notes.append(
                f"class '{name}' has {rows['group'].nunique()} ID group(s), too few for {', '.join(used)}: "
                f"it is in {', '.join(present) or 'no part'} only"
            )
    return notes


def read_retrieval_split(splits_dir: str | Path) -> RetrievalSplit:
    """Read ``SPLITS/{train,val,test}.csv`` (and ``classes.txt``); DataError for a missing file,
    a file holding rows of another part, or a leak (an ID in two parts, named)."""
    splits_dir = Path(splits_dir)
    tables = []
    for part, path in split_paths(splits_dir).items():
        table = read_split_file(path).table
        if "label" not in table.columns:
            raise DataError(f"split file {path} has no column 'label': not a retrieval split")
        other = sorted(set(table["part"]) - {part})
        if other:
            raise DataError(f"split file {path} holds rows of part '{other[0]}'; each file holds its own part")
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    Split(table).check(f"split files in {splits_dir}")
    labels = sorted(set(table["label"]), key=natural_key)
    classes_path = splits_dir / CLASSES_FILE
    if classes_path.is_file():
        classes = [line.strip() for line in classes_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        unknown = [lab for lab in labels if lab not in classes]
        if unknown:
            raise DataError(f"split files in {splits_dir} use class '{unknown[0]}', which {classes_path} does not list")
    else:
        classes = labels
    parts = {p: _records(table[table["part"] == p]) for p in PARTS}
    return RetrievalSplit(parts["train"], parts["val"], parts["test"], classes, _coverage_notes(table, classes))


def make_retrieval_split(cfg: Any, splits_dir: str | Path) -> RetrievalSplit:
    """The split in ``splits_dir`` when its three files exist, else a new one of ``cfg``
    (a ``RetrievalDataConfig``) written there. Notes: discovery's (skipped, excluded) + coverage."""
    splits_dir = Path(splits_dir)
    paths = split_paths(splits_dir)
    present = [p for p, path in paths.items() if path.is_file()]
    if len(present) == len(PARTS):
        split = read_retrieval_split(splits_dir)
        split.notes.insert(0, f"reused the split files in {splits_dir} (delete them to split again)")
        return split
    if present:
        missing = [str(path) for p, path in paths.items() if p not in present]
        raise DataError(f"split folder {splits_dir} lacks {', '.join(missing)}; delete the folder to split again")
    found = discover_records(cfg)
    records = found.records
    fractions = (float(cfg.train_fraction), float(cfg.val_fraction), float(cfg.test_fraction))
    split = split_items(
        [r.path for r in records], groups=[r.group for r in records], strata=[r.label for r in records],
        fractions=fractions, seed=int(cfg.split_seed), extra={"label": [r.label for r in records]}, what="class",
    )
    splits_dir.mkdir(parents=True, exist_ok=True)
    for part, path in paths.items():
        write_split_file(Split(split.table[split.table["part"] == part].reset_index(drop=True)), path)
    (splits_dir / CLASSES_FILE).write_text("".join(f"{c}\n" for c in found.classes), encoding="utf-8")
    table = split.table
    parts = {p: _records(table[table["part"] == p]) for p in PARTS}
    return RetrievalSplit(parts["train"], parts["val"], parts["test"], found.classes,
                          found.notes + _coverage_notes(table, found.classes))
