"""Checkpoint files: round trip, metadata, atomic writes, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lmconv_bench import checkpoints as C
from lmconv_bench.errors import UserError
from lmconv_bench.models.base import build_model
from lmconv_bench.configs import make_config
from lmconv_bench.orders import get_order

MODELS = ["lmconv", "pixelcnnpp"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest, and most predictably on a shared machine, on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(name: str = "lmconv", dataset: str = "mnist", seed: int = 0):
    orders = ["raster/0"] if name == "pixelcnnpp" else ["s_curve/0", "s_curve/1"]
    torch.manual_seed(seed)
    return build_model(make_config(name, "tiny", dataset, trained_orders=orders)).eval()


def _images(n: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    model = _model()
    C.save_checkpoint(path, model, {"step": 7, "metrics": {"test_bpd": 1.5}})
    return path, model


def _fresh_copy(saved, tmp_path: Path, with_sidecar: bool = True) -> Path:
    src, _ = saved
    dst = tmp_path / "copy.safetensors"
    dst.write_bytes(src.read_bytes())
    if with_sidecar:
        C.sidecar_path(dst).write_text(C.sidecar_path(src).read_text().replace(src.name, dst.name))
    return dst


# ------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("name", MODELS)
def test_round_trip_gives_identical_log_prob(tmp_path, name):
    model = _model(name, seed=3)
    # perturb the weights so a silently re-initialised model could not pass
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = C.save_checkpoint(tmp_path / "a.safetensors", model, {"step": 1})
    loaded, meta = C.load_checkpoint(path, expect_model=name, expect_dataset="mnist")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    x = _images()
    perm = get_order(model.config.trained_orders[-1], 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, perm), model.log_prob(x, perm), rtol=0, atol=0)
    assert meta["sha256"] == C.file_sha256(path)


def test_metadata_holds_config_and_provenance(saved):
    path, model = saved
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        keys = list(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys}
    assert json.loads(md["config"]) == json.loads(model.config.to_json())
    meta = json.loads(md["meta"])
    assert meta["step"] == 7 and meta["metrics"] == {"test_bpd": 1.5}
    assert meta["torch_version"] == torch.__version__
    assert {"lmconv_bench_version", "git_commit", "created"} <= set(meta)
    assert all(k.startswith(C.MODEL_PREFIX) for k in keys)
    assert {k[len(C.MODEL_PREFIX):] for k in keys} == set(model.state_dict())
    assert all(d == torch.float32 for d in dtypes if d.is_floating_point)
    assert C.read_config(path) == model.config
    assert C.read_meta(path)["step"] == 7
    digest, name = C.sidecar_path(path).read_text().split()
    assert digest == C.file_sha256(path) and name == path.name


def test_train_state_round_trip(tmp_path):
    model = _model("pixelcnnpp")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _images(2)
    perm = get_order("raster/0", 28, 28)
    for _ in range(2):
        opt.zero_grad()
        (-model.log_prob(x, perm).mean()).backward()
        opt.step()
    rng = torch.get_rng_state()
    state = {
        "raw_weights": {k: v + 1 for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "step": 2,
        "rng": {"torch_cpu": C.rng_state_to_str(rng)},
    }
    path = C.save_checkpoint(tmp_path / "last.safetensors", model, {"step": 2}, state)
    assert C.has_train_state(path)
    ts = C.load_train_state(path)
    assert ts["step"] == 2
    assert torch.equal(C.rng_state_from_str(ts["rng"]["torch_cpu"]), rng)
    for k, v in state["raw_weights"].items():
        assert torch.equal(ts["raw_weights"][k], v)
    opt2 = torch.optim.Adam(_model("pixelcnnpp", seed=9).parameters(), lr=5.0)
    opt2.load_state_dict(ts["optimizer"])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for key in a["state"][i]:
            assert torch.equal(a["state"][i][key], b["state"][i][key]), (i, key)
    # evaluation weights are unaffected by the training state
    loaded, _ = C.load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_eval_only_checkpoint_has_no_train_state(saved):
    path, _ = saved
    assert not C.has_train_state(path)
    with pytest.raises(UserError, match="no training state"):
        C.load_train_state(path)


# ------------------------------------------------------------------------------ bad input
def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        C.load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        C.read_config(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="is a directory"):
        C.load_checkpoint(tmp_path)


@pytest.mark.parametrize("with_sidecar", [True, False])
@pytest.mark.parametrize("keep", ["all_but_100_bytes", "half", "first_10_bytes", "nothing"])
def test_truncated_file(saved, tmp_path, with_sidecar, keep):
    path = _fresh_copy(saved, tmp_path, with_sidecar)
    data = path.read_bytes()
    n = {"all_but_100_bytes": len(data) - 100, "half": len(data) // 2, "first_10_bytes": 10, "nothing": 0}[keep]
    path.write_bytes(data[:n])
    with pytest.raises(UserError, match="truncated or corrupted") as e:
        C.load_checkpoint(path)
    assert "re-download or retrain" in str(e.value) and "\n" not in str(e.value)


def test_corrupted_weights_caught_by_sidecar(saved, tmp_path):
    path = _fresh_copy(saved, tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: safetensors itself cannot notice
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 sidecar"):
        C.load_checkpoint(path)
    # without verification the file still parses: the sidecar is what caught it
    C.load_checkpoint(path, verify=False)


def test_corrupted_header_without_sidecar(saved, tmp_path):
    path = _fresh_copy(saved, tmp_path, with_sidecar=False)
    data = bytearray(path.read_bytes())
    data[9:20] = b"\xff" * 11  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="truncated or corrupted"):
        C.load_checkpoint(path)


def test_dataset_and_model_mismatch(saved):
    path, _ = saved
    with pytest.raises(UserError) as e:
        C.load_checkpoint(path, expect_dataset="cifar10")
    msg = str(e.value)
    assert "is for dataset mnist (28x28x1, 8 bits) but the task uses cifar10" in msg
    assert msg.endswith("pass a cifar10 checkpoint")
    with pytest.raises(UserError, match="holds a lmconv model but pixelcnnpp was requested"):
        C.load_checkpoint(path, expect_model="pixelcnnpp")


def test_unknown_and_missing_keys(saved, tmp_path):
    path, _ = saved
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    extra = dict(tensors, **{"model.bogus.weight": torch.zeros(2)})
    save_file(extra, tmp_path / "extra.safetensors", metadata=md)
    with pytest.raises(UserError, match="unexpected model.bogus.weight|unexpected bogus.weight"):
        C.load_checkpoint(tmp_path / "extra.safetensors")
    dropped = sorted(tensors)[0]
    fewer = {k: v for k, v in tensors.items() if k != dropped}
    save_file(fewer, tmp_path / "fewer.safetensors", metadata=md)
    with pytest.raises(UserError, match="missing"):
        C.load_checkpoint(tmp_path / "fewer.safetensors")
    save_file(tensors, tmp_path / "nometa.safetensors")
    with pytest.raises(UserError, match="not an lmconv-bench checkpoint"):
        C.load_checkpoint(tmp_path / "nometa.safetensors")


# ------------------------------------------------------------------------------ atomicity
def test_failed_save_keeps_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    C.save_checkpoint(path, _model(seed=1), {"step": 1})
    before = path.read_bytes(), C.sidecar_path(path).read_bytes()

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(C, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(path, _model(seed=2), {"step": 2})
    assert (path.read_bytes(), C.sidecar_path(path).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "last.safetensors.sha256"]
    assert C.load_checkpoint(path)[1]["step"] == 1


def test_save_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "last.safetensors"
    C.save_checkpoint(path, _model(seed=1), {"step": 1})
    C.save_checkpoint(path, _model(seed=2), {"step": 2})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.safetensors", "last.safetensors.sha256"]
    assert C.read_meta(path)["step"] == 2
    C.verify_sha256(path)


def test_from_checkpoint_checks_class(saved):
    from lmconv_bench.models.base import get_model_class

    path, model = saved
    m = C.from_checkpoint(get_model_class("lmconv"), path)
    assert m.config == model.config
    with pytest.raises(UserError, match="not a PixelCNNPP"):
        C.from_checkpoint(get_model_class("pixelcnnpp"), path)
