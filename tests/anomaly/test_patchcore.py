"""PatchCore: shapes, coreset (k-center property, streaming, determinism), chunked distances,
re-weighting against a hand computation, a synthetic defect, state-dict round trip, ONNX, errors."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

import fabml  # noqa: F401  (torchvision shim before anything imports timm)
from fabml.anomaly.method import ANOMALY_METHODS
from fabml.anomaly.methods.patchcore import (
    PatchCoreMethod,
    StreamingCoreset,
    coreset_size,
    greedy_kcenter,
    random_projection,
)
from fabml.anomaly.models.base import AnomalyOutput
from fabml.anomaly.models.patchcore import PatchCore, PatchCoreConfig, nearest_neighbours
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.engine.trainer import TrainConfig
from fabml.errors import ConfigError, DataError, TrainingError

SIZE = 64




def make_model(in_chans: int = 1, **kw: object) -> PatchCore:
    torch.manual_seed(0)
    cfg = PatchCoreConfig(image_size=(SIZE, SIZE), in_chans=in_chans, pretrained=False, **kw)
    return PatchCore(cfg)


def normal_images(n: int, in_chans: int = 1, seed: int = 0) -> torch.Tensor:
    """Smooth ramps (direction and level jittered) with a little noise: the 'good panels'."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.linspace(0.0, 1.0, SIZE)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    angle = (torch.rand(n, generator=g) - 0.5) * 0.6
    level = 0.3 + 0.1 * torch.rand(n, 1, 1, generator=g)
    ramp = level + 0.2 * (torch.cos(angle).view(n, 1, 1) * xx + torch.sin(angle).view(n, 1, 1) * yy)
    noise = 0.01 * torch.randn(n, in_chans, SIZE, SIZE, generator=g)
    return (ramp.unsqueeze(1) + noise).clamp(0, 1)


def with_square(images: torch.Tensor, top: int = 24, left: int = 28, side: int = 12) -> torch.Tensor:
    out = images.clone()
    out[:, :, top : top + side, left : left + side] = 1.0
    return out


@pytest.fixture(scope="module")
def fitted() -> tuple[PatchCore, dict[str, float]]:
    model = make_model()
    train = normal_images(8)
    stats = PatchCoreMethod(model).fit([{"image": train[:4]}, {"image": train[4:]}])
    return model.eval(), stats


