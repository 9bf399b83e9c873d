"""`lmconv-bench freeze` / `check`: reference CSVs and the regression check on checkpoints.

The end-to-end test uses a committed reference checkpoint: it freezes a small run, checks that
the unchanged checkpoint passes, then perturbs one weight and checks that `check` fails and
names the drifting cells.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lmconv_bench.check import TOLERANCES, compare, parse_tolerances, read_reference
from lmconv_bench.checkpoints import load_checkpoint, read_meta, save_checkpoint
from lmconv_bench.errors import UserError
from lmconv_bench.reference import reference_checkpoints


def _cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "lmconv_bench", *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ), timeout=timeout)


def _frame(values: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame([{"task": "t", "model": "lmconv", "model_label": "lmconv-small [s_curve] 468k", "order": o,
                          "metric": m, "context": "all_observed", "value": v} for (o, m), v in values.items()])


def test_compare_applies_per_metric_tolerances_and_fails_missing_cells():
    exp = _frame({("a", "test_bpd"): 1.0, ("a", "lpips"): 0.2, ("a", "fid"): 100.0, ("b", "test_bpd"): 1.0})
    got = _frame({("a", "test_bpd"): 1.0 + 0.9e-3, ("a", "lpips"): 0.2 + 0.03, ("a", "fid"): 104.0})
    t = compare(exp, got, TOLERANCES).set_index(["order", "metric"])
    assert bool(t.loc[("a", "test_bpd"), "ok"])  # 0.9e-3 <= 1e-3 bits/dim
    assert not bool(t.loc[("a", "lpips"), "ok"])  # 0.03 > 0.02
    assert bool(t.loc[("a", "fid"), "ok"])  # 4 <= 5% of 100
    assert t.loc[("a", "fid"), "tolerance"] == pytest.approx(5.0)
    assert not bool(t.loc[("b", "test_bpd"), "ok"]) and math.isnan(t.loc[("b", "test_bpd"), "obtained"])
    # a non-finite obtained value never passes
    t2 = compare(exp.iloc[:1], _frame({("a", "test_bpd"): float("nan")}), TOLERANCES)
    assert not t2["ok"].any()


def test_parse_tolerances_overrides_and_rejects_bad_items():
    tol = parse_tolerances(["lpips=0.05", "fid=2:0.1"])
    assert tol["lpips"] == (0.05, 0.0) and tol["fid"] == (2.0, 0.1) and tol["test_bpd"] == TOLERANCES["test_bpd"]
    with pytest.raises(UserError, match="did you mean"):
        parse_tolerances(["lpip=0.1"])
    with pytest.raises(UserError, match="METRIC=ABS"):
        parse_tolerances(["lpips=-1"])


def test_read_reference_rejects_other_csv(tmp_path):
    p = tmp_path / "records.csv"
    p.write_text("task,value\nx,1\n")
    with pytest.raises(UserError, match="not a lmconv-bench reference CSV"):
        read_reference(p)
    r = _cli("check", "--reference", p)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "freeze" in r.stderr
    r = _cli("check", "--reference", tmp_path / "nope.csv")
    assert r.returncode == 2 and "does not exist" in r.stderr


def _reference_lmconv() -> Path:
    refs = [p for p in reference_checkpoints("mnist") if p.name == "lmconv-mnist-small.safetensors"]
    assert refs, "the MNIST LMConv reference checkpoint must be committed under results/checkpoints/reference/"
    return refs[0]


@pytest.mark.slow
def test_check_passes_on_reference_and_fails_when_one_weight_is_perturbed(tmp_path, data_root):
    lm = _reference_lmconv()
    run_dir, csv = tmp_path / "run", tmp_path / "ref.csv"
    r = _cli("run", "--task", "mnist_top_half", "--orders", "s_curve/0,center_last/0", "--limit", 6,
             "--metrics", "test_bpd,cond_nll_bpd", "--checkpoint", lm, "--out", run_dir, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert _cli("freeze", run_dir, "--out", csv).returncode == 0
    ref = read_reference(csv)
    assert ref.image_ids["mnist_top_half"] == [str(i) for i in range(6)]
    assert "lmconv-bench run" in ref.command and ref.git_commit and ref.date
    assert set(ref.records.order) == {"s_curve/0", "center_last/0", "ensemble(s_curve/0,center_last/0)"}
    before = csv.read_text()
    again = _cli("freeze", run_dir, "--out", csv)
    assert again.returncode == 2 and "--force" in again.stderr and csv.read_text() == before

    # per order and the ensemble: test_bpd, observed-first cond_nll_bpd, its as-is companion, context gain
    assert len(ref.records) == 12 and set(ref.records.context) == {"unconditional", "all_observed", "preceding_only"}
    ok = _cli("check", "--reference", csv, "--no-progress")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok: all 12 cells within tolerance" in ok.stdout

    model, _ = load_checkpoint(lm)
    with torch.no_grad():
        w = next(p for n, p in model.named_parameters() if p.dim() == 4)
        w.view(-1)[0] += 0.5
    bad = save_checkpoint(tmp_path / "perturbed.safetensors", model, read_meta(lm))
    drift = _cli("check", "--reference", csv, "--checkpoint", bad, "--no-progress", "--json")
    assert drift.returncode == 1, drift.stdout + drift.stderr
    import json

    report = json.loads(drift.stdout.strip().splitlines()[-1])
    cells = report["files"][str(csv)]
    assert report["ok"] is False and len(cells) == 12
    assert {(c["order"], c["metric"]) for c in cells if not c["ok"]} >= {("s_curve/0", "test_bpd")}
    assert "DRIFT" in drift.stdout and "FAILED:" in drift.stdout
    verdict_line = next(line for line in drift.stdout.splitlines() if "FAILED:" in line)
    assert "mnist_top_half lmconv-small [" in verdict_line and "s_curve/0 test_bpd [unconditional]" in verdict_line


def test_publish_writes_weights_and_a_card_with_independently_checked_bpd(tmp_path, data_root, monkeypatch):
    from lmconv_bench import orders as O
    from lmconv_bench.data import load_split
    from lmconv_bench.io_utils import file_sha256
    from lmconv_bench.models.base import build_model
    from lmconv_bench.configs import make_config
    from lmconv_bench.publish import publish

    src, ref_dir = tmp_path / "train", tmp_path / "reference"
    torch.manual_seed(0)
    model = build_model(make_config("lmconv", "tiny", "mnist", ["s_curve/0", "s_curve/1"])).eval()
    save_checkpoint(src / "last.safetensors", model, {"step": 7, "epoch": 0.5, "world_size": 1,
                                                     "train_config": {"model": "lmconv", "dataset": "mnist", "preset": "tiny",
                                                                      "orders": "s_curve/0,s_curve/1", "batch_size": 16}})
    monkeypatch.setenv("LMCONV_BENCH_REFERENCE_DIR", str(ref_dir))
    card = publish(src, "lm-tiny", eval_images=5, data_root=str(data_root))
    text = card.read_text()
    ckpt = ref_dir / "lm-tiny.safetensors"
    assert f"sha256 `{file_sha256(ckpt)}`" in text and "CC BY-SA 3.0" in text
    assert "--orders s_curve/0,s_curve/1 --preset tiny" in text and "Steps:** 7 at batch 16" in text
    # the card's bits/dim, recomputed independently from the raw log-probs
    x = load_split("mnist", "test", data_root, limit=5).images
    bpd = -model.log_prob(x, O.get_order("s_curve/0", 28, 28)).double().flatten(1).sum(1) / (784 * math.log(2))
    assert f"**Test bits/dim:** {bpd.mean().item():.4f} ± {bpd.std().item() / math.sqrt(5):.4f}" in text
    loaded, meta = load_checkpoint(ckpt)
    assert meta["metrics"]["test_bpd"] == pytest.approx(bpd.mean().item(), rel=1e-9)
    assert torch.equal(loaded.log_prob(x[:1], O.get_order("s_curve/0", 28, 28)), model.log_prob(x[:1], O.get_order("s_curve/0", 28, 28)))
    with pytest.raises(UserError, match="--force"):
        publish(src, "lm-tiny", eval_images=5, data_root=str(data_root))


@pytest.mark.slow
def test_run_without_checkpoint_uses_the_reference_checkpoints(tmp_path, data_root):
    from lmconv_bench.checkpoints import read_config

    refs = reference_checkpoints("mnist")
    assert {read_config(p).model for p in refs} == {"lmconv", "pixelcnnpp"}
    out = tmp_path / "run"
    r = _cli("run", "--task", "top_half", "--orders", "s_curve/0", "--limit", 2, "--metrics", "test_bpd",
             "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out / "records.csv")
    # the any-order LMConv under the asked order; the raster-only control and the raster PixelCNN++
    # under their own order
    got = {(lab.split(" ")[0] + (" control" if "[raster/0]" in lab and m == "lmconv" else ""), o)
           for lab, m, o in zip(df.model_label, df.model, df.order)}
    assert got == {("lmconv-small", "s_curve/0"), ("lmconv-small control", "raster/0"), ("pixelcnnpp-matched", "raster/0")}
    assert set(df.task) == {"mnist_top_half"} and (df.n == 2).all()
    import json

    used = json.loads((out / "manifest.json").read_text())["checkpoints"]
    assert sorted(Path(p).resolve() for p in used) == sorted(p.resolve() for p in refs)


def test_run_without_checkpoint_or_reference_names_the_fix(tmp_path, data_root):
    env_dir = tmp_path / "empty"
    env_dir.mkdir()
    r = subprocess.run([sys.executable, "-m", "lmconv_bench", "run", "--task", "mnist_center", "--limit", "2",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True,
                       env={**os.environ, "LMCONV_BENCH_REFERENCE_DIR": str(env_dir)}, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "no reference checkpoint for mnist" in r.stderr and "--checkpoint PATH" in r.stderr
    assert not (tmp_path / "run").exists()
