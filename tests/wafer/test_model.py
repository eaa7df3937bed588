"""WaferEncoder and MLPHead: shapes for every option, input checks, radial map values."""

from __future__ import annotations

import pytest
import torch

from fabml.errors import ConfigError, DataError
from fabml.wafer.model import EncoderConfig, MLPHead, WaferEncoder, radial_map


def _encoder(**kw) -> WaferEncoder:
    torch.manual_seed(0)
    return WaferEncoder(EncoderConfig(**{"preset": "tiny", **kw})).eval()


@pytest.mark.parametrize("size", [32, 64, 128])
def test_tiny_output_shape_for_sizes(size: int) -> None:
    enc = _encoder()
    out = enc(torch.rand(2, 1, size, size))
    assert enc.out_dim == 128
    assert out.shape == (2, 128)
    assert torch.isfinite(out).all()


def test_preset_dims() -> None:
    assert WaferEncoder(EncoderConfig(preset="resnet18")).out_dim == 512
    assert WaferEncoder(EncoderConfig(preset="small")).out_dim == 256
    enc = WaferEncoder(EncoderConfig(preset="tiny", layers=[1, 1], widths=[8, 24]))
    assert enc.out_dim == 24
    assert len(enc.stages) == 2


def test_resnet18_layout_and_forward() -> None:
    enc = WaferEncoder(EncoderConfig(preset="resnet18", stem="imagenet")).eval()
    assert [len(s) for s in enc.stages] == [2, 2, 2, 2]
    # torchvision's resnet18 has 11.69M parameters with its 1000-way fc (0.51M) and 3-channel stem.
    n = sum(p.numel() for p in enc.parameters())
    assert 11.0e6 < n < 11.3e6
    assert enc(torch.rand(1, 1, 32, 32)).shape == (1, 512)


def test_two_channels_radial_attention_and_min_size() -> None:
    enc = _encoder(in_chans=2, radial_channel=True, attention=True, stem="imagenet")
    assert enc.stem[0].in_channels == 3
    for size in (16, 64):
        assert enc(torch.rand(2, 2, size, size)).shape == (2, 128)
    enc = _encoder(radial_channel=True, attention=True)
    out = enc(torch.rand(3, 1, 48, 40))  # non-square works too
    assert out.shape == (3, 128)
    assert enc.radial.shape == (48, 40)
    assert "radial" not in enc.state_dict()  # recomputed from the size, never saved


def test_attention_block_is_identity_at_init() -> None:
    enc = _encoder(attention=True)
    feats = torch.rand(2, 64, 8, 8)
    assert torch.allclose(enc.attention(feats), feats)


def test_wrong_channel_count_and_size_errors() -> None:
    enc = _encoder()
    msg = r"expected 1-channel maps \[B,1,H,W\] \(outline_channel=False\), got shape \(2, 2, 32, 32\)"
    with pytest.raises(DataError, match=msg):
        enc(torch.rand(2, 2, 32, 32))
    with pytest.raises(DataError, match=r"expected 2-channel maps \[B,2,H,W\] \(outline_channel=True\)"):
        _encoder(in_chans=2)(torch.rand(2, 1, 32, 32))
    with pytest.raises(DataError, match="at least 16x16"):
        enc(torch.rand(2, 1, 8, 8))
    with pytest.raises(DataError, match="1-channel"):
        enc(torch.rand(1, 32, 32))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.preset='resnet50' is unknown"):
        WaferEncoder(EncoderConfig(preset="resnet50"))
    with pytest.raises(ConfigError, match="equal length"):
        WaferEncoder(EncoderConfig(layers=[1, 1], widths=[8]))
    with pytest.raises(ConfigError, match="model.stem"):
        WaferEncoder(EncoderConfig(stem="large"))
    with pytest.raises(ConfigError, match="attention_heads=5"):
        WaferEncoder(EncoderConfig(preset="tiny", attention=True, attention_heads=5))


def test_zero_init_residual() -> None:
    enc = _encoder()
    assert all(float(s[0].bn2.weight.detach().abs().sum()) == 0 for s in enc.stages)
    enc = _encoder(zero_init_residual=False)
    assert all(float(s[0].bn2.weight.detach().abs().sum()) > 0 for s in enc.stages)


def test_radial_map_values() -> None:
    r = radial_map(4, 4)
    # pixel centres at +-0.5, +-1.5 from the centre; inscribed radius 2
    assert torch.isclose(r[1, 1], torch.tensor(0.5**0.5 / 2))
    assert torch.isclose(r[0, 0], torch.tensor((2 * 1.5**2) ** 0.5 / 2))
    r = radial_map(64, 64)
    assert float(r.min()) < 0.05 and abs(float(r[32, 0]) - 1.0) < 0.02
    assert torch.equal(r, torch.rot90(r)) and torch.equal(r, torch.flip(r, dims=(1,)))


def test_channels_last_and_autocast() -> None:
    enc = _encoder(radial_channel=True, attention=True).to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    ref = enc(x.contiguous())
    assert torch.allclose(enc(x), ref, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x)
    assert out.shape == (2, 128) and torch.isfinite(out.float()).all()


def test_mlp_head() -> None:
    head = MLPHead(512, 1024, 256)
    layers = list(head.net)
    assert [type(m).__name__ for m in layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head(torch.rand(4, 512)).shape == (4, 256)