def test_registered_and_defaults() -> None:
    assert ANOMALY_MODELS.get("patchcore") is PatchCore
    assert ANOMALY_METHODS.get("patchcore") is PatchCoreMethod
    assert PatchCoreMethod.memory_bank
    assert set(PatchCoreMethod.default_train) <= {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = PatchCoreConfig()
    assert (cfg.backbone, cfg.layers, cfg.coreset_ratio, cfg.num_neighbors) == ("tf_efficientnet_lite0", [2, 3], 0.1, 9)


def test_fit_shapes_and_bank_size(fitted: tuple[PatchCore, dict[str, float]]) -> None:
    model, stats = fitted
    # lite0 layers 2, 3 = strides 8, 16: an 8 x 8 grid of 40 + 112 dims per 64 px image
    assert model.embedding_dim == 152
    assert stats["n_patches"] == 8 * 8 * 8
    assert stats["memory_bank_size"] == math.ceil(0.1 * 512) == model.memory_bank.shape[0] == 52
    assert model.memory_bank.shape == (52, 152)
    assert stats["fit_seconds"] > 0
    with torch.no_grad():
        out = model(normal_images(3, seed=5))
    assert isinstance(out, AnomalyOutput)
    assert out.pred_score.shape == (3,) and out.anomaly_map.shape == (3, 1, SIZE, SIZE)
    assert torch.allclose(out.pred_score, out.anomaly_map.flatten(1).amax(1))


def test_three_channel_input_and_train_mode_embeddings() -> None:
    model = make_model(in_chans=3)
    PatchCoreMethod(model).fit([normal_images(2, in_chans=3)])
    assert model.memory_bank.shape == (coreset_size(2 * 64, 0.1), 152)
    model.train()
    assert not model.feature_extractor.training  # the backbone statistics stay frozen
    assert model(normal_images(2, in_chans=3)).shape == (2, 152, 8, 8)
    model.eval()
    assert model(normal_images(2, in_chans=3)).anomaly_map.shape == (2, 1, SIZE, SIZE)


def _radius(points: torch.Tensor, centres: torch.Tensor) -> float:
    return float(torch.cdist(points.double(), centres.double()).min(dim=1).values.max())


def test_greedy_kcenter_within_twice_the_optimum() -> None:
    g = torch.Generator().manual_seed(3)
    points = torch.randn(10, 2, generator=g)
    k = 3
    idx, radius = greedy_kcenter(points, k, first=4)
    assert idx[0] == 4 and len(set(idx.tolist())) == k
    # the reported radius is the true covering radius: every point is within it of a centre
    assert radius == pytest.approx(_radius(points, points[idx]), rel=1e-5)
    # each new centre was the point farthest from the centres before it
    for i in range(1, k):
        gaps = torch.cdist(points, points[idx[:i]]).min(dim=1).values
        assert int(gaps.argmax()) == int(idx[i])
    optimum = min(_radius(points, points[list(c)]) for c in itertools.combinations(range(10), k))
    assert optimum <= radius <= 2 * optimum + 1e-6


def test_streaming_coreset_size_coverage_and_determinism() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(1000, 24, generator=g)
    proj = random_projection(24, 8, seed=0)
    assert proj is not None and proj.shape == (24, 8)
    assert random_projection(24, 0, 0) is None and random_projection(24, 24, 0) is None
    assert random_projection(24, 12, 0) is not None and random_projection(24, 13, 0) is None  # halves or nothing

    def build(seed: int, oversample: float = 2.0) -> tuple[torch.Tensor, StreamingCoreset]:
        coreset = StreamingCoreset(0.1, chunk=300, projection=proj, seed=seed, oversample=oversample)
        for part in rows.split(70):  # batches that straddle chunk boundaries
            coreset.add(part)
        return coreset.finish(), coreset

    bank, coreset = build(0)
    assert bank.shape == (math.ceil(0.1 * 1000), 24) and len(coreset.radii) == 4 and coreset.n_chunks == 4
    # every row is within (its chunk's candidate radius + the global pass's radius) of a bank row
    assert _radius(rows @ proj, bank @ proj) <= max(coreset.radii) + coreset.radius + 1e-4
    # kept rows are distinct rows of the input
    assert (bank[:, None] == rows[None]).all(dim=2).any(dim=1).all()
    assert torch.unique(bank, dim=0).shape[0] == bank.shape[0]
    assert torch.equal(build(0)[0], bank)  # same seed, same bank
    assert not torch.equal(build(1)[0], bank)  # another seed starts elsewhere
    whole = StreamingCoreset(1.0, chunk=300, projection=proj)
    whole.add(rows)
    assert torch.equal(whole.finish(), rows)  # ratio 1.0 keeps everything, in order


def test_streaming_coreset_in_one_chunk_is_the_papers_coreset() -> None:
    g = torch.Generator().manual_seed(4)
    rows = torch.randn(700, 24, generator=g)
    proj = random_projection(24, 8, seed=0)
    coreset = StreamingCoreset(0.05, chunk=1000, projection=proj, seed=3, oversample=3.0)
    for part in rows.split(64):
        coreset.add(part)
    bank = coreset.finish()
    # the paper's coreset: greedy k-center over all 700 projected rows from the same random start
    first = int(torch.randint(700, (1,), generator=torch.Generator().manual_seed(3)))
    idx, radius = greedy_kcenter(rows @ proj, math.ceil(0.05 * 700), first)
    assert torch.equal(bank, rows[idx])
    assert coreset.radius == radius and coreset.n_chunks == 1


def test_streaming_coreset_keeps_every_chunk_for_the_exact_pass_when_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    import fabml.anomaly.methods.patchcore as pc

    g = torch.Generator().manual_seed(6)
    rows = torch.randn(1000, 24, generator=g)
    proj = random_projection(24, 8, seed=0)

    def build(exact_max_bytes: float) -> tuple[torch.Tensor, StreamingCoreset]:
        coreset = StreamingCoreset(0.05, chunk=300, projection=proj, seed=3, oversample=2.0,
                                   exact_max_bytes=exact_max_bytes)
        for part in rows.split(70):
            coreset.add(part)
        return coreset.finish(), coreset

    # 4 chunks, all kept: the paper's coreset of all 1000 rows, as if they were one chunk
    bank, coreset = build(1e9)
    first = int(torch.randint(1000, (1,), generator=torch.Generator().manual_seed(3)))
    idx, radius = greedy_kcenter(rows @ proj, 50, first)
    assert coreset.exact and coreset.n_chunks == 4
    assert torch.equal(bank, rows[idx]) and coreset.radius == radius
    # a memory limit that two chunks break switches to streaming: the same bank as streaming throughout
    streamed, coreset0 = build(0.0)
    assert not coreset0.exact
    two_chunks = 4.0 * 600 * (24 + 8 + 2)
    limited, coreset1 = build(two_chunks - 1)
    assert not coreset1.exact and torch.equal(limited, streamed)
    # so does a work limit below N * M
    monkeypatch.setattr(pc, "GLOBAL_PASS_MAX_WORK", 900 * 45)
    worked, coreset2 = build(1e9)
    assert not coreset2.exact and torch.equal(worked, streamed)


def test_oversampled_chunks_cover_better_than_fixed_shares() -> None:
    # two well-separated blobs, streamed one after the other: a fixed share per chunk gives the
    # tight blob as many centres as the wide one; the global pass moves them where they are needed
    g = torch.Generator().manual_seed(5)
    wide, tight = 5.0 * torch.randn(400, 6, generator=g), 0.1 * torch.randn(400, 6, generator=g) + 50.0
    rows = torch.cat([wide, tight])
    radii = {}
    for oversample in (1.0, 4.0):
        coreset = StreamingCoreset(0.05, chunk=400, projection=None, seed=0, oversample=oversample)
        coreset.add(rows)
        bank = coreset.finish()
        assert bank.shape == (40, 6)
        radii[oversample] = _radius(rows, bank)
    assert radii[4.0] < 0.9 * radii[1.0]


def test_global_pass_work_cap_keeps_greedy_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    import fabml.anomaly.methods.patchcore as pc

    g = torch.Generator().manual_seed(8)
    rows = torch.randn(900, 6, generator=g)

    def build() -> tuple[torch.Tensor, StreamingCoreset]:
        coreset = StreamingCoreset(0.1, chunk=300, projection=None, seed=0, oversample=3.0)
        coreset.add(rows)
        return coreset.finish(), coreset

    free, coreset = build()
    assert coreset.oversample_used == 3.0
    # a cap that allows 1.5x: each chunk keeps the first ceil(1.5 * 30) = 45 of its 90 candidates
    monkeypatch.setattr(pc, "GLOBAL_PASS_MAX_WORK", int(1.5 * 90 * 90))
    capped, coreset = build()
    assert coreset.oversample_used == pytest.approx(1.5) and capped.shape == free.shape == (90, 6)
    # with a cap that leaves 1x, the bank is each chunk's own greedy k-center of its share
    monkeypatch.setattr(pc, "GLOBAL_PASS_MAX_WORK", 1)
    shares, coreset = build()
    assert coreset.oversample_used == 1.0
    gen = torch.Generator().manual_seed(0)
    expected = []
    for part in rows.split(300):
        first = int(torch.randint(300, (1,), generator=gen))
        expected.append(part[greedy_kcenter(part, 30, first)[0]])
    assert torch.equal(shares, torch.cat(expected))


def test_pruned_greedy_equals_plain_greedy() -> None:
    g = torch.Generator().manual_seed(6)
    # clustered points, as patch embeddings are: the cell pruning skips most cells
    centres = 4.0 * torch.randn(40, 16, generator=g)
    points = centres[torch.randint(40, (3000,), generator=g)] + torch.randn(3000, 16, generator=g)
    plain, r_plain = greedy_kcenter(points, 600, first=11, cells=0)
    pruned, r_pruned = greedy_kcenter(points, 600, first=11, cells=50)
    assert torch.equal(plain, pruned)
    assert r_pruned == pytest.approx(r_plain, rel=1e-5)


def test_coreset_size_rounding() -> None:
    assert coreset_size(30, 0.1) == 3 and coreset_size(31, 0.1) == 4
    assert coreset_size(5, 0.01) == 1 and coreset_size(0, 0.1) == 0 and coreset_size(7, 1.0) == 7


def test_chunked_nearest_neighbours_equal_unchunked() -> None:
    g = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(50, 16, generator=g), torch.randn(37, 16, generator=g)
    ref = torch.cdist(queries.double(), bank.double()).min(dim=1)
    for chunk in (1, 7, 37, 1000):
        dist, idx = nearest_neighbours(queries, bank, chunk)
        assert torch.allclose(dist.double(), ref.values, atol=1e-4)
        assert torch.equal(idx, ref.indices)


@pytest.mark.parametrize("search", ["exact", "faiss"])
def test_patch_scores_equal_brute_force_cdist(search: str) -> None:
    model = make_model(search=search, chunk_size=100).eval()
    g = torch.Generator().manual_seed(7)
    bank = 3.0 + torch.randn(250, 152, generator=g)  # off-centre, so centring on the bank mean matters
    model.set_memory_bank(bank)
    embedding = 3.0 + torch.randn(3, 152, 9, 9, generator=g)
    scores, idx = model.patch_scores(embedding)
    queries = embedding.permute(0, 2, 3, 1).reshape(-1, 152).double()
    ref = torch.cdist(queries, bank.double()).min(dim=1)
    assert torch.allclose(scores.reshape(-1).double(), ref.values, rtol=1e-5, atol=1e-4)
    assert torch.equal(idx.reshape(-1), ref.indices)
    # the cached centred bank is computed once at set time, not per call
    assert torch.allclose(model.bank_centred, bank - bank.mean(dim=0, keepdim=True))
    assert torch.allclose(model.bank_sq_norms[0], model.bank_centred.pow(2).sum(dim=1))


def test_faiss_search_equals_exact(fitted: tuple[PatchCore, dict[str, float]]) -> None:
    model, _ = fitted
    fast = make_model(search="faiss", reweight=True)
    fast.load_state_dict(model.state_dict())  # the cache and the Faiss index follow the loaded bank
    exact = make_model(reweight=True)
    exact.load_state_dict(model.state_dict())
    images = torch.cat([normal_images(3, seed=11), with_square(normal_images(2, seed=12))])
    with torch.no_grad():
        a, b = exact.eval()(images), fast.eval()(images)
    assert torch.allclose(a.pred_score, b.pred_score, rtol=1e-5, atol=1e-5)
    assert torch.allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-5)
    assert fast.faiss_index().ntotal == model.bank_rows


