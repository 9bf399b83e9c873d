"""End-to-end `lmconv-bench run` / `report` on real MNIST with tiny checkpoints made here.

Covers: every metric written as tidy records, ensembles and context, LaTeX/PNG report,
batch-size and process-count invariance, resume after a kill, and bad input.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lmconv_bench.checkpoints import save_checkpoint
from lmconv_bench.models.base import build_model
from lmconv_bench.configs import make_config

pytestmark = pytest.mark.slow


def _cli(*args, env=None, check=False, timeout=900):
    e = {**os.environ, **(env or {})}
    r = subprocess.run([sys.executable, "-m", "lmconv_bench", *map(str, args)], capture_output=True, text=True,
                       env=e, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"command failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_root):
    """Tiny LMConv (trained orders s_curve/0..3) and PixelCNN++ checkpoints with fixed random weights."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    lm = build_model(make_config("lmconv", "tiny", "mnist", [f"s_curve/{k}" for k in range(4)])).eval()
    torch.manual_seed(1)
    pc = build_model(make_config("pixelcnnpp", "tiny", "mnist", ["raster/0"])).eval()
    return save_checkpoint(d / "lmconv.safetensors", lm, {"step": 0}), save_checkpoint(d / "pcnn.safetensors", pc, {"step": 0})


def _records(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "records.csv").sort_values(["task", "model", "order", "metric"]).reset_index(drop=True)


def test_full_run_writes_every_metric_and_report(checkpoints, tmp_path):
    lm, pc = checkpoints
    out = tmp_path / "run"
    _cli("run", "--task", "mnist_top_half", "--orders", "s_curve", "--limit", 32, "--checkpoint", lm,
         "--checkpoint", pc, "--out", out, "--no-progress", check=True)
    df = _records(out)
    lmc = df[df.model == "lmconv"]
    assert set(lmc.metric) == {"test_bpd", "cond_nll_bpd", "context_gain_bpd", "lpips", "fid", "kid"}
    assert set(lmc.order) == {f"s_curve/{k}" for k in range(8)} | {"ensemble(s_curve)"}
    assert set(df[df.model == "pixelcnnpp"].order) == {"raster/0"}
    assert (df.n[df.metric.isin(["test_bpd", "cond_nll_bpd", "lpips"])] == 32).all()
    assert df.value.notna().all() and (df.value[~df.metric.isin(["kid", "context_gain_bpd"])] > 0).all()
    # costs counted by the code: one full pass per likelihood; the cached LMConv sampler does one
    # prefill pass plus one position per step (392 steps of 784 on the top half); the cached
    # PixelCNN++ runs every layer once on rows 0..13
    nfe = df.set_index(["model", "order", "metric", "context"]).nfe
    assert nfe[("lmconv", "s_curve/0", "test_bpd", "unconditional")] == 1.0
    assert nfe[("lmconv", "s_curve/0", "lpips", "all_observed")] == pytest.approx(1.5)
    assert nfe[("pixelcnnpp", "raster/0", "lpips", "preceding_only")] == pytest.approx(0.5)
    assert (df.wall_s > 0).all()
    # context from the order check: LMConv observed-first, raster on top_half sees only the past
    cond = lmc[lmc.metric == "cond_nll_bpd"]
    assert set(cond[cond.effective_order.str.startswith("observed_first(")].context) == {"all_observed"}
    assert set(df[(df.model == "pixelcnnpp") & (df.metric == "cond_nll_bpd")].context) == {"preceding_only"}
    assert set(lmc[lmc.order == "s_curve/5"].order_trained) == {False}
    # s_curve/1 and /3 already visit the top half last: run as they are, trained, no companion row
    for k in (1, 3):
        rows = cond[cond.order == f"s_curve/{k}"]
        assert len(rows) == 1 and rows.effective_order.iloc[0] == f"s_curve/{k}" and rows.order_trained.all()
    # s_curve/0 is reordered: its effective order was never trained (no task masks), coverage < 1,
    # and the as-is companion (preceding_only) is its trained plain order
    rows = cond[cond.order == "s_curve/0"].set_index("context")
    assert rows.loc["all_observed", "effective_order"] == "observed_first(s_curve/0)"
    assert not rows.loc["all_observed", "order_trained"] and 0 < rows.loc["all_observed", "trained_coverage"] < 1
    assert rows.loc["preceding_only", "order_trained"] and rows.loc["preceding_only", "trained_coverage"] == 1
    gain = lmc[(lmc.metric == "context_gain_bpd") & (lmc.order == "s_curve/0")].value.iloc[0]
    assert gain == pytest.approx(rows.loc["preceding_only", "value"] - rows.loc["all_observed", "value"], abs=1e-12)
    assert (df.n_params > 0).all()
    assert df[df.model == "pixelcnnpp"].model_label.str.startswith("pixelcnnpp-tiny [raster/0] ").all()
    assert lmc.model_label.str.startswith("lmconv-tiny [s_curve/0+s_curve/1+s_curve/2+s_curve/3] ").all()
    # the ensemble of test bpd is log-mean-exp of joint likelihoods: never worse than the worst order
    per = lmc[lmc.metric == "test_bpd"].set_index("order").value
    assert per["ensemble(s_curve)"] <= per.drop("ensemble(s_curve)").max() + 1e-9
    assert (df.stderr[df.metric.isin(["test_bpd", "cond_nll_bpd", "lpips"])] > 0).all()
    assert ((df.ci_low <= df.value) & (df.value <= df.ci_high))[df.metric == "cond_nll_bpd"].all()
    assert (out / "per_image.csv").exists() and (out / "comparisons.csv").exists()
    manifest = (out / "manifest.json").read_text()
    assert '"lpips"' in manifest and '"resize": 64' in manifest.replace(" ", "").replace('"resize":64', '"resize": 64')

    rep = tmp_path / "rep"
    _cli("report", out, "--format", "latex", "--out", rep, check=True)
    texs = list(rep.glob("*.tex"))
    assert texs and all(not re.search(r"(?<!\\)_", t.read_text()) for t in texs)
    grid = rep / "completions_mnist_top_half.png"
    assert grid.exists() and grid.stat().st_size > 5000
    cost = (rep / "cost.tex").read_text()  # the value beside its cost, per model and sampler
    assert "cached" in cost and "nfe" in cost and "lpips" in cost


