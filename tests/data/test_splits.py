"""The one split module: groups (pattern, table, each its own), stratification, seed, file round trip, leaks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fabml.data.splits import (
    groups_from_pattern,
    groups_from_table,
    item_groups,
    read_split_file,
    split_file,
    split_items,
    write_split_file,
)
from fabml.errors import ConfigError, DataError

ID_BEFORE_LAST_UNDERSCORE = r"^(.*)_[^_]*$"


def retrieval_items(ids_per_class: dict[str, int], shots: int = 3) -> list[str]:
    """``DATA/<class>/<ID>_<seq>.jpg``; IDs may hold underscores themselves (``lot_7_a``)."""
    return [f"DATA/{cls}/{cls}_lot_{i}_{seq:03d}.jpg" for cls, n in ids_per_class.items()
            for i in range(n) for seq in range(shots)]


def part_of_groups(split) -> dict[str, set[str]]:
    table = split.table
    return {g: set(parts) for g, parts in table.groupby("group")["part"]}


def test_retrieval_layout_groups_an_id_and_keeps_it_in_one_part() -> None:
    items = retrieval_items({"apple": 20, "pear": 20, "plum": 10})
    groups = groups_from_pattern(items, ID_BEFORE_LAST_UNDERSCORE)
    assert groups[:4] == ["apple_lot_0", "apple_lot_0", "apple_lot_0", "apple_lot_1"]  # everything before the last _
    strata = [Path(i).parent.name for i in items]
    split = split_items(items, groups, strata, fractions=(0.6, 0.2, 0.2), seed=0)
    assert all(len(parts) == 1 for parts in part_of_groups(split).values())
    counts = split.counts()
    # stratified: each class is split on its own, 3 images per ID
    assert counts.loc["apple"].tolist() == [36, 12, 12] and counts.loc["pear"].tolist() == [36, 12, 12]
    assert counts.loc["plum"].tolist() == [18, 6, 6]
    assert split.notes == []
    assert split.table["item"].tolist() == items  # the items' order is kept


def test_seed_decides_and_repeats() -> None:
    items = retrieval_items({"a": 12, "b": 12})
    groups = groups_from_pattern(items, ID_BEFORE_LAST_UNDERSCORE)
    strata = [Path(i).parent.name for i in items]
    first = split_items(items, groups, strata, (0.5, 0.25, 0.25), seed=3)
    again = split_items(items, groups, strata, (0.5, 0.25, 0.25), seed=3)
    other = split_items(items, groups, strata, (0.5, 0.25, 0.25), seed=4)
    assert first.table.equals(again.table)
    assert not first.table["part"].equals(other.table["part"])


def test_each_item_its_own_group_and_small_classes_are_reported() -> None:
    items = [f"x{i}.png" for i in range(12)] + ["rare0.png", "rare1.png"]
    strata = ["common"] * 12 + ["rare"] * 2
    assert item_groups(items) == items  # no pattern, no table: each item its own group
    split = split_items(items, strata=strata, fractions=(0.5, 0.25, 0.25), seed=0)
    assert split.counts().loc["common"].tolist() == [6, 3, 3]
    assert split.counts().loc["rare"].tolist() == [1, 0, 1]  # train first, then test
    assert split.notes == ["class 'rare' has 2 group(s), too few for train, val, test: it is in train, test only"]


def test_fixed_items_take_their_whole_group() -> None:
    items = [f"photo{k}_t{j}.png" for k in range(5) for j in range(2)]
    groups = groups_from_pattern(items, r"^(photo\d)")
    fixed = ["test" if item == "photo2_t1.png" else None for item in items]
    split = split_items(items, groups, fractions=(0.6, 0.2, 0.2), seed=1, fixed=fixed)
    assert split.table.loc[split.table["group"] == "photo2", "part"].tolist() == ["test", "test"]
    with pytest.raises(DataError, match="group 'photo0' holds items fixed to test and train"):
        split_items(items, groups, fixed=["train", "test"] + [None] * 8)


def test_round_trip_through_the_csv_file(tmp_path: Path) -> None:
    items = retrieval_items({"a": 6, "b": 6}, shots=2)
    split = split_items(items, groups_from_pattern(items, ID_BEFORE_LAST_UNDERSCORE),
                        [Path(i).parent.name for i in items], seed=2, extra={"label": [1] * len(items)})
    path = write_split_file(split, tmp_path / "runs" / "split.csv")
    assert pd.read_csv(path).columns.tolist() == ["item", "part", "group", "stratum", "label"]
    back = read_split_file(path)
    assert back.table.drop(columns="label").equals(split.table.drop(columns="label"))
    assert back.items("val") == split.items("val")


def test_a_leak_is_refused_on_load_naming_the_group(tmp_path: Path) -> None:
    items = retrieval_items({"a": 6}, shots=2)
    split = split_items(items, groups_from_pattern(items, ID_BEFORE_LAST_UNDERSCORE), seed=0)
    table = split.table.copy()
    leaked = table.loc[table["part"] == "train", "group"].iloc[0]
    table.loc[table.index[table["group"] == leaked][-1], "part"] = "test"
    table.to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(DataError, match=rf"group '{leaked}' is in train and test \(a leak"):
        read_split_file(tmp_path / "split.csv")
    pd.concat([split.table, split.table.iloc[:1]]).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(DataError, match="is listed twice"):
        read_split_file(tmp_path / "twice.csv")
    pd.DataFrame({"path": ["a"]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataError, match="not a fabml split file"):
        read_split_file(tmp_path / "other.csv")


def test_split_file_is_written_once_then_reused(tmp_path: Path) -> None:
    items = [f"i{k}.png" for k in range(10)]
    path = tmp_path / "split.csv"
    first = split_file(path, lambda: split_items(items, seed=0), items)
    reused = split_file(path, lambda: split_items(items, seed=99), items)  # the file wins over a new seed
    assert reused.table["part"].tolist() == first.table["part"].tolist()
    with pytest.raises(DataError, match="lists other items than the data .*delete it"):
        split_file(path, lambda: split_items(items, seed=0), items + ["new.png"])


def test_groups_from_a_list_file_or_metadata_column(tmp_path: Path) -> None:
    items = ["/data/MT_Free/Imgs/a.jpg", "/data/MT_Free/Imgs/b.jpg", "/data/MT_Crack/Imgs/c.jpg"]
    table = tmp_path / "groups.csv"
    pd.DataFrame({"path": ["MT_Free/Imgs/a.jpg", "b.jpg", "MT_Crack/Imgs/c.jpg"], "tile": ["t1", "t1", "t2"],
                  "group": ["g", "g", "h"]}).to_csv(table, index=False)
    assert groups_from_table(items, table, group_column="tile") == ["t1", "t1", "t2"]  # a metadata column
    assert item_groups(items, table=str(table)) == ["g", "g", "h"]  # a list file: path, group
    with pytest.raises(DataError, match=r"/data/x\.jpg is not listed in group file .*group_file"):
        groups_from_table(["/data/x.jpg"], table)
    with pytest.raises(ConfigError, match="both set"):
        item_groups(items, pattern="(.)", table=str(table))


def test_pattern_errors_name_the_file_and_the_setting() -> None:
    with pytest.raises(DataError, match=r"file name nounderscore\.png does not match data\.group_pattern"):
        groups_from_pattern(["dir/nounderscore.png"], ID_BEFORE_LAST_UNDERSCORE, "data.group_pattern")
    with pytest.raises(ConfigError, match="is not a regular expression"):
        groups_from_pattern(["a.png"], "(", "data.group_pattern")
    with pytest.raises(ConfigError, match="sum to 1"):
        split_items(["a", "b"], fractions=(0.5, 0.2, 0.2))