def test_model_output_does_not_depend_on_chunk_size(fitted: tuple[PatchCore, dict[str, float]]) -> None:
    model, _ = fitted
    small = make_model(chunk_size=10)  # blocks over the bank and over the 256 query rows
    small.load_state_dict(model.state_dict())
    images = normal_images(4, seed=9)
    with torch.no_grad():
        a, b = model(images), small.eval()(images)
    assert torch.allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)


def test_reweighted_score_matches_hand_computation() -> None:
    model = make_model(num_neighbors=3, reweight=True)
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(6, 152, generator=g)
    model.set_memory_bank(bank)
    embedding = torch.randn(2, 152, 2, 2, generator=g)
    scores, locations = model.patch_scores(embedding)
    got = model.reweighted_score(scores, locations, embedding)
    b, e = bank.double().numpy(), embedding.double().numpy()
    for i in range(2):
        patches = e[i].reshape(152, 4).T
        dists = np.linalg.norm(patches[:, None] - b[None], axis=2)
        worst = dists.min(axis=1).argmax()
        s_star, m_star = dists[worst].min(), dists[worst].argmin()
        support = np.argsort(np.linalg.norm(b - b[m_star], axis=1))[:3]  # includes m* itself
        d = np.linalg.norm(patches[worst] - b[support], axis=1)
        expected = (1 - np.exp(d[0]) / np.exp(d).sum()) * s_star
        assert float(got[i]) == pytest.approx(expected, rel=1e-4)


