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
