"""Import of the LMConv paper's released checkpoints (``lmconv_bench.import_official``).

The original code cannot run here, so the official files are imitated: an LMConv of ours is built,
its state dict (whose names are the official ``OurPixelCNN`` names) is wrapped the way the
official ``main.py`` saves it (``{"epoch", "global_step", "args", "model_state_dict",
"optimizer_state_dict", "ema_state_dict", "test_loss_<obs>"}``, ``args`` as ``vars(args)`` or an
``argparse.Namespace``), or saved bare with or without ``DataParallel``'s ``module.`` prefix, then
imported; the imported model's ``log_prob`` must equal the source model's exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import numpy as np
import pytest
import torch

from lmconv_bench.checkpoints import load_checkpoint, read_meta
from lmconv_bench.errors import UserError
from lmconv_bench.import_official import (
    ORDER_NAMES,
    import_checkpoint,
    import_official,
    orders_from_args,
)
from lmconv_bench.configs import make_config
from lmconv_bench.models.lmconv import LMConv
from lmconv_bench.orders import get_order


# ------------------------------------------------------------------------------------ helpers
def source_model(dataset: str, seed: int, head: str | None = None, **arch) -> LMConv:
    """A small LMConv with all parameters perturbed away from their initial values."""
    cfg = make_config("lmconv", "tiny", dataset, **arch)
    if head is not None:
        cfg = dataclasses.replace(cfg, head=head)
    torch.manual_seed(seed)
    model = LMConv(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def official_args(model: LMConv, **overrides) -> dict:
    """``vars(args)`` as the official main.py would save it for ``model``."""
    a = model.config.arch
    args = {
        "data_dir": "data", "dataset": "cifar", "binarize": False, "ours": True,
        "nr_resnet": a["nr_resnet"], "nr_filters": a["nr_filters"], "nr_logistic_mix": a["nr_logistic_mix"],
        "lr": 0.0002, "batch_size": 32, "kernel_size": a["kernel_size"], "max_dilation": a["max_dilation"],
        "dropout_prob": 0.0, "normalization": a["normalization"], "order": ["s_curve"], "randomize_order": True,
        "mode": "train", "celeba_size": 256, "n_bits": 8, "no_bias": not a.get("conv_bias", True),
        "learn_weight_for_masks": False, "base_order_reflect_rows": False, "base_order_reflect_cols": False,
        "base_order_transpose": False, "order_variants": None, "train_masks": None, "ema": 1.0,
        "resize_sizes": [32], "resize_probs": [1.0],
    }
    args.update(overrides)
    return args


def official_file(path, model: LMConv, args, ema_model: LMConv | None = None, namespace: bool = False):
    """torch.save the dict the official main.py writes (optimizer state included)."""
    sd = model.state_dict()
    obj = {
        "epoch": 7,
        "global_step": 1234,
        "args": argparse.Namespace(**args) if namespace else args,
        "model_state_dict": sd,
        "optimizer_state_dict": {
            "state": {0: {"step": 3, "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}},
            "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "params": [0]}],
        },
        "test_loss_3x32x32": np.float64(2.95),  # main.py's test bpd is a numpy float
    }
    if ema_model is not None:
        obj["ema_state_dict"] = ema_model.state_dict()
    torch.save(obj, path)
    return path


def images(cfg, seed: int = 0, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**cfg.n_bits, (n, cfg.channels, cfg.height, cfg.width), generator=g, dtype=torch.uint8)


def assert_same_log_prob(a: LMConv, b, orders=("s_curve/3",)) -> None:
    cfg = a.config
    x = images(cfg)
    with torch.no_grad():
        for name in orders:
            order = get_order(name, cfg.height, cfg.width)
            lp_a, lp_b = a.log_prob(x, order), b.log_prob(x, order)
            assert lp_a.shape == (x.shape[0], cfg.height, cfg.width)
            assert bool(torch.isfinite(lp_a).all())
            torch.testing.assert_close(lp_b, lp_a, rtol=0, atol=0)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


# ------------------------------------------------------------------------------------ round trips
CASES = {
    # id: (dataset, head, arch overrides, args overrides, expected dataset, save args as Namespace)
    "cifar_k3_pono": ("cifar10", None, dict(kernel_size=3, normalization="pono", nr_logistic_mix=2),
                      dict(dataset="cifar"), "cifar10", True),
    "mnist_k5_weightnorm": ("mnist", None, dict(kernel_size=5, normalization="weight_norm", nr_resnet=2,
                            nr_filters=6, nr_logistic_mix=3), dict(dataset="mnist"), "mnist", False),
    "binary_mnist_bernoulli2": ("mnist_binary", "bernoulli2", dict(kernel_size=3, normalization="none"),
                                dict(dataset="mnist", binarize=True), "mnist_binary", False),
    "celebahq64_5bit_nobias": ("celeba64", None, dict(kernel_size=3, normalization="pono", conv_bias=False,
                               nr_filters=4), dict(dataset="celebahq", celeba_size=64, n_bits=5), "celeba64", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_infers_config_and_matches_log_prob(tmp_path, case):
    dataset, head, arch, arg_over, expect_ds, namespace = CASES[case]
    src_model = source_model(dataset, seed=len(case), head=head, **arch)
    src = official_file(tmp_path / "official.pth", src_model, official_args(src_model, **arg_over), namespace=namespace)
    dst = tmp_path / "imported.safetensors"

    res = import_official(src, dst)
    model, meta = load_checkpoint(dst)

    c, sc = res.config, src_model.config
    assert c == model.config
    assert (c.model, c.dataset, c.channels, c.height, c.width, c.n_bits, c.head) == (
        "lmconv", expect_ds, sc.channels, sc.height, sc.width, sc.n_bits, sc.head,
    )
    for key in ("nr_resnet", "nr_filters", "kernel_size", "normalization", "max_dilation", "conv_bias"):
        assert c.arch[key] == {**{"conv_bias": True}, **sc.arch}[key], key
    if head is None:
        assert c.arch["nr_logistic_mix"] == sc.arch["nr_logistic_mix"]
    assert c.trained_orders == tuple(f"s_curve/{k}" for k in range(8))
    assert meta["imported_from"]["weights"] == "model_state_dict"
    assert meta["imported_from"]["source_sha256"] == res.source_sha256
    assert meta["step"] == 1234 and meta["epoch"] == 7
    assert meta["imported_from"]["test_loss_3x32x32"] == pytest.approx(2.95)
    for k, v in src_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert_same_log_prob(src_model, model, orders=("s_curve/0", "hilbert/5") if sc.height <= 32 else ("s_curve/6",))


def test_weight_norm_inferred_from_tensors_and_pono_from_args(tmp_path):
    m = source_model("mnist", 3, kernel_size=3, normalization="weight_norm")
    assert "u_init.weight_g" in m.state_dict()
    torch.save(m.state_dict(), tmp_path / "bare.pth")
    res = import_official(tmp_path / "bare.pth", tmp_path / "a.safetensors", dataset="mnist")
    assert res.config.arch["normalization"] == "weight_norm"
    assert not any("pono" in n for n in res.notes)

    # PONO and "none" have the same tensors: the saved args decide
    p = source_model("mnist", 4, kernel_size=3, normalization="none")
    official_file(tmp_path / "none.pth", p, official_args(p, dataset="mnist", normalization="none"))
    res = import_official(tmp_path / "none.pth", tmp_path / "b.safetensors")
    assert res.config.arch["normalization"] == "none"
    assert_same_log_prob(p, load_checkpoint(res.dst)[0])


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict_needs_dataset_and_assumes_pono(tmp_path, prefix):
    m = source_model("cifar10", 5, kernel_size=3, normalization="pono")
    torch.save({prefix + k: v for k, v in m.state_dict().items()}, tmp_path / "bare.pth")

    with pytest.raises(UserError, match="--dataset") as e:
        import_official(tmp_path / "bare.pth", tmp_path / "x.safetensors")
    one_line_error(e)
    assert not (tmp_path / "x.safetensors").exists()

    res = import_official(tmp_path / "bare.pth", tmp_path / "y.safetensors", dataset="cifar10")
    assert res.weights == "state dict"
    assert res.config.arch["normalization"] == "pono"
    assert res.config.trained_orders == ()
    assert any("pono assumed" in n for n in res.notes)
    assert any("max_dilation 2 assumed" in n for n in res.notes)
    assert_same_log_prob(m, load_checkpoint(res.dst)[0])
    if not prefix:  # the comparison is sensitive: the wrong normalization changes the likelihood
        wrong = import_official(tmp_path / "bare.pth", tmp_path / "z.safetensors", dataset="cifar10", normalization="none")
        with pytest.raises(AssertionError):
            assert_same_log_prob(m, load_checkpoint(wrong.dst)[0])


def test_ema_flag_picks_ema_weights(tmp_path):
    raw = source_model("mnist", 10, kernel_size=3)
    avg = source_model("mnist", 11, kernel_size=3)
    src = official_file(tmp_path / "o.pth", raw, official_args(raw, dataset="mnist"), ema_model=avg)

    plain = import_official(src, tmp_path / "raw.safetensors")
    ema = import_official(src, tmp_path / "ema.safetensors", ema=True)
    assert (plain.weights, ema.weights) == ("model_state_dict", "ema_state_dict")
    assert_same_log_prob(raw, load_checkpoint(plain.dst)[0])
    assert_same_log_prob(avg, load_checkpoint(ema.dst)[0])
    assert read_meta(ema.dst)["imported_from"]["weights"] == "ema_state_dict"


def test_ema_flag_without_ema_weights_is_a_user_error(tmp_path):
    m = source_model("mnist", 12, kernel_size=3)
    src = official_file(tmp_path / "o.pth", m, official_args(m, dataset="mnist"))
    with pytest.raises(UserError, match="without --ema") as e:
        import_official(src, tmp_path / "x.safetensors", ema=True)
    one_line_error(e)
    torch.save(m.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(UserError, match="without --ema"):
        import_official(tmp_path / "bare.pth", tmp_path / "x.safetensors", ema=True, dataset="mnist")


def test_explicit_dataset_overrides_args_after_a_fit_check(tmp_path):
    m = source_model("cifar10", 13, kernel_size=3)
    src = official_file(tmp_path / "o.pth", m, official_args(m, dataset="cifar"))
    res = import_official(src, tmp_path / "a.safetensors", dataset="celeba32")
    assert res.config.dataset == "celeba32"
    assert any("trained on cifar10" in n for n in res.notes)
    for bad, hint in (("mnist", "channel"), ("celeba64", "bits")):
        with pytest.raises(UserError, match=hint) as e:
            import_official(src, tmp_path / f"{bad}.safetensors", dataset=bad)
        one_line_error(e)


def test_legacy_format_with_numpy1_scalar_loads_without_pickle_execution(tmp_path):
    """2020-era files: legacy (non-zip) torch.save, numpy scalars named numpy.core.multiarray.scalar."""
    m = source_model("mnist", 14, kernel_size=3)
    obj = {"epoch": 1, "args": official_args(m, dataset="mnist"), "model_state_dict": m.state_dict(),
           "test_loss": np.float64(1.5)}
    path = tmp_path / "legacy.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    if b"numpy._core.multiarray" in data:  # written by numpy 2: rename as numpy 1 did
        path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    res = import_official(path, tmp_path / "a.safetensors")
    assert read_meta(res.dst)["imported_from"]["test_loss"] == pytest.approx(1.5)
    assert_same_log_prob(m, load_checkpoint(res.dst)[0])


def test_unknown_pickled_type_needs_trust_pickle(tmp_path):
    m = source_model("mnist", 15, kernel_size=3)
    obj = {"args": official_args(m, dataset="mnist"), "model_state_dict": m.state_dict(),
           "run_dir": pathlib.PurePosixPath("runs/x")}
    torch.save(obj, tmp_path / "o.pth")
    with pytest.raises(UserError, match="PurePosixPath.*--trust-pickle") as e:
        import_official(tmp_path / "o.pth", tmp_path / "a.safetensors")
    one_line_error(e)
    assert not (tmp_path / "a.safetensors").exists()
    res = import_official(tmp_path / "o.pth", tmp_path / "a.safetensors", trust_pickle=True)
    assert_same_log_prob(m, load_checkpoint(res.dst)[0])


# ------------------------------------------------------------------------------------ errors
def test_damaged_and_foreign_files_are_one_line_user_errors(tmp_path):
    m = source_model("mnist", 16, kernel_size=3)
    good = official_file(tmp_path / "good.pth", m, official_args(m, dataset="mnist"))
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(b"\x00\x13not a checkpoint" * 10)
    torch.save({"foo": 1, "bar": [1, 2]}, tmp_path / "layout.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    cases = {
        "trunc.pth": "truncated, corrupted",
        "garbage.pth": "truncated, corrupted",
        "layout.pth": "unknown layout.*bar, foo",
        "list.pth": "unknown layout.*list",
        "missing.pth": "does not exist",
    }
    for name, pattern in cases.items():
        with pytest.raises(UserError, match=pattern) as e:
            import_official(tmp_path / name, tmp_path / f"{name}.safetensors")
        one_line_error(e)
        assert not (tmp_path / f"{name}.safetensors").exists()


def test_existing_destination_is_not_overwritten(tmp_path):
    m = source_model("mnist", 17, kernel_size=3)
    src = official_file(tmp_path / "o.pth", m, official_args(m, dataset="mnist"))
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    with pytest.raises(UserError, match="already exists") as e:
        import_official(src, dst)
    one_line_error(e)
    assert dst.read_bytes() == b"precious"
    assert not (tmp_path / "out.safetensors.sha256").exists()
    with pytest.raises(UserError, match=r"\.safetensors"):
        import_official(src, tmp_path / "out.pth")


def test_unsupported_or_inconsistent_checkpoints(tmp_path):
    m = source_model("cifar10", 18, kernel_size=3)
    sd = m.state_dict()

    def check(obj, pattern, **kw):
        path = tmp_path / "bad.pth"
        torch.save(obj, path)
        with pytest.raises(UserError, match=pattern) as e:
            import_official(path, tmp_path / "bad.safetensors", **kw)
        one_line_error(e)
        assert not (tmp_path / "bad.safetensors").exists()

    args = official_args(m, dataset="cifar")
    check({"args": {**args, "nr_filters": 99}, "model_state_dict": sd}, "args.nr_filters=99")
    check({"args": {**args, "kernel_size": 5}, "model_state_dict": sd}, "args.kernel_size=5")
    check({"args": {**args, "normalization": "order_rescale"}, "model_state_dict": sd}, "order_rescale")
    check({"args": {**args, "normalization": "weight_norm"}, "model_state_dict": sd}, "weight_g")
    check({"args": {**args, "dataset": "svhn"}, "model_state_dict": sd}, "unknown official dataset")
    check({"args": {**args, "dataset": "celebahq", "celeba_size": 256}, "model_state_dict": sd}, "256x256")
    check({"args": {**args, "order": ["zigzag"]}, "model_state_dict": sd}, "unknown official order")
    check({"model_state_dict": {**sd, "u_init.mask_weight": torch.zeros(8, 3, 3)}}, "learn_weight_for_masks", dataset="cifar10")
    check({"model_state_dict": {**sd, "norm_init.weight": torch.ones(8)}}, "instance_norm_affine", dataset="cifar10")
    check({"ul_init.0.conv.weight_v": torch.zeros(1), "u_init.conv.weight_v": torch.zeros(1)}, "without --ours", dataset="cifar10")
    check({k: v for k, v in sd.items() if not k.startswith("down_layers.2")}, "missing down_layers.2", dataset="cifar10")
    check({"model_state_dict": sd}, "models 3-channel images.*mnist", dataset="mnist")
    with pytest.raises(UserError, match="unknown checkpoint format"):
        import_checkpoint(tmp_path / "x.pth", tmp_path / "y.safetensors", format="tf-pixelcnn")


# ------------------------------------------------------------------------------------ orders
def _official_variants(seq, n):
    """The official augment_orders list, re-expressed: [id, Rr, Rc, Rr+Rc, T, Rr.T, Rc.T, Rr.Rc.T]."""
    rr = lambda s: [(n - 1 - r, c) for r, c in s]  # noqa: E731
    rc = lambda s: [(r, n - 1 - c) for r, c in s]  # noqa: E731
    t = lambda s: [(c, r) for r, c in s]  # noqa: E731
    return [seq, rr(seq), rc(seq), rr(rc(seq)), t(seq), rr(t(seq)), rc(t(seq)), rr(rc(t(seq)))]


def _s_curve(n):
    return [(r, c) for r in range(n) for c in (range(n) if r % 2 == 0 else range(n - 1, -1, -1))]


def _flat(seq, n):
    return torch.tensor([r * n + c for r, c in seq])


@pytest.mark.parametrize("flags", [(), ("base_order_transpose",), ("base_order_reflect_rows", "base_order_reflect_cols"),
                                   ("base_order_transpose", "base_order_reflect_rows", "base_order_reflect_cols"),
                                   ("base_order_transpose", "base_order_reflect_cols")])
@pytest.mark.parametrize("randomize", [False, True])
def test_trained_orders_follow_the_official_list_exactly(flags, randomize):
    n = 8
    base = _s_curve(n)
    if "base_order_transpose" in flags:
        base = [(c, r) for r, c in base]
    if "base_order_reflect_rows" in flags:
        base = [(n - 1 - r, c) for r, c in base]
    if "base_order_reflect_cols" in flags:
        base = [(r, n - 1 - c) for r, c in base]
    official = _official_variants(base, n) if randomize else [base]

    names = orders_from_args({"order": ["s_curve"], "randomize_order": randomize, **{f: True for f in flags}})
    assert len(names) == len(official)
    for name, seq in zip(names, official):
        assert torch.equal(get_order(name, n, n), _flat(seq, n)), name


def test_trained_order_names_and_selection():
    assert orders_from_args({"order": "raster_scan"}) == ("raster/0",)
    # gilbert2d and hilbert are two orders (transposes of each other), not one
    assert orders_from_args({"order": ["gilbert2d", "s_curve_center_quarter_last", "hilbert"]}) == (
        "hilbert/4", "center_last/0", "hilbert/0",
    )
    assert set(ORDER_NAMES.values()) == {"raster", "s_curve", "hilbert", "center_last"}
    picked = orders_from_args({"order": ["s_curve"], "randomize_order": True, "order_variants": [1, 3]})
    assert picked == ("s_curve/1", "s_curve/3")
    assert orders_from_args({"order": ["s_curve"], "randomize_order": True, "order_variants": [1, 3], "train_masks": [1]}) == ("s_curve/3",)
    assert orders_from_args({"order": None}) == () and orders_from_args(None) == ()
    with pytest.raises(UserError, match="order_variants"):
        orders_from_args({"order": ["s_curve"], "order_variants": [5]})


# ------------------------------------------------------------------------------ gilbert2d
def _gilbert2d(width: int, height: int):
    """The generalized Hilbert curve (Cervený's gilbert2d), written here from its published
    description as an independent reference: yields (x, y) = (column, row) pairs."""

    def sgn(v):
        return (v > 0) - (v < 0)

    def gen(x, y, ax, ay, bx, by):
        w, h = abs(ax + ay), abs(bx + by)
        dax, day, dbx, dby = sgn(ax), sgn(ay), sgn(bx), sgn(by)
        if h == 1:
            for _ in range(w):
                yield x, y
                x, y = x + dax, y + day
            return
        if w == 1:
            for _ in range(h):
                yield x, y
                x, y = x + dbx, y + dby
            return
        ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
        w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
        if 2 * w > 3 * h:
            if w2 % 2 and w > 2:
                ax2, ay2 = ax2 + dax, ay2 + day
            yield from gen(x, y, ax2, ay2, bx, by)
            yield from gen(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
        else:
            if h2 % 2 and h > 2:
                bx2, by2 = bx2 + dbx, by2 + dby
            yield from gen(x, y, bx2, by2, ax2, ay2)
            yield from gen(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
            yield from gen(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2))

    if width >= height:
        yield from gen(0, 0, width, 0, 0, height)
    else:
        yield from gen(0, 0, 0, height, width, 0)


@pytest.mark.parametrize("n", [4, 8, 16, 28, 32])
def test_gilbert2d_imports_as_the_transpose_of_our_hilbert(n):
    # the official mask code reads each (x, y) pair of gilbert2d as (row, col)
    official = [(x, y) for x, y in _gilbert2d(n, n)]  # (row, col) as read
    assert sorted(official) == [(r, c) for r in range(n) for c in range(n)]
    (name,) = orders_from_args({"order": "gilbert2d"})
    assert name == "hilbert/4"
    assert torch.equal(get_order(name, n, n), _flat(official, n))
    # randomize_order: official list position i is the i-th dihedral variant of that sequence
    names = orders_from_args({"order": "gilbert2d", "randomize_order": True})
    for name, seq in zip(names, _official_variants(official, n)):
        assert torch.equal(get_order(name, n, n), _flat(seq, n)), name
    assert names == tuple(f"hilbert/{i}" for i in (4, 5, 6, 7, 0, 1, 2, 3))
