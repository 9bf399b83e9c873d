"""The fair-comparison machinery: trained coverage, the training distribution of task-aware
training, matched presets, KID's jackknife standard error, and generated findings."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from lmconv_bench import orders as O
from lmconv_bench.coverage import in_training_distribution, layer_signatures, trained_coverage
from lmconv_bench.errors import UserError
from lmconv_bench.findings import build_findings
from lmconv_bench.masks import make_masks, parse_task_masks, training_masks
from lmconv_bench.models.base import build_model
from lmconv_bench.configs import make_config


# ------------------------------------------------------------------------------ coverage
def _coverage_brute_force(eff: torch.Tensor, trained: list[str], h: int, w: int) -> float:
    """Position by position, layer kind by layer kind, straight from orders.kernel_masks."""
    kinds = [(1, False), (1, True), (2, True)]
    eff_masks = [O.kernel_masks(eff, h, w, 3, d, c) for d, c in kinds]
    tr_masks = [[O.kernel_masks(O.get_order(t, h, w), h, w, 3, d, c) for d, c in kinds] for t in trained]
    hits = 0
    for r, c in itertools.product(range(h), range(w)):
        hits += any(all(torch.equal(eff_masks[i][r, c], tm[i][r, c]) for i in range(3)) for tm in tr_masks)
    return hits / (h * w)


def test_coverage_is_one_for_trained_orders_and_matches_brute_force():
    h = w = 8
    trained = O.parse_spec("s_curve", h, w)
    assert trained_coverage(O.get_order("s_curve/3", h, w), trained, h, w) == 1.0
    # raster is covered by the S-curves: its rows run as the S-curve's left-to-right rows do
    assert trained_coverage(O.get_order("raster/0", h, w), trained, h, w) == 1.0
    for name in ("hilbert/0", "center_last/2"):
        eff = O.get_order(name, h, w)
        got = trained_coverage(eff, trained, h, w)
        assert got == pytest.approx(_coverage_brute_force(eff, trained, h, w)) and got < 1
    missing = make_masks("random", {"p": 0.5}, h, w, ["a", "b"])
    eff = O.observed_first(O.get_order("s_curve/0", h, w), missing)
    want = np.mean([_coverage_brute_force(eff[i], trained, h, w) for i in range(2)])
    assert trained_coverage(eff, trained, h, w) == pytest.approx(want)
    assert want < 0.5  # a random mask's observed-first order is mostly untrained kernel masks


def test_layer_signatures_tell_orders_apart_only_where_masks_differ():
    a, b = O.get_order("s_curve/0", 8, 8), O.get_order("raster/0", 8, 8)
    sa, sb = layer_signatures(a, 8, 8), layer_signatures(b, 8, 8)
    assert torch.equal(sa, layer_signatures(a, 8, 8))
    # identical on the first row (left to right in both), different where the snake turns back
    assert torch.equal(sa[0, 1:-1], sb[0, 1:-1]) and not torch.equal(sa[1], sb[1])


def test_order_trained_follows_the_training_distribution():
    trained = ("s_curve/0", "s_curve/1")
    assert in_training_distribution("s_curve/0", None, None, trained, ())
    assert not in_training_distribution("hilbert/0", None, None, trained, ())
    # observed-first forms: trained only with that mask family, at its default parameters
    assert not in_training_distribution("s_curve/0", "random", {"p": 0.5}, trained, ())
    assert in_training_distribution("s_curve/0", "random", {"p": 0.5}, trained, ("random", "center"))
    assert not in_training_distribution("s_curve/0", "random", {"p": 0.1}, trained, ("random",))
    assert in_training_distribution("s_curve/1", "center", {"size": "default"}, trained, ("center",))
    assert not in_training_distribution("s_curve/1", "top_half", {}, trained, ("center",))


# ------------------------------------------------------------------------------ task-aware training
def test_training_masks_are_seeded_per_step_and_global_index():
    fams = parse_task_masks("random,center,top_half")
    whole = training_masks(fams, 28, 28, step=5, first_index=0, count=8)
    halves = torch.cat([training_masks(fams, 28, 28, 5, 0, 4), training_masks(fams, 28, 28, 5, 4, 4)])
    assert torch.equal(whole, halves)  # the same masks however many ranks share the batch
    assert not torch.equal(whole, training_masks(fams, 28, 28, step=6, first_index=0, count=8))
    many = training_masks(fams, 28, 28, 0, 0, 60)
    frac = many.flatten(1).float().mean(1)
    center = make_masks("center", {}, 28, 28, ["x"])[0]
    top = make_masks("top_half", {}, 28, 28, ["x"])[0]
    n_center = sum(torch.equal(m, center) for m in many)
    n_top = sum(torch.equal(m, top) for m in many)
    n_random = 60 - n_center - n_top
    assert min(n_center, n_top, n_random) >= 10  # every family drawn
    rand = frac[[not (torch.equal(m, center) or torch.equal(m, top)) for m in many]]
    assert rand.mean().item() == pytest.approx(0.5, abs=0.03)


def test_task_masks_option_is_validated():
    assert parse_task_masks(None) == () and parse_task_masks("center, center") == ("center",)
    with pytest.raises(UserError, match="did you mean"):
        parse_task_masks("radnom")
    with pytest.raises(UserError, match="rectangle|--task-masks"):
        parse_task_masks("rectangle")


def test_task_aware_training_records_its_mask_families(tmp_path, data_root):
    from lmconv_bench.checkpoints import read_config
    from lmconv_bench.train import TrainConfig, train

    cfg = TrainConfig(preset="tiny", orders="s_curve/0,s_curve/1", task_masks="random,top_half", max_steps=3,
                      batch_size=4, eval_images=4, train_limit=64, out=str(tmp_path / "t"), data_root=str(data_root))
    last = train(cfg, progress=False)
    c = read_config(last)
    assert c.trained_task_masks == ("random", "top_half") and c.trained_orders == ("s_curve/0", "s_curve/1")
    with pytest.raises(UserError, match="any-order"):
        train(TrainConfig(model="pixelcnnpp", preset="tiny", task_masks="random", max_steps=1,
                          out=str(tmp_path / "p")), progress=False)


def test_matched_pixelcnnpp_is_within_five_percent_of_lmconv_small():
    for ds in ("mnist", "cifar10"):
        lm = sum(p.numel() for p in build_model(make_config("lmconv", "small", ds, ["s_curve/0"])).parameters())
        pc = sum(p.numel() for p in build_model(make_config("pixelcnnpp", "matched", ds, ["raster/0"])).parameters())
        assert abs(pc / lm - 1) <= 0.05


# ------------------------------------------------------------------------------ KID stderr
def test_kid_jackknife_stderr_equals_brute_force():
    from lmconv_bench.metrics.fidelity import kid_jackknife_stderr

    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(9, 5)), rng.normal(0.3, 1.0, size=(13, 5))

    def kid(g, r):
        k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
        m, n = len(g), len(r)
        kxx, kyy = k(g, g), k(r, r)
        return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                - 2 * k(g, r).mean())

    thetas = np.array([kid(np.delete(gen, i, 0), ref) for i in range(len(gen))])
    want = np.sqrt((len(gen) - 1) / len(gen) * ((thetas - thetas.mean()) ** 2).sum())
    assert kid_jackknife_stderr(gen, ref, chunk=4) == pytest.approx(want, rel=1e-10)
    assert np.isnan(kid_jackknife_stderr(gen[:2], ref))


# ------------------------------------------------------------------------------ findings
def _records_and_per_image(any_level, ens_shift, control_level, base_level, gain, n=20, seed=0):
    """Synthetic records of one task: an any-order model (2 orders + ensemble), a control and a
    baseline; per-image values at the given levels plus small noise."""
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in range(n)]
    lab_a, lab_c, lab_b = "lmconv-small [s_curve, task masks] 468k", "lmconv-small [raster/0] 468k", "pixelcnnpp-matched [raster/0] 461k"
    recs, pis = [], []

    def add(label, model, order, metric, values, n_params, context="all_observed"):
        recs.append(dict(task="t", model=model, model_label=label, n_params=n_params, order=order, metric=metric,
                         value=float(np.mean(values)), context=context, checkpoint_sha256=label))
        pis.extend(dict(task="t", model=model, model_label=label, checkpoint_sha256=label, order=order,
                        metric=metric, context=context, image_id=i, sample=0, value=float(v)) for i, v in zip(ids, values))

    noise = lambda: 0.01 * rng.standard_normal(n)  # noqa: E731
    for order, lvl in (("s_curve/0", any_level), ("s_curve/1", any_level + 0.02)):
        add(lab_a, "lmconv", order, "cond_nll_bpd", lvl + noise(), 468_000)
        add(lab_a, "lmconv", order, "lpips", 0.2 + noise(), 468_000)
    ens = any_level + ens_shift + noise()
    add(lab_a, "lmconv", "ensemble(s_curve)", "cond_nll_bpd", ens, 468_000)
    add(lab_a, "lmconv", "ensemble(s_curve)", "cond_nll_bpd", ens + gain, 468_000, context="preceding_only")
    add(lab_a, "lmconv", "ensemble(s_curve)", "context_gain_bpd", np.full(n, gain) + noise(), 468_000)
    add(lab_c, "lmconv", "raster/0", "cond_nll_bpd", control_level + noise(), 468_000, "preceding_only")
    add(lab_c, "lmconv", "raster/0", "lpips", 0.3 + noise(), 468_000, "preceding_only")
    add(lab_b, "pixelcnnpp", "raster/0", "cond_nll_bpd", base_level + noise(), 461_000, "preceding_only")
    add(lab_b, "pixelcnnpp", "raster/0", "lpips", 0.2 + noise(), 461_000, "preceding_only")
    add(lab_b, "pixelcnnpp", "raster/0", "fid", np.full(n, 50.0), 461_000, "preceding_only")
    add(lab_a, "lmconv", "s_curve/0", "fid", np.full(n, 40.0), 468_000)
    return pd.DataFrame(recs), pd.DataFrame(pis)


def test_findings_verdicts_follow_the_paired_tests():
    rec, pi = _records_and_per_image(any_level=1.0, ens_shift=-0.05, control_level=1.2, base_level=0.8, gain=0.1)
    f = build_findings(rec, pi).set_index(["claim", "metric"])
    assert f.loc[("the order ensemble beats the best single order", "cond_nll_bpd"), "verdict"] == "reproduced"
    assert f.loc[("the context gain (as is minus observed-first) is positive", "context_gain_bpd"), "verdict"] == "reproduced"
    ctl = "observed-first beats the same network trained on raster only (control)"
    assert f.loc[(ctl, "cond_nll_bpd"), "verdict"] == "reproduced"
    # completions: the mean over the any-order model's orders (0.2) against the control's 0.3
    assert f.loc[(ctl, "lpips"), "verdict"] == "reproduced"
    assert f.loc[(ctl, "lpips"), "A"].endswith("mean over orders")
    base = "beats the raster PixelCNN++ (matched)"
    assert f.loc[(base, "cond_nll_bpd"), "verdict"] == "not reproduced (reversed)"
    assert f.loc[(base, "lpips"), "verdict"] == "not reproduced (no significant difference)"
    assert f.loc[(base, "fid"), "verdict"].startswith("not testable here")
    # the ensemble is compared with the best single order, not the mean of orders
    assert "s_curve/0 (best single)" in f.loc[("the order ensemble beats the best single order", "cond_nll_bpd"), "B"]


def test_findings_without_a_control_say_not_testable():
    rec, pi = _records_and_per_image(1.0, -0.05, 1.2, 0.8, 0.1)
    keep = ~rec["model_label"].str.contains(r"\[raster/0\] 468k")
    f = build_findings(rec[keep], pi[~pi["model_label"].str.contains(r"\[raster/0\] 468k")])
    row = f[f["claim"].str.contains("control")].iloc[0]
    assert row["verdict"] == "not testable here (no control model in these records)"