def test_batch_size_and_process_count_do_not_change_results(checkpoints, tmp_path):
    lm, _ = checkpoints
    common = ["run", "--task", "mnist_random", "--orders", "s_curve/0,hilbert/3", "--limit", 7, "--checkpoint", lm,
              "--metrics", "test_bpd,cond_nll_bpd,lpips", "--no-progress"]
    _cli(*common, "--batch-size", 1, "--out", tmp_path / "b1", check=True)
    _cli(*common, "--batch-size", 7, "--out", tmp_path / "b7", check=True)
    r = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "lmconv_bench",
                        *map(str, [*common, "--batch-size", 3, "--out", tmp_path / "p2"])],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b, c = (_records(tmp_path / n) for n in ("b1", "b7", "p2"))
    for other in (b, c):
        # every result column; nfe and wall_s are costs that depend on batching and processes
        pd.testing.assert_frame_equal(a.drop(columns=["value", "stderr", "ci_low", "ci_high", "nfe", "wall_s"]),
                                      other.drop(columns=["value", "stderr", "ci_low", "ci_high", "nfe", "wall_s"]))
        # float32 sums differ with batching; context_gain_bpd (a difference of two such values
        # near zero) gets an absolute tolerance of 1e-7 bits/dim
        torch.testing.assert_close(torch.tensor(a.value.values), torch.tensor(other.value.values), rtol=1e-6, atol=1e-7)
    pa = pd.read_csv(tmp_path / "b1" / "per_image.csv").sort_values(["order", "metric", "image_id"])
    pc = pd.read_csv(tmp_path / "p2" / "per_image.csv").sort_values(["order", "metric", "image_id"])
    # 7 images x (2 orders + ensemble) x (test_bpd, cond_nll_bpd observed-first and as is, context
    # gain) + 7 x 2 orders x lpips
    assert len(pa) == len(pc) == 7 * 3 * 4 + 7 * 2  # no image dropped or duplicated by sharding
    assert pa.groupby(["order", "metric", "context"]).image_id.nunique().eq(7).all()


