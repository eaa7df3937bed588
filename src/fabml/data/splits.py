"""One seeded, stratified, grouped split for every job, written to a CSV file and checked for leaks on load.

Each item (an image path, a sample id) gets a part: ``train``, ``val`` or ``test``.

- **Grouped**: items of one group (one object, one photo's tiles, one lot) land in one part. The
  group comes from a file-name pattern (:func:`groups_from_pattern`: a regular expression searched
  in the file name; the group is its first capture group, or the whole match without one), from a
  column of a metadata table or list file (:func:`groups_from_table`), or each item is its own
  group (no pattern, no table). :func:`item_groups` picks one of the three from the settings.
- **Stratified**: each stratum (class or type) is split on its own, so every part holds every
  class in about the proportions of ``fractions``. A group whose items have several strata counts
  for its most common one.
- **Fixed items**: an item may be pinned to a part (the anomaly job pins every defective image to
  ``test``); its whole group goes with it.
- **Seeded**: one ``numpy.random.default_rng(seed)`` permutes each stratum's groups (strata in
  sorted order, groups in their order of first appearance). The permuted groups are laid end to
  end in the order val, train, test, and each goes to the part in which its middle item falls,
  with cut points ``round(f_val n)`` and ``round((f_val + f_train) n)`` over the stratum's ``n``
  items. Every part with a positive fraction gets at least one group of a stratum that has enough
  groups (train first, then test, then val); a stratum with fewer groups is listed in
  :attr:`Split.notes`. With one item per group this is the plain seeded permutation split.

The file is a CSV with the columns ``item, part, group, stratum`` (plus any columns the job adds,
e.g. label and mask path). :func:`read_split_file` refuses a file in which an item is listed twice
or a group appears in two parts (a leak), naming the group; :func:`split_file` writes a split once
and reuses it afterwards.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from fabml.errors import ConfigError, DataError

PARTS = ("train", "val", "test")
LAYOUT = ("val", "train", "test")  # order of the parts along each stratum's permutation
PRIORITY = ("train", "test", "val")  # parts that get a group first when a stratum has few groups
COLUMNS = ("item", "part", "group", "stratum")


@dataclass
class Split:
    """The part of every item: ``table`` has one row per item, in the items' order, with the
    columns ``item, part, group, stratum`` (+ extra columns). ``notes``: strata too small to
    appear in every part with a positive fraction."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def items(self, part: str) -> list[str]:
        """The items of ``part`` in the table's order."""
        if part not in PARTS:
            raise ConfigError(f"split part '{part}' is unknown; use one of {', '.join(PARTS)}")
        return self.table.loc[self.table["part"] == part, "item"].tolist()

    def counts(self) -> pd.DataFrame:
        """Items per stratum (rows) and part (columns train, val, test)."""
        counts = pd.crosstab(self.table["stratum"], self.table["part"])
        return counts.reindex(columns=list(PARTS), fill_value=0)

    def check(self, source: str = "split") -> None:
        """DataError when an item is listed twice or a group is in two parts (``source`` names the file)."""
        duplicated = self.table["item"][self.table["item"].duplicated()]
        if len(duplicated):
            raise DataError(f"{source}: item {duplicated.iloc[0]} is listed twice; each item belongs to one part")
        parts = self.table.groupby("group", sort=True)["part"].unique()
        leaks = parts[parts.map(len) > 1]
        if len(leaks):
            group, where = leaks.index[0], sorted(leaks.iloc[0], key=PARTS.index)
            raise DataError(
                f"{source}: group '{group}' is in {' and '.join(where)} (a leak: {len(leaks)} group(s) in several "
                "parts); split again or move its items to one part"
            )


# ------------------------------------------------------------------------------------ groups


def groups_from_pattern(items: Sequence[str], pattern: str, setting: str = "group_pattern") -> list[str]:
    """The group of each item from its file name: ``re.search(pattern, name)``'s first capture
    group (the whole match when the pattern has none). ``DATA/<class>/<ID>_<seq>.jpg`` with
    ``^(.*)_[^_]*$`` gives ``<ID>`` (everything before the last ``_``). A name the pattern does not
    match is a DataError naming it and the setting."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"setting '{setting}' = {pattern!r} is not a regular expression ({err})") from None
    groups = []
    for item in items:
        name = PurePath(item).name
        match = regex.search(name)
        if match is None:
            raise DataError(
                f"file name {name} does not match {setting} {pattern!r}; fix the pattern (the group is its first "
                "capture group) or set it to '' to make each item its own group"
            )
        groups.append(match.group(1) if regex.groups else match.group(0))
    return groups


def _read_text_table(path: Path, what: str, kind: str, suffix: str = "") -> pd.DataFrame:
    """A CSV file with every column as text (empty cells ``""``); a missing or unreadable file is a
    DataError ``"{what} {path} does not exist{suffix}"`` or ``"... is not a readable {kind} (...){suffix}"``."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist{suffix}") from None
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{what} {path} is not a readable {kind} ({err}){suffix}") from None