def test_synthetic_defect_scores_higher(fitted: tuple[PatchCore, dict[str, float]]) -> None:
    model, _ = fitted
    held_out = normal_images(4, seed=1)
    defects = with_square(normal_images(4, seed=2))
    with torch.no_grad():
        normal_out, defect_out = model(held_out), model(defects)
    assert defect_out.pred_score.min() > normal_out.pred_score.max()
    maps = defect_out.anomaly_map[:, 0]
    inside = maps[:, 24:36, 28:40].mean()
    outside = torch.cat([maps[:, :12].flatten(), maps[:, -12:].flatten()]).mean()
    assert inside > 1.5 * outside
    model.config.reweight = True
    try:
        with torch.no_grad():
            rw_normal, rw_defect = model(held_out).pred_score, model(defects).pred_score
    finally:
        model.config.reweight = False
    assert rw_defect.min() > rw_normal.max()


def test_state_dict_round_trip_any_bank_size(fitted: tuple[PatchCore, dict[str, float]]) -> None:
    model, _ = fitted
    state = model.state_dict()
    assert state["memory_bank"].shape == (52, 152)
    fresh = make_model()
    fresh.set_memory_bank(torch.zeros(7, 152))  # a different bank size than the saved one
    fresh.load_state_dict(state)
    assert fresh.memory_bank.shape == (52, 152)
    images = with_square(normal_images(2, seed=4))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images).pred_score, model(images).pred_score)
    empty = make_model()
    empty.load_state_dict(state)  # an unfitted model loads it too
    assert empty.fitted
    # the checkpointed object is the method (prefix "model."): it resizes too
    method = PatchCoreMethod(make_model())
    method.load_state_dict(PatchCoreMethod(model).state_dict())
    assert method.model.bank_rows == 52


