"""Every bad input through the CLI entry point: exit 2, one line on stderr, no traceback, and no
file created or changed in the workspace.

Cases run in-process through ``lmconv_bench.cli.main`` (the console script's function) with a
patched ``sys.argv`` and environment, in a workspace folder that is the working directory, so
default output paths land there too. Two processes are real: two concurrent writers, and Ctrl-C.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmconv_bench import cli
from lmconv_bench.checkpoints import save_checkpoint
from lmconv_bench.models.base import build_model
from lmconv_bench.configs import make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _main(args: list[str], capsys, monkeypatch, env: dict | None = None) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["lmconv-bench", *map(str, args)])
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def _snapshot(root: Path) -> dict[str, str]:
    """Every file's sha256 (and every folder) under ``root``; writer-lock files (``.lock``, which
    hold the last holder's pid) are not data and are left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == ".lock":
            continue
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory, data_root):
    """The workspace: checkpoints (good, NaN, CIFAR, corrupt), a finished run, broken files."""
    d = tmp_path_factory.mktemp("ws")
    torch.manual_seed(0)
    good = build_model(make_config("lmconv", "tiny", "mnist", ["s_curve/0"])).eval()
    save_checkpoint(d / "good.safetensors", good, {})
    nan = build_model(make_config("lmconv", "tiny", "mnist", ["s_curve/0"])).eval()
    with torch.no_grad():
        next(nan.parameters()).view(-1)[0] = float("nan")
    save_checkpoint(d / "nan.safetensors", nan, {})
    save_checkpoint(d / "cifar.safetensors", build_model(make_config("lmconv", "tiny", "cifar10", ["s_curve/0"])), {})
    (d / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    (d / "a_file").write_text("x")
    (d / "a_dir").mkdir()
    (d / "empty_run").mkdir()
    (d / "empty_run" / "records.csv").write_bytes(b"")
    (d / "foreign_run").mkdir()
    (d / "foreign_run" / "records.csv").write_text("a,b\n1,2\n")
    (d / "bad_manifest").mkdir()
    (d / "bad_manifest" / "records.csv").write_text("task,model,order,metric,value\nt,m,o,test_bpd,1\n")
    (d / "bad_manifest" / "manifest.json").write_text("{not json")
    (d / "no_manifest").mkdir()
    (d / "no_manifest" / "records.csv").write_text("task,model,order,metric,value\nt,m,o,test_bpd,1\n")
    base = "dataset: mnist\nmetrics: [test_bpd, cond_nll_bpd]\nprofiles: {quick: {n_images: 2, fid_reference_size: 2}, full: {n_images: 2, fid_reference_size: 2}}\n"
    (d / "typo.yaml").write_text(base + "mask: {family: centre}\n")
    (d / "escape.yaml").write_text(base + "name: ../../../../tmp/x\nmask: {family: center}\n")
    (d / "empty_mask.yaml").write_text(base + "mask: {family: center, size: 0}\n")
    (d / "tiny_p.yaml").write_text(base + "mask: {family: random, p: 1.0e-7}\n")
    (d / "bad_header.csv").write_text("# lmconv-bench reference results v1\n# command: x\n# git_commit: x\n# date: x\n"
                                      "# run_config: {oops\n# checkpoints: {}\n# image_ids: {}\nrun_id\n")
    old = os.getcwd()
    os.chdir(d)
    try:
        r = subprocess.run([sys.executable, "-m", "lmconv_bench", "run", "--task", "mnist_center", "--orders", "s_curve/0",
                            "--limit", "2", "--metrics", "test_bpd", "--checkpoint", "good.safetensors", "--out",
                            "done_run", "--no-progress"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    finally:
        os.chdir(old)
    return d


RUN = ["run", "--task", "mnist_center", "--limit", "2", "--metrics", "test_bpd", "--no-progress"]
CK = ["--checkpoint", "good.safetensors"]

CASES = {
    "unknown task": (["run", "--task", "nosuch", *CK], {}, "task"),
    "misspelt task": (["run", "--task", "mnist_cente", *CK], {}, "did you mean"),
    "unknown order": ([*RUN, *CK, "--orders", "s_curv"], {}, "order"),
    "order variant out of range": ([*RUN, *CK, "--orders", "s_curve/9"], {}, "s_curve"),
    "limit zero": ([*RUN, *CK, "--limit", "0"], {}, "--limit"),
    "limit not a number": ([*RUN, *CK, "--limit", "abc"], {}, "--limit"),
    "zero samples": ([*RUN, *CK, "--samples", "0"], {}, "--samples"),
    "NaN temperature": ([*RUN, *CK, "--temperature", "nan"], {}, "--temperature"),
    "zero temperature": ([*RUN, *CK, "--temperature", "0"], {}, "--temperature"),
    "unknown sampler": ([*RUN, *CK, "--sampler", "fast"], {}, "sampler"),
    "unknown metric": ([*RUN, *CK, "--metrics", "lpipz"], {}, "metric"),
    "unknown profile": ([*RUN, *CK, "--profile", "fulll"], {}, "profile"),
    "zero batch size": ([*RUN, *CK, "--batch-size", "0"], {}, "--batch-size"),
    "missing checkpoint": ([*RUN, "--checkpoint", "missing.safetensors"], {}, "does not exist"),
    "checkpoint is a directory": ([*RUN, "--checkpoint", "a_dir"], {}, "directory"),
    "checkpoint for another dataset": ([*RUN, "--checkpoint", "cifar.safetensors"], {}, "cifar10"),
    "corrupt checkpoint": ([*RUN, "--checkpoint", "corrupt.safetensors"], {}, "corrupt"),
    "NaN weights": ([*RUN, "--checkpoint", "nan.safetensors"], {}, "NaN"),
    "out is a file": ([*RUN, *CK, "--out", "a_file"], {}, "a_file"),
    "out holds another run": ([*RUN, *CK, "--orders", "s_curve/0", "--out", "done_run", "--seed", "5"], {}, "option seed"),
    "task file typo": (["run", "--task", "typo.yaml", *CK], {}, "did you mean"),
    "task name escapes": (["run", "--task", "escape.yaml", *CK], {}, "not a safe name"),
    "mask with no missing pixel": (["run", "--task", "empty_mask.yaml", *CK, "--no-progress"], {}, "no missing pixel"),
    "random mask that misses nothing": (["run", "--task", "tiny_p.yaml", *CK, "--no-progress"], {}, "no missing pixel"),
    "device mps": ([*RUN, *CK, "--device", "mps"], {}, "mps"),
    "device cuda without CUDA": ([*RUN, *CK, "--device", "cuda"], {}, "CUDA"),
    "RANK without WORLD_SIZE": ([*RUN, *CK], {"RANK": "0"}, "WORLD_SIZE"),
    "RANK not a number": ([*RUN, *CK], {"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
    "RANK out of range": ([*RUN, *CK], {"RANK": "5", "WORLD_SIZE": "2"}, "RANK"),
    "NUL byte in a path": ([*RUN, *CK, "--out", "a\x00b"], {}, "NUL"),
    "train without a length": (["train", "--preset", "tiny"], {}, "--epochs"),
    "train negative lr": (["train", "--preset", "tiny", "--max-steps", "1", "--lr", "-1"], {}, "--lr"),
    "train unknown task mask": (["train", "--preset", "tiny", "--max-steps", "1", "--task-masks", "radnom"], {}, "did you mean"),
    "train task masks on a fixed order": (["train", "--model", "pixelcnnpp", "--preset", "tiny", "--max-steps", "1",
                                           "--task-masks", "random"], {}, "any-order"),
    "train task-mask probability": (["train", "--preset", "tiny", "--max-steps", "1", "--task-mask-prob", "2"], {}, "--task-mask-prob"),
    "train resume without checkpoint": (["train", "--preset", "tiny", "--max-steps", "1", "--resume", "--out", "nothing_here"], {}, "--resume"),
    "train unknown preset": (["train", "--preset", "hugee", "--max-steps", "1"], {}, "preset"),
    "report without records": (["report", "a_dir"], {}, "records.csv"),
    "report on an empty records.csv": (["report", "empty_run"], {}, "empty"),
    "report on a foreign records.csv": (["report", "foreign_run"], {}, "not a lmconv-bench records"),
    "report unknown format": (["report", "done_run", "--format", "latx"], {}, "did you mean"),
    "freeze without manifest": (["freeze", "no_manifest", "--out", "x.csv"], {}, "manifest"),
    "freeze with a corrupt manifest": (["freeze", "bad_manifest", "--out", "x.csv"], {}, "corrupt"),
    "freeze onto a directory": (["freeze", "done_run", "--out", "a_dir", "--force"], {}, "directory"),
    "freeze over the run's own records": (["freeze", "done_run", "--out", "done_run/records.csv", "--force"], {}, "inside the run"),
    "check with a malformed header": (["check", "--reference", "bad_header.csv"], {}, "JSON"),
    "check a missing reference": (["check", "--reference", "nope.csv"], {}, "does not exist"),
    "orders huge size": (["orders", "--size", "100000x100000"], {}, "too large"),
    "orders zero size": (["orders", "--size", "0x5"], {}, "--size"),
    "orders plot into a directory": (["orders", "--size", "4x4", "--plot", "a_dir"], {}, ".png"),
    "orders plot not a png": (["orders", "--size", "4x4", "--plot", "x.txt"], {}, ".png"),
    "sample into a directory": (["sample", "--checkpoint", "good.safetensors", "--out", "a_dir"], {}, ".png"),
    "sample from NaN weights": (["sample", "--checkpoint", "nan.safetensors", "--out", "s.png", "--n", "1"], {}, "NaN"),
    "import destination under a file": (["import-checkpoint", "good.safetensors", "a_file/x.safetensors"], {}, "a_file"),
    "import a missing file": (["import-checkpoint", "missing.pth", "x.safetensors"], {}, "missing.pth"),
    "publish an unsafe name": (["publish", "a_dir", "--name", "../x"], {}, "not a safe name|does not exist"),
    "show an unknown task": (["tasks", "--show", "nosuch"], {}, "task"),
    "unknown command": (["bogus"], {}, "bogus"),
    "models for an unknown dataset": (["models", "--datasets", "bogus", "--no-paper"], {}, "dataset"),
    "bench on mps": (["bench", "conv", "--device", "mps"], {}, "mps"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, ws, capsys, monkeypatch):
    import re

    args, env, needle = CASES[name]
    monkeypatch.chdir(ws)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    before = _snapshot(ws)
    rc, err = _main(args, capsys, monkeypatch, env)
    lines = [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  ")]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(needle, lines[0]), lines[0]
    assert _snapshot(ws) == before, "a bad input changed the workspace"


def test_at_least_forty_cases():
    assert len(CASES) >= 40


def test_stale_task_content_is_refused_not_reused(ws, capsys, monkeypatch, tmp_path):
    """Editing a task file and rerunning into the same --out must not relabel the old results."""
    monkeypatch.chdir(tmp_path)
    base = "dataset: mnist\nmetrics: [cond_nll_bpd]\nprofiles: {quick: {n_images: 2, fid_reference_size: 2}, full: {n_images: 2, fid_reference_size: 2}}\n"
    task = tmp_path / "t.yaml"
    task.write_text(base + "name: edited\nmask: {family: random, p: 0.5}\n")
    args = ["run", "--task", task, "--checkpoint", ws / "good.safetensors", "--orders", "s_curve/0", "--out", "r", "--no-progress"]
    rc, _ = _main(args, capsys, monkeypatch)
    assert rc == 0
    before = _snapshot(tmp_path / "r")
    task.write_text(base + "name: edited\nmask: {family: random, p: 0.1}\n")
    rc, err = _main(args, capsys, monkeypatch)
    assert rc == 2 and "task content" in err and "new --out" in err
    assert _snapshot(tmp_path / "r") == before


def test_crafted_cifar_pickle_runs_nothing(tmp_path, data_root):
    import pickle
    import shutil

    from lmconv_bench.data import load_split
    from lmconv_bench.errors import UserError

    src = Path(data_root) / "cifar-10-batches-py"
    dst = tmp_path / "cifar-10-batches-py"
    shutil.copytree(src, dst)
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (dst / "batches.meta").write_bytes(pickle.dumps({"label_names": [Payload()] * 10}))
    with pytest.raises(UserError, match="os.system|posix.system"):
        load_split("cifar10", "test", str(tmp_path), limit=1)
    assert not marker.exists()


def _default_sigint():
    # a test suite started in the background (`cmd &` without job control) ignores SIGINT, and
    # children inherit that: give the child the default disposition, as a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "lmconv_bench", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)


def test_two_writers_cannot_share_a_training_directory(ws, tmp_path):
    args = ["train", "--preset", "tiny", "--max-steps", "400", "--eval-images", "4", "--train-limit", "64",
            "--batch-size", "4", "--out", tmp_path / "t", "--no-progress"]
    first = _spawn(args, ws)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "t" / "train_log.jsonl").exists():
        time.sleep(0.2)
    second = subprocess.run([sys.executable, "-m", "lmconv_bench", *map(str, args)], cwd=ws, capture_output=True,
                            text=True, timeout=300)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert second.returncode == 2
    assert "another lmconv-bench process" in second.stderr or "already holds" in second.stderr \
        or "earlier run" in second.stderr, second.stderr


def test_ctrl_c_exits_130_with_the_resume_command(ws, tmp_path):
    args = ["train", "--preset", "tiny", "--max-steps", "100000", "--eval-images", "4", "--train-limit", "64",
            "--batch-size", "4", "--out", tmp_path / "t", "--no-progress"]
    p = _spawn(args, ws)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / "t" / "train_log.jsonl").exists():
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:  # never leave a training process behind when the test fails
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception, on purpose
def test_a_dropped_interrupt_still_stops_the_next_step():
    """Python drops an exception raised by the SIGINT handler while a finalizer runs; the request
    is remembered, so the loops' next `check_interrupt()` raises it again."""
    import lmconv_bench.errors as E

    class Finalized:
        def __del__(self):
            E.request_interrupt()  # as if SIGINT arrived while this finalizer ran

    try:
        E.check_interrupt()  # nothing requested: no-op
        Finalized()  # the Interrupted raised in __del__ is dropped ("Exception ignored in ...")
        with pytest.raises(E.Interrupted):
            E.check_interrupt()
    finally:
        E._INTERRUPT["requested"] = False