def _path_keys(item: str) -> list[str]:
    """``a/b/c.jpg`` -> [``a/b/c.jpg``, ``b/c.jpg``, ``c.jpg``]: the item as written, then shorter tails."""
    parts = [p for p in PurePath(item).as_posix().split("/") if p]
    return [item] + ["/".join(parts[i:]) for i in range(len(parts))]


def groups_from_table(
    items: Sequence[str], table: str | Path, key_column: str = "path", group_column: str = "group",
    setting: str = "group_file",
) -> list[str]:
    """The group of each item from a CSV table (a list file, or the dataset's metadata table):
    column ``key_column`` names the item (as written, or a path tail such as ``MT_Free/x.jpg`` or
    ``x.jpg``; the longest tail listed wins), ``group_column`` its group. An item missing from the
    table is a DataError naming it and the setting."""
    path = Path(table).expanduser()
    frame = _read_text_table(path, "group file", "CSV table", f" (setting {setting})")
    for column in (key_column, group_column):
        if column not in frame.columns:
            raise DataError(f"group file {path} has no column '{column}' (columns: {', '.join(frame.columns)})")
    lookup: dict[str, str] = {}
    for key, group in zip(frame[key_column], frame[group_column]):
        key = PurePath(key.strip()).as_posix().removeprefix("./")
        if lookup.setdefault(key, group) != group:
            raise DataError(f"group file {path} gives {key} two groups ('{lookup[key]}' and '{group}')")
    groups = []
    for item in items:
        found = next((lookup[k] for k in _path_keys(PurePath(item).as_posix()) if k in lookup), None)
        if found is None:
            raise DataError(f"{item} is not listed in group file {path} (column '{key_column}', setting {setting})")
        groups.append(found)
    return groups


def item_groups(
    items: Sequence[str], pattern: str = "", table: str | Path = "", key_column: str = "path",
    group_column: str = "group", pattern_setting: str = "group_pattern", table_setting: str = "group_file",
) -> list[str]:
    """Groups from a table when one is named, else from a file-name pattern, else each item its own."""
    if table and pattern:
        raise ConfigError(f"settings '{pattern_setting}' and '{table_setting}' are both set; keep one")
    if table:
        return groups_from_table(items, table, key_column, group_column, table_setting)
    if pattern:
        return groups_from_pattern(items, pattern, pattern_setting)
    return [str(item) for item in items]