@pytest.mark.parametrize("reweight", [False, True])
def test_onnx_export_matches_torch(fitted: tuple[PatchCore, dict[str, float]], tmp_path, reweight: bool) -> None:
    import onnxruntime as ort

    model, _ = fitted
    exported = make_model(chunk_size=20, reweight=reweight)  # 3 bank blocks traced into the graph
    exported.load_state_dict(model.state_dict())
    exported.eval()
    images = torch.cat([normal_images(1, seed=6), with_square(normal_images(1, seed=7))])
    path = tmp_path / "patchcore.onnx"
    torch.onnx.export(
        exported,
        (images,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["pred_score", "anomaly_map"],
        dynamic_axes={"image": {0: "batch"}, "pred_score": {0: "batch"}, "anomaly_map": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = torch.cat([images, normal_images(1, seed=8)])  # another batch size than traced
    score, amap = session.run(None, {"image": probe.numpy()})
    with torch.no_grad():
        ref = exported(probe)
    assert np.abs(score - ref.pred_score.numpy()).max() < 1e-4
    assert np.abs(amap - ref.anomaly_map.numpy()).max() < 1e-4


@pytest.mark.parametrize(("sigma", "size"), [(4.0, (40, 56)), (1.3, (9, 7)), (2.0, (5, 5))])
def test_gaussian_blur_equals_separable_replicate_convolution(sigma: float, size: tuple[int, int]) -> None:
    from torch.nn import functional as F

    from fabml.anomaly.models.base import GaussianBlur, gaussian_kernel1d, gaussian_kernel_size

    assert gaussian_kernel_size(4.0) == 33 and gaussian_kernel_size(1.3) == 2 * int(4 * 1.3 + 0.5) + 1  # anomalib's
    maps = torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(0))
    kernel = gaussian_kernel1d(sigma)
    k = kernel.numel()
    ref = F.conv2d(F.pad(maps, (k // 2, k // 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, k))
    ref = F.conv2d(F.pad(ref, (0, 0, k // 2, k // 2), mode="replicate"), kernel.view(1, 1, k, 1))
    assert torch.allclose(GaussianBlur(sigma)(maps), ref, atol=1e-6)  # maps smaller than the kernel too


def test_errors() -> None:
    model = make_model().eval()
    with pytest.raises(TrainingError, match="PatchCore is not fitted: run fit first"):
        model(normal_images(1))
    with pytest.raises(DataError, match=r"expects images \[B, 1, 64, 64\]"):
        model(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(DataError, match="expects images"):
        PatchCoreMethod(model).fit([torch.rand(2, 1, 32, 32)])
    with pytest.raises(DataError, match="loader is empty"):
        PatchCoreMethod(model).fit([])
    with pytest.raises(ConfigError, match="coreset_ratio"):
        make_model(coreset_ratio=0.0)
    with pytest.raises(ConfigError, match="num_neighbors"):
        make_model(num_neighbors=0)
    with pytest.raises(ConfigError, match="search"):
        make_model(search="annoy")
    with pytest.raises(ConfigError, match="coreset_oversample"):
        make_model(coreset_oversample=0.5)
