"""Independent shards (`run --shard I/N`) and `merge`: the merged records equal an unsharded run's,
a killed shard resumes, a missing shard is named, and one shard has one writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from lmconv_bench.checkpoints import save_checkpoint
from lmconv_bench.models.base import build_model
from lmconv_bench.configs import make_config

pytestmark = pytest.mark.slow


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lmconv_bench", *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_root):
    torch.manual_seed(0)
    model = build_model(make_config("lmconv", "tiny", "mnist", [f"s_curve/{k}" for k in range(8)])).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "lm.safetensors", model, {})


def _args(ckpt, out, *extra):
    return ["run", "--task", "mnist_random", "--orders", "s_curve/0,s_curve/5", "--limit", 7, "--checkpoint", ckpt,
            "--metrics", "test_bpd,cond_nll_bpd,lpips,fid,kid", "--samples", 2, "--batch-size", 1, "--out", out,
            "--no-progress", *extra]


def _sorted(df: pd.DataFrame, keys) -> pd.DataFrame:
    return df.sort_values(keys).reset_index(drop=True)


def test_three_shards_one_killed_merge_to_the_unsharded_records(ckpt, tmp_path):
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    assert _cli(*_args(ckpt, full)).returncode == 0
    assert _cli(*_args(ckpt, sharded, "--shard", "0/3")).returncode == 0
    # shard 1: killed once it has written a part, then started again
    p = subprocess.Popen([sys.executable, "-m", "lmconv_bench", *map(str, _args(ckpt, sharded, "--shard", "1/3"))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list(sharded.glob("shards/*/1-of-3.npz")):
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert list(sharded.glob("shards/*/1-of-3.npz")), "shard 1 should have written a part before the kill"
    assert _cli(*_args(ckpt, sharded, "--shard", "1/3")).returncode == 0
    # shard 2 has not run: merge names it and writes nothing
    early = _cli("merge", sharded, "--no-progress")
    assert early.returncode == 2 and "shard 2/3" in early.stderr and early.stderr.count("\n") == 1
    assert not (sharded / "records.csv").exists()
    assert _cli(*_args(ckpt, sharded, "--shard", "2/3")).returncode == 0
    merged = _cli("merge", sharded, "--no-progress")
    assert merged.returncode == 0, merged.stderr

    keys = ["task", "model_label", "order", "metric", "context"]
    a = _sorted(pd.read_csv(full / "records.csv"), keys)
    b = _sorted(pd.read_csv(sharded / "records.csv"), keys)
    assert len(a) == len(b) and set(a.metric) >= {"test_bpd", "cond_nll_bpd", "context_gain_bpd", "lpips", "fid", "kid"}
    # costs (nfe: the sampler steps a batch through the union of its images' missing pixels;
    # wall_s) depend on how the images were split; every result column must agree
    pd.testing.assert_frame_equal(a.drop(columns=["value", "stderr", "ci_low", "ci_high", "nfe", "wall_s"]),
                                  b.drop(columns=["value", "stderr", "ci_low", "ci_high", "nfe", "wall_s"]))
    for col in ("value", "stderr"):
        np.testing.assert_allclose(b[col].to_numpy(float), a[col].to_numpy(float), rtol=1e-9, atol=0)
    pkeys = ["task", "order", "metric", "context", "image_id", "sample"]
    pa = _sorted(pd.read_csv(full / "per_image.csv"), pkeys)
    pb = _sorted(pd.read_csv(sharded / "per_image.csv"), pkeys)
    assert len(pa) == len(pb) and (pa["value"].to_numpy() == pb["value"].to_numpy()).all()  # bit-identical
    assert pb.groupby(["order", "metric", "context", "sample"]).image_id.nunique().eq(7).all()
    # FID/KID over the union of the shards' completions, not a mean of per-shard values
    fid = b[b.metric == "fid"].set_index("order").value
    assert (fid == a[a.metric == "fid"].set_index("order").value).all()
    assert (sharded / "comparisons.csv").exists() and "image_ids" in (sharded / "manifest.json").read_text()


def test_one_shard_has_one_writer(ckpt, tmp_path):
    out = tmp_path / "r"
    args = _args(ckpt, out, "--shard", "0/2")
    p = subprocess.Popen([sys.executable, "-m", "lmconv_bench", *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (out / ".lock-shard-0-of-2").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    second = _cli(*args)
    other_shard_ok = None
    if p.poll() is None:
        other_shard_ok = _cli(*_args(ckpt, out, "--shard", "1/2"))  # another shard may run beside it
    p.wait(timeout=600)
    if p.returncode == 0 and second.returncode == 0:
        pytest.skip("the first shard finished before the second started; nothing overlapped")
    assert second.returncode == 2 and "another lmconv-bench process" in second.stderr
    assert other_shard_ok is None or other_shard_ok.returncode == 0


def test_bad_shard_spec_is_one_line():
    r = _cli("run", "--task", "mnist_center", "--shard", "3/3")
    assert r.returncode == 2 and "--shard" in r.stderr and r.stderr.count("\n") == 1