# ------------------------------------------------------------------------------------- split


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``(train, val, test)``, each in [0, 1], summing to 1, with a positive train share."""
    if len(fractions) != 3:
        raise ConfigError(f"split fractions {list(fractions)} must be three numbers: train, val, test")
    values = tuple(float(f) for f in fractions)
    if any(not 0.0 <= f <= 1.0 for f in values) or abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0.0:
        raise ConfigError(f"split fractions {list(fractions)} must lie in [0, 1], sum to 1 and give train a share")
    return values  # type: ignore[return-value]


def _boundaries(sizes: Sequence[int], shares: Sequence[float]) -> list[int]:
    """Group-index boundaries ``[0, b1, b2, G]`` of the LAYOUT parts for groups of ``sizes`` (in order)."""
    count = len(sizes)
    n = float(sum(sizes))
    starts = np.cumsum([0, *sizes[:-1]])
    middles = starts + np.asarray(sizes, dtype=float) / 2.0
    cuts = [math.floor(c * n + 0.5) for c in np.cumsum(shares)[:-1]]
    bounds = [0, *(int(np.sum(middles < c)) for c in cuts), count]
    need = [0] * len(LAYOUT)
    budget = count
    for part in PRIORITY:
        i = LAYOUT.index(part)
        if shares[i] > 0 and budget > 0:
            need[i], budget = 1, budget - 1
    for i in range(1, len(bounds) - 1):  # forward: each earlier part keeps its minimum
        bounds[i] = max(bounds[i], bounds[i - 1] + need[i - 1])
    for i in range(len(bounds) - 2, 0, -1):  # backward: each later part keeps its minimum
        bounds[i] = min(bounds[i], bounds[i + 1] - need[i])
    return bounds


def split_items(
    items: Sequence[str],
    groups: Sequence[str] | None = None,
    strata: Sequence[str] | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    fixed: Sequence[str | None] | None = None,
    extra: Mapping[str, Sequence] | None = None,
    what: str = "class",
) -> Split:
    """Split ``items`` (see the module doc). ``groups`` / ``strata`` / ``fixed`` are per item
    (default: each item its own group, one stratum, nothing pinned); ``fractions`` are the train,
    val and test shares; ``extra`` adds columns to the table; ``what`` names a stratum in notes."""
    n = len(items)
    groups = [str(g) for g in groups] if groups is not None else [str(i) for i in items]
    strata = [str(s) for s in strata] if strata is not None else [""] * n
    fixed = list(fixed) if fixed is not None else [None] * n
    if not (len(groups) == len(strata) == len(fixed) == n):
        raise DataError(f"split: {n} items but {len(groups)} groups, {len(strata)} strata, {len(fixed)} fixed parts")
    shares = [check_fractions(fractions)[PARTS.index(p)] for p in LAYOUT]
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    part_of_group: dict[str, str] = {}
    pool: dict[str, list[str]] = {}
    for g, idx in members.items():
        pinned = {fixed[i] for i in idx if fixed[i] is not None}
        if len(pinned) > 1:
            raise DataError(f"group '{g}' holds items fixed to {' and '.join(sorted(pinned))}; one group, one part")
        if pinned:
            part = pinned.pop()
            if part not in PARTS:
                raise ConfigError(f"fixed part '{part}' is unknown; use one of {', '.join(PARTS)}")
            part_of_group[g] = part
            continue
        stratum = Counter(strata[i] for i in idx).most_common(1)[0][0]  # ties: the first seen
        pool.setdefault(stratum, []).append(g)
    rng = np.random.default_rng(seed)
    notes = []
    wanted = [p for p, s in zip(LAYOUT, shares) if s > 0]
    for stratum in sorted(pool):
        order = [pool[stratum][j] for j in rng.permutation(len(pool[stratum]))]
        bounds = _boundaries([len(members[g]) for g in order], shares)
        for k, part in enumerate(LAYOUT):
            for g in order[bounds[k]:bounds[k + 1]]:
                part_of_group[g] = part
        if len(order) < len(wanted):
            present = [p for k, p in enumerate(LAYOUT) if bounds[k + 1] > bounds[k]]
            label = f"{what} '{stratum}'" if stratum else "the items"
            notes.append(
                f"{label} has {len(order)} group(s), too few for {', '.join(sorted(wanted, key=PARTS.index))}: "
                f"it is in {', '.join(sorted(present, key=PARTS.index))} only"
            )
    table = pd.DataFrame({
        "item": [str(i) for i in items], "part": [part_of_group[g] for g in groups], "group": groups,
        "stratum": strata,
    })
    for name, values in (extra or {}).items():
        if name in COLUMNS:
            raise ConfigError(f"extra split column '{name}' clashes with the columns {', '.join(COLUMNS)}")
        table[name] = list(values)
    return Split(table, notes)


# -------------------------------------------------------------------------------------- file


def write_split_file(split: Split, path: str | Path) -> Path:
    """Write ``split`` as CSV (columns item, part, group, stratum, then the extra ones), atomically
    (a temporary file renamed over ``path``: a reader never sees half a split)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(split.table.to_csv(index=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_split_file(path: str | Path) -> Split:
    """Read a split written by :func:`write_split_file` (every column as text; empty cells are
    ``""``); DataError when the file is missing or malformed, or an item or group leaks."""
    path = Path(path)
    table = _read_text_table(path, "split file", "CSV file")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"split file {path} lacks the column(s) {', '.join(missing)}: not a fabml split file")
    unknown = sorted(set(table["part"]) - set(PARTS))
    if unknown:
        raise DataError(f"split file {path}: part '{unknown[0]}' is unknown (parts: {', '.join(PARTS)})")
    split = Split(table)
    split.check(f"split file {path}")
    return split


def split_file(path: str | Path, make: Callable[[], Split], items: Sequence[str] | None = None) -> Split:
    """The split in ``path`` when the file exists (checked against ``items`` when given), else
    ``make()`` written there: one split, reused by every later run on the same data."""
    path = Path(path)
    if not path.exists():
        split = make()
        write_split_file(split, path)
        return split
    split = read_split_file(path)
    if items is not None:
        listed, current = set(split.table["item"]), {str(i) for i in items}
        if listed != current:
            extra = sorted(current - listed)[:1] or sorted(listed - current)[:1]
            raise DataError(
                f"split file {path} lists other items than the data ({len(current - listed)} new, "
                f"{len(listed - current)} gone, e.g. {extra[0]}): delete it to split again"
            )
    return split
