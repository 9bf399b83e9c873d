"""Task files and occlusion masks."""

import subprocess
import sys

import pytest
import torch

from lmconv_bench.config import get_task, load_task_file, resolve_tasks, task_names
from lmconv_bench.data import DATASETS
from lmconv_bench.errors import UserError
from lmconv_bench.masks import FAMILIES, make_mask, make_masks


def test_every_dataset_has_every_family():
    names = set(task_names())
    assert names == {f"{d}_{f}" for d in DATASETS for f in FAMILIES}
    for name in names:
        t = get_task(name)
        assert t.name == name and t.dataset in DATASETS and t.mask_family in FAMILIES
        assert t.profiles["quick"].n_images and t.profiles["full"].n_images is None
        core = {"test_bpd", "cond_nll_bpd", "lpips", "fid", "kid"}
        pixel = {"psnr", "ssim", "l1_hole", "diversity"}  # the newer families report these too
        newer = t.mask_family in ("strokes", "lines", "super_resolution", "expand")
        assert set(t.metrics) == (core | pixel if newer else core)


def test_resolve_family_dataset_and_path(tmp_path):
    assert [t.name for t in resolve_tasks("top_half")] == ["mnist_top_half"]
    assert [t.name for t in resolve_tasks("top_half", "cifar10")] == ["cifar10_top_half"]
    assert len(resolve_tasks("center", "all")) == len(DATASETS)
    p = tmp_path / "mine.yaml"
    p.write_text(
        "dataset: cifar10\nmask: {family: rectangle, top: 1, left: 2, height: 3, width: 4}\n"
        "metrics: [test_bpd]\nprofiles: {quick: {n_images: 4, fid_reference_size: 8}, "
        "full: {n_images: null, fid_reference_size: null}}\n"
    )
    (t,) = resolve_tasks(str(p))
    assert t.name == "mine" and t.mask_params == {"top": 1, "left": 2, "height": 3, "width": 4}
    with pytest.raises(UserError, match='did you mean "mnist_top_half"'):
        resolve_tasks("mnist_top_hlf")
    with pytest.raises(UserError, match="not 'mnist'"):
        resolve_tasks("cifar10_center", "mnist")


@pytest.mark.parametrize(
    "body, match",
    [
        ("datset: mnist\n", 'unknown key \'datset\'.*did you mean "dataset"'),
        ("dataset: mnistt\nmask: {family: center}\nmetrics: [fid]\nprofiles: {}\n", 'did you mean "mnist"'),
        ("include: _mnist.yaml\nmask: {family: centre}\n", 'did you mean "center"'),
        ("include: _mnist.yaml\nmask: {family: random, pp: 0.5}\n", 'unknown parameter \'pp\'.*did you mean "p"'),
        ("include: _mnist.yaml\nmask: {family: center}\nmetrics: [lpipz]\n", 'did you mean "lpips"'),
        ("include: _mnist.yaml\nmask: {family: center}\nprofiles: {quick: {n_image: 3}}\n", "n_image"),
        ("include: _mnist.yaml\nmask: {family: rectangle, top: 1}\n", "needs parameters"),
        ("include: _mnist.yaml\nmask: {family: random, p: 1.5}\n", r"\(0, 1\)"),
        ("include: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_task_files_are_rejected_with_file_and_key(tmp_path, body, match):
    from lmconv_bench.config import tasks_dir

    p = tmp_path / "bad.yaml"
    p.write_text(body.replace("_mnist.yaml", str(tasks_dir() / "_mnist.yaml")))
    with pytest.raises(UserError, match=match) as err:
        load_task_file(p)
    assert "bad.yaml" in str(err.value) or "_mnist" in str(err.value) or "YAML" in str(err.value)


def test_mask_families_geometry():
    m = make_mask("center", {}, 28, 28)
    assert m[7:21, 7:21].all() and m.sum() == 14 * 14
    assert make_mask("top_half", {}, 28, 28)[:14].all() and make_mask("top_half", {}, 28, 28).sum() == 14 * 28
    assert make_mask("bottom_half", {}, 32, 32)[16:].all()
    assert make_mask("left_half", {}, 32, 32)[:, :16].all() and not make_mask("left_half", {}, 32, 32)[:, 16:].any()
    assert make_mask("right_half", {}, 32, 32).sum() == 512
    r = make_mask("rectangle", {"top": 2, "left": 3, "height": 4, "width": 5}, 10, 10)
    assert r[2:6, 3:8].all() and r.sum() == 20
    assert make_mask("center", {"size": 4}, 8, 8)[2:6, 2:6].all()
    with pytest.raises(UserError):
        make_mask("rectangle", {"top": 8, "left": 0, "height": 4, "width": 5}, 10, 10)


def test_random_masks_are_deterministic_per_image_id():
    ids = [str(i) for i in range(50)]
    a = make_masks("random", {"p": 0.5}, 28, 28, ids, seed=0)
    b = make_masks("random", {"p": 0.5}, 28, 28, list(reversed(ids)), seed=0).flip(0)
    assert torch.equal(a, b)  # independent of the order images are visited in
    assert torch.equal(make_mask("random", {"p": 0.5}, 28, 28, "7", seed=0), a[7])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, make_masks("random", {"p": 0.5}, 28, 28, ids, seed=1))
    assert abs(a.float().mean().item() - 0.5) < 0.02


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lmconv_bench", *args], capture_output=True, text=True)


def test_tasks_cli_lists_and_suggests():
    ok = _cli("tasks", "--json")
    assert ok.returncode == 0 and "cifar10_top_half" in ok.stdout
    show = _cli("tasks", "--show", "celeba64_random")
    assert show.returncode == 0 and "family: random" in show.stdout
    bad = _cli("tasks", "--show", "cifar10_top_hlf")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and 'did you mean "cifar10_top_half"' in bad.stderr
    assert "Traceback" not in bad.stderr