def test_interrupted_run_resumes_to_identical_records(checkpoints, tmp_path):
    lm, _ = checkpoints
    args = ["run", "--task", "mnist_center", "--orders", "s_curve/0,s_curve/1,s_curve/2", "--limit", 6,
            "--checkpoint", lm, "--metrics", "test_bpd,cond_nll_bpd,lpips", "--no-progress"]
    _cli(*args, "--out", tmp_path / "straight", check=True)
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "lmconv_bench", *map(str, args), "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(list((out / "cells").glob("*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n_before = len(list((out / "cells").glob("*.json")))
    assert 2 <= n_before < 7, "the run should have been killed midway"
    _cli(*args, "--out", out, check=True)
    pd.testing.assert_frame_equal(_records(tmp_path / "straight").drop(columns=["run_id", "wall_s"]),
                                  _records(out).drop(columns=["run_id", "wall_s"]))
    assert not list(out.rglob("*.tmp"))  # the killed run's stray temp files were cleaned up


def test_bad_input_is_one_line_and_nonzero(checkpoints, tmp_path):
    lm, _ = checkpoints
    keep = tmp_path / "keep"
    _cli("run", "--task", "mnist_center", "--orders", "s_curve/0", "--limit", 2, "--checkpoint", lm,
         "--metrics", "test_bpd", "--out", keep, "--no-progress", check=True)
    before = (keep / "records.csv").read_bytes()
    cifar = build_model(make_config("lmconv", "tiny", "cifar10", ["s_curve/0"]))
    cifar_ckpt = save_checkpoint(tmp_path / "cifar.safetensors", cifar, {})
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("dataset: mnist\nmask: {family: centre}\nmetrics: [test_bpd]\n"
                        "profiles: {quick: {n_images: 2, fid_reference_size: 2}, full: {n_images: 2, fid_reference_size: 2}}\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    cases = [
        (["--task", "mnist_centr"], 'did you mean "mnist_center"'),
        (["--task", "mnist_center", "--orders", "s_curv"], 'did you mean "s_curve"'),
        (["--task", "mnist_center", "--orders", "raster/9"], "variant"),
        (["--task", "mnist_center", "--metrics", "lpip"], 'did you mean "lpips"'),
        (["--task", "mnist_center", "--limit", "0"], "--limit"),
        (["--task", "mnist_center", "--limit", "-3"], "--limit"),
        (["--task", "mnist_center", "--checkpoint", str(cifar_ckpt)], "cifar10"),
        (["--task", "mnist_center", "--checkpoint", str(tmp_path / "nope.safetensors")], "nope.safetensors"),
        (["--task", str(bad_yaml)], 'did you mean "center"'),
        (["--task", "mnist_center", "--out", str(keep), "--seed", "5"], "different configuration"),
        (["--task", "mnist_center", "--out", str(keep / "records.csv" / "sub")], "cannot create directory"),
    ]
    if os.geteuid() != 0:  # root can write anywhere
        cases.append((["--task", "mnist_center", "--out", str(ro / "x")], "not writable"))
    for extra, msg in cases:
        args = ["run", "--checkpoint", str(lm), "--limit", "2", "--metrics", "test_bpd", "--no-progress", *extra]
        r = _cli(*args)
        assert r.returncode == 2, (extra, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (keep / "records.csv").read_bytes() == before
