"""Import of the seed SimulGenVAE's condition.txt / preset.txt (sample files in tests/surrogate/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabml.config import load_config, save_config
from fabml.errors import DataError
from fabml.surrogate.config import SurrogateConfig
from fabml.surrogate.legacy import import_legacy

DATA = Path(__file__).parent / "data"


def test_sample_condition_and_preset_map_to_the_config(tmp_path: Path) -> None:
    result = import_legacy(DATA / "condition.txt", DATA / "preset.txt")
    cfg = result.config
    assert cfg.data.expected_shape == [120, 40, 2048, 1]
    assert cfg.data.time_indices == list(range(20))  # Dim2_red: the first 20 of 40 steps
    assert cfg.data.node_indices == []  # Dim3_start..Dim3_end covers every node
    assert (cfg.train_vae.epochs, cfg.train_vae.batch_size, cfg.train_vae.lr) == (500, 8, 0.0005)
    assert (cfg.vae.latent_dim, cfg.vae.latent_dim_end, cfg.vae.recon_loss) == (8, 32, "smoothl1")
    assert cfg.vae.alpha == pytest.approx(1e-5)  # 1 / the seed's alpha
    lc = cfg.train_conditioner
    assert (lc.epochs, lc.lr, lc.batch_size) == (2000, 0.001, 32)
    assert cfg.train_conditioner.weight_decay == pytest.approx(1e-4)
    assert (cfg.train_e2e.epochs, cfg.train_e2e.lr) == (2000, 0.001)  # use_e2e_training 1: same settings
    assert cfg.conditioner.kind == "cnn" and cfg.conditioner.dropout == 0.3
    assert cfg.data.inputs == "images"
    assert cfg.mode == "all"
    assert cfg.e2e.loss == "huber"
    assert cfg.e2e.latent_reg_weight == pytest.approx(0.001)  # 0.01 / LC_alpha 10
    assert cfg.data.fields == "dataset1.pickle" and cfg.data.allow_pickle is False
    assert cfg.vae.init_beta_divisor == 1000.0 and cfg.vae.preset == "small" and cfg.vae.filters == []
    assert (cfg.conditioner.hidden, cfg.conditioner.blocks) == (16, 4)
    assert result.mapped["Loss_type"] == "vae.recon_loss = 'smoothl1'"
    assert result.mapped["Dim1"] == "data.expected_shape[0] = 120"
    # the YAML the CLI writes loads back to the same config
    back = load_config(SurrogateConfig, save_config(cfg, tmp_path / "config.yaml"))
    assert back == cfg


def test_every_unmapped_key_is_reported_with_its_value() -> None:
    result = import_legacy(DATA / "condition.txt", DATA / "preset.txt")
    keys = sorted(entry.split(": ", 1)[1].split(" = ")[0] for entry in result.unmapped)
    assert keys == sorted([
        "Stretch", "num_aug_f", "Recon_iter", "num_param", "use_spatial_attention", "param_data_type",
        "e2e_vae_model_path",
    ])
    assert "condition.txt: e2e_vae_model_path = model_save/SimulGen-VAE (" in " ".join(result.unmapped)
    assert not any("RESERVED" in e or "Common" in e for e in result.unmapped + list(result.mapped))
    # every KEY VALUE line of the file is either mapped or unmapped
    lines = [ln.split("#")[0].split() for ln in (DATA / "condition.txt").read_text().splitlines()]
    file_keys = {p[0] for p in lines if len(p) >= 2 and p[0][0] not in "%'" and p[0] not in ("RESERVED", "Common")}
    assert file_keys == set(keys) | {k for k in result.mapped if ":" not in k}


def test_unreadable_values_and_unknown_keys_are_reported_not_fatal(tmp_path: Path) -> None:
    cond = tmp_path / "condition.txt"
    cond.write_text("Dim1 10\nTraining_epochs lots\nLoss_type 9\nmy_new_key 3\ninput_type csvs\nparam_dir p.csv\n"
                    "use_e2e_training 0\nuse_latent_regularization 0\nlatent_reg_weight 0.5\n")
    result = import_legacy(cond)
    text = " | ".join(result.unmapped)
    assert "Training_epochs = lots (not a whole number)" in text
    assert "Loss_type = 9 (unknown code" in text
    assert "my_new_key = 3 (no fabml setting)" in text
    assert "use_e2e_training = 0" in text
    cfg = result.config
    assert cfg.train_vae.epochs == SurrogateConfig().train_vae.epochs  # unreadable: default kept
    assert cfg.conditioner.kind == "mlp" and cfg.data.inputs == "p.csv"
    assert cfg.e2e.latent_reg_weight == 0.0  # regularisation off
    assert cfg.data.expected_shape == [10, 0, 0, 0]


def test_node_window_becomes_node_indices(tmp_path: Path) -> None:
    cond = tmp_path / "condition.txt"
    cond.write_text("Dim2 5\nDim3 100\nDim3_start 10\nDim3_end 20\n")
    result = import_legacy(cond)
    assert result.config.data.node_indices == list(range(10, 20))
    assert "nodes 10..19" in result.mapped["Dim3_start"]


def test_missing_or_empty_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        import_legacy(tmp_path / "nope.txt")
    empty = tmp_path / "condition.txt"
    empty.write_text("% only a section marker\n'\n")
    with pytest.raises(DataError, match="no 'KEY VALUE' lines"):
        import_legacy(empty)
    short = tmp_path / "preset.txt"
    short.write_text("header\n1\n")
    with pytest.raises(DataError, match="1 value line.*expected 4"):
        import_legacy(DATA / "condition.txt", short)
