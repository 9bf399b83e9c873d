"""Training: exact resume, refusal to overwrite, NaN handling, torchrun DDP, and learning on MNIST.

The fast tests train on a synthetic MNIST-shaped data set written as IDX files to a temporary
directory, so they run without the real data; the slow test trains on real MNIST.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmconv_bench import checkpoints as C
from lmconv_bench import train as T
from lmconv_bench.errors import UserError
from lmconv_bench.models import base

REPO = Path(__file__).resolve().parents[1]
MODEL = "lmconv"


def _write_idx(path: Path, data: torch.Tensor) -> None:
    magic = 0x0803 if data.dim() == 3 else 0x0801
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in data.shape)
    path.write_bytes(header + data.numpy().tobytes())


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory) -> Path:
    """A data root with MNIST-shaped IDX files (60000 + 10000 images) of blocky random shapes."""
    root = tmp_path_factory.mktemp("fake_data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for n, img_name, lbl_name in (
        (60000, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        (10000, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ):
        low = torch.randint(0, 256, (n, 7, 7), generator=g, dtype=torch.uint8)
        low[low < 160] = 0
        imgs = low.repeat_interleave(4, 1).repeat_interleave(4, 2).contiguous()
        _write_idx(raw / img_name, imgs)
        _write_idx(raw / lbl_name, torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest, and most predictably on a shared machine, on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def dropout_preset(monkeypatch) -> str:
    """A ``tiny`` variant with dropout, so that resume must reproduce the dropout noise too."""
    table = base.presets(MODEL)
    key = "dropout_prob" if "dropout_prob" in table["tiny"] else "dropout"
    monkeypatch.setitem(table, "tiny_dropout", {**table["tiny"], key: 0.3})
    return "tiny_dropout"


def _cfg(root: Path, out: Path, **kw) -> T.TrainConfig:
    args = dict(
        model=MODEL, dataset="mnist", preset="tiny", orders="s_curve/0,s_curve/3,hilbert/5",
        batch_size=4, lr=2e-3, eval_every=3, eval_images=8, eval_batch_size=8,
        train_limit=40, checkpoint_every=3, data_root=str(root), out=str(out), device="cpu",
    )
    args.update(kw)
    return T.TrainConfig(**args)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / T.LOG).read_text().splitlines()]


# ------------------------------------------------------------------------------ resume
def test_resume_is_exact(fake_mnist, tmp_path, dropout_preset):
    # 40 images / batch 4 = 10 steps per epoch: 12 steps cross an epoch boundary
    straight = T.train(_cfg(fake_mnist, tmp_path / "a", preset=dropout_preset, max_steps=12), progress=False)
    half = T.train(_cfg(fake_mnist, tmp_path / "b", preset=dropout_preset, max_steps=6), progress=False)
    assert C.read_meta(half)["step"] == 6
    resumed = T.train(
        _cfg(fake_mnist, tmp_path / "b", preset=dropout_preset, max_steps=12, resume=True), progress=False
    )
    a, b = _tensors(straight), _tensors(resumed)
    assert a.keys() == b.keys()
    assert any(k.startswith(C.RAW_PREFIX) for k in a) and any(k.startswith(C.OPTIM_PREFIX) for k in a)
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == [], differing[:5]
    # the raw weights moved away from the EMA ones, so both were really checked
    raw = {k[len(C.RAW_PREFIX):]: v for k, v in a.items() if k.startswith(C.RAW_PREFIX)}
    assert any(not torch.equal(raw[k], a[C.MODEL_PREFIX + k]) for k in raw if raw[k].is_floating_point())
    ts_a, ts_b = C.load_train_state(straight), C.load_train_state(resumed)
    assert ts_a["step"] == ts_b["step"] == 12
    assert ts_a["best_test_bpd"] == ts_b["best_test_bpd"]
    # the logs agree too (the resumed run appends to the first half's log)
    log_a, log_b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [e["step"] for e in log_a] == [e["step"] for e in log_b] == [0, 3, 6, 9, 12]
    for ea, eb in zip(log_a, log_b):
        assert ea["test_bpd"] == eb["test_bpd"] and ea["loss_bpd"] == eb["loss_bpd"]


def test_dropout_noise_matters_for_the_resume_test(fake_mnist, tmp_path, dropout_preset):
    """Different seeds give different weights: the exact match above is not vacuous."""
    a = T.train(_cfg(fake_mnist, tmp_path / "a", preset=dropout_preset, max_steps=2, eval_every=99), progress=False)
    b = T.train(
        _cfg(fake_mnist, tmp_path / "b", preset=dropout_preset, max_steps=2, eval_every=99, seed=1), progress=False
    )
    ta, tb = _tensors(a), _tensors(b)
    assert any(not torch.equal(ta[k], tb[k]) for k in ta if k.startswith(C.RAW_PREFIX))


# ------------------------------------------------------------------------------ refusals
def test_refuses_existing_out_without_resume(fake_mnist, tmp_path):
    out = tmp_path / "run"
    last = T.train(_cfg(fake_mnist, out, max_steps=2, eval_every=99), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="already holds a checkpoint .*pass --resume to continue or choose another --out"):
        T.train(_cfg(fake_mnist, out, max_steps=4), progress=False)
    with pytest.raises(UserError, match="different configuration.*orders"):
        T.train(_cfg(fake_mnist, out, max_steps=4, orders="raster", resume=True), progress=False)
    with pytest.raises(UserError, match="different configuration.*preset"):
        T.train(_cfg(fake_mnist, out, max_steps=4, preset="small", resume=True), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert last == out / T.LAST


def test_resume_without_checkpoint(fake_mnist, tmp_path):
    with pytest.raises(UserError, match="does not exist; drop --resume"):
        T.train(_cfg(fake_mnist, tmp_path / "empty", max_steps=2, resume=True), progress=False)


def test_refuses_log_of_a_run_without_checkpoint(fake_mnist, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / T.LOG).write_text('{"step": 0, "test_bpd": 3.0}\n')
    with pytest.raises(UserError, match="saved no checkpoint; choose another --out"):
        T.train(_cfg(fake_mnist, out, max_steps=2), progress=False)
    assert (out / T.LOG).read_text() == '{"step": 0, "test_bpd": 3.0}\n'


def test_bad_options(fake_mnist, tmp_path):
    with pytest.raises(UserError, match="--epochs N or --max-steps N"):
        T.train(_cfg(fake_mnist, tmp_path / "x"), progress=False)
    with pytest.raises(UserError, match="fixed order raster/0 only"):
        T.train(_cfg(fake_mnist, tmp_path / "x", model="pixelcnnpp", orders="s_curve", max_steps=1), progress=False)
    with pytest.raises(UserError, match="unknown preset"):
        T.train(_cfg(fake_mnist, tmp_path / "x", preset="huge", max_steps=1), progress=False)
    with pytest.raises(UserError, match="unknown order"):
        T.train(_cfg(fake_mnist, tmp_path / "x", orders="zigzag", max_steps=1), progress=False)
    with pytest.raises(UserError, match="fewer than one global batch"):
        T.train(_cfg(fake_mnist, tmp_path / "x", train_limit=3, max_steps=1), progress=False)
    with pytest.raises(UserError, match="--lr must be a positive number"):
        T.train(_cfg(fake_mnist, tmp_path / "x", lr=-1.0, max_steps=1), progress=False)
    assert T.resolve_orders(_cfg(fake_mnist, tmp_path, model="pixelcnnpp", orders=None), 28, 28) == ["raster/0"]
    assert T.resolve_orders(_cfg(fake_mnist, tmp_path, orders=None), 28, 28)[:2] == ["s_curve/0", "s_curve/1"]


# ------------------------------------------------------------------------------ NaN
def test_nan_loss_keeps_last_good_checkpoint(fake_mnist, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = T.batch_loss_bpd

    def nan_on_fifth_call(net, model, x, perm):
        calls["n"] += 1
        loss = real(net, model, x, perm)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(T, "batch_loss_bpd", nan_on_fifth_call)
    out = tmp_path / "nan"
    with pytest.raises(UserError) as e:
        T.train(_cfg(fake_mnist, out, max_steps=8), progress=False)
    msg = str(e.value)
    assert "loss became NaN at step 4" in msg and f"kept at {out / T.LAST} (step 3)" in msg and "lower --lr" in msg
    ts = C.load_train_state(out / T.LAST)
    assert ts["step"] == 3
    assert C.verify_sha256(out / T.LAST)
    assert all(torch.isfinite(v).all() for v in _tensors(out / T.LAST).values() if v.is_floating_point())
    monkeypatch.setattr(T, "batch_loss_bpd", real)
    # the kept checkpoint resumes (with a lower lr: allowed, with a warning that it is not exact)
    with pytest.warns(UserWarning, match=r"changed lr 0.002 -> 0.001"):
        T.train(_cfg(fake_mnist, out, max_steps=5, lr=1e-3, resume=True), progress=False)
    assert C.read_meta(out / T.LAST)["step"] == 5


# ------------------------------------------------------------------------------ torchrun
def _cli_has_train() -> bool:
    try:
        from lmconv_bench.cli import app
    except Exception:
        return False
    return any((c.name or getattr(c.callback, "__name__", "")) in ("train", "train_cmd") for c in app.registered_commands)


@pytest.mark.timeout(600)
def test_torchrun_two_cpu_ranks_agree(fake_mnist, tmp_path):
    out = tmp_path / "ddp"
    entry = ["-m", "lmconv_bench", "train"] if _cli_has_train() else ["-m", "lmconv_bench.train"]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *entry,
        "--model", MODEL, "--dataset", "mnist", "--preset", "tiny", "--orders", "s_curve/0,hilbert/2",
        "--max-steps", "4", "--batch-size", "3", "--train-limit", "24", "--eval-every", "2",
        "--eval-images", "5", "--checkpoint-every", "2", "--lr", "0.002", "--device", "cpu",
        "--data-root", str(fake_mnist), "--out", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = C.read_meta(out / T.LAST)
    assert meta["world_size"] == 2 and meta["step"] == 4
    # each rank hashed its own raw weights after the last step; rank 0 gathered them
    hashes = meta["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    # ... and they are the raw weights rank 0 saved
    raw = {k[len(C.RAW_PREFIX):]: v for k, v in _tensors(out / T.LAST).items() if k.startswith(C.RAW_PREFIX)}
    model, _ = C.load_checkpoint(out / T.LAST)
    model.load_state_dict(raw)
    assert T.state_sha256(model) == hashes[0]
    assert [e["step"] for e in _log(out)] == [0, 2, 4]
    assert len(list(out.glob("*.tmp"))) == 0


_HELPERS_SCRIPT = """
import json, sys, torch
from lmconv_bench import distributed as D
with D.distributed("cpu") as ctx:
    r, w = ctx.rank, ctx.world_size
    parts = D.all_gather_tensors(torch.arange(r + 1, dtype=torch.float64) + 10 * r)
    objs = D.all_gather_object({"rank": r, "ids": list(D.shard_indices(5))})
    total = D.all_reduce_sum(torch.tensor([float(r + 1)]))
    b = D.broadcast_object("from rank 0" if r == 0 else None)
    D.barrier()
    out = {"rank": r, "world": w, "main": D.is_main(), "parts": [p.tolist() for p in parts],
           "objs": objs, "total": total.item(), "b": b}
    open(sys.argv[1] + f".{r}.json", "w").write(json.dumps(out))
