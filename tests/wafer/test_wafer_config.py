"""``wafer_config``: the training monitor follows ``--val`` (set up here, not in the CLI)."""

from __future__ import annotations

from pathlib import Path

from fabml.wafer.config import VAL_MONITOR, wafer_config


def test_validation_maps_select_the_best_checkpoint_by_knn_accuracy(tmp_path: Path) -> None:
    plain = wafer_config(None, ["train.epochs=2"])
    assert plain.train.epochs == 2 and (plain.train.monitor, plain.train.monitor_mode) == ("loss", "min")
    config = tmp_path / "w.yaml"
    config.write_text("train: {monitor: loss, lr: 0.01}\n")
    val = wafer_config(config, [], select_on_val=True)
    assert (val.train.monitor, val.train.monitor_mode) == (VAL_MONITOR, "max") == ("val_knn_macro_acc", "max")
    assert val.train.lr == 0.01


def test_commands_on_a_run_start_from_its_config(tmp_path: Path) -> None:
    """embed/cluster/evaluate: the run's config.yaml <- --config (only what it names) <- --set."""
    from fabml.config import save_config

    run_cfg = wafer_config(None, ["data.size=32", "cluster.min_cluster_size=7", "eval.knn_k=9"])
    save_config(run_cfg, tmp_path / "config.yaml")
    extra = tmp_path / "extra.yaml"
    extra.write_text("eval: {knn_k: 3}\nbaseline: {raw_size: 16}\n")
    cfg = wafer_config(extra, ["baseline.methods=[wu2015]"], base=tmp_path / "config.yaml")
    assert cfg.data.size == 32 and cfg.cluster.min_cluster_size == 7  # kept from the run
    assert cfg.eval.knn_k == 3 and cfg.baseline.raw_size == 16 and cfg.baseline.methods == ["wu2015"]
    assert wafer_config(None, [], base=tmp_path / "missing.yaml").data.size == 128  # no run config: defaults


def test_the_label_separator_setting_reaches_the_readers(tmp_path: Path) -> None:
    """A mixed-pattern label read from metadata.csv is joined with eval.label_separator."""
    import numpy as np

    from fabml.wafer.maps import load_dataset

    folder = tmp_path / "maps"
    folder.mkdir()
    np.save(folder / "w1.npy", np.ones((8, 8), dtype=np.uint8))
    (folder / "metadata.csv").write_text("file,label\nw1.npy,Scratch/Center\n")
    dataset = load_dataset(str(folder), wafer_config(None, ["eval.label_separator=/", "data.size=8"]))
    assert dataset.meta[0]["label"] == "Center/Scratch"  # split on "/", sorted, joined with "/"
    default = load_dataset(str(folder), wafer_config(None, ["data.size=8"]))
    assert default.meta[0]["label"] == "Scratch/Center"  # with '+' the cell is one name


def test_the_no_pattern_label_takes_a_list_from_yaml_and_set(tmp_path: Path) -> None:
    from fabml.wafer.evaluation import label_settings

    path = tmp_path / "cfg.yaml"
    path.write_text("eval:\n  no_pattern_label: [None, Normal]\n")
    assert label_settings(wafer_config(path).eval)[1] == frozenset({"None", "Normal"})
    cfg = wafer_config(None, ["eval.no_pattern_label=[None,Normal]"])
    assert label_settings(cfg.eval)[1] == frozenset({"None", "Normal"})
    assert label_settings(wafer_config(None, []).eval)[1] == frozenset({"None"})  # the default: one name