"""


@pytest.mark.timeout(300)
def test_distributed_helpers_under_torchrun(tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(_HELPERS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(script), str(tmp_path / "res")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = [json.loads((tmp_path / f"res.{r}.json").read_text()) for r in range(2)]
    for r, out in enumerate(res):
        assert out["rank"] == r and out["world"] == 2 and out["main"] == (r == 0)
        assert out["parts"] == [[0.0], [10.0, 11.0]]  # different lengths per rank, no padding left
        assert out["objs"] == [{"rank": 0, "ids": [0, 2, 4]}, {"rank": 1, "ids": [1, 3]}]
        assert out["total"] == 3.0 and out["b"] == "from rank 0"


def test_distributed_helpers_single_process():
    from lmconv_bench import distributed as D

    assert (D.rank(), D.world_size(), D.is_main()) == (0, 1, True)
    t = torch.arange(3)
    assert [x.tolist() for x in D.all_gather_tensors(t)] == [[0, 1, 2]]
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    assert list(D.shard_indices(4)) == [0, 1, 2, 3]
    assert D.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device"):
        D.resolve_device("gpu0")


# ------------------------------------------------------------------------------ learning
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_lmconv_learns_mnist(data_root, tmp_path):
    """Real MNIST, tiny LMConv, a few hundred steps: test bits/dim must fall clearly."""
    t0 = time.perf_counter()
    cfg = T.TrainConfig(
        model="lmconv", dataset="mnist", preset="tiny", orders="s_curve", max_steps=200, batch_size=16,
        lr=2e-3, eval_every=100, eval_images=128, eval_batch_size=64, checkpoint_every=200,
        data_root=str(data_root), out=str(tmp_path / "mnist"), device="cpu",
    )
    last = T.train(cfg, progress=False)
    log = _log(tmp_path / "mnist")
    first, final = log[0]["test_bpd"], log[-1]["test_bpd"]
    elapsed = time.perf_counter() - t0
    print(f"\ntiny lmconv on MNIST: test bpd {first:.3f} -> {final:.3f} in {cfg.max_steps} steps, {elapsed:.0f} s")
    assert log[0]["step"] == 0 and log[-1]["step"] == cfg.max_steps
    assert math.isfinite(final) and final < first - 1.0 and final < 0.75 * first
    best = C.load_checkpoint(tmp_path / "mnist" / T.BEST, expect_dataset="mnist")[1]
    assert best["metrics"]["test_bpd"] == min(e["test_bpd"] for e in log)
    assert C.read_meta(last)["metrics"]["test_bpd"] == final
