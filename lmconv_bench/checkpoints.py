"""Checkpoints: one ``.safetensors`` file per checkpoint, plus a ``.sha256`` sidecar.

File layout
-----------
Tensors (all floating tensors stored as float32; integer buffers keep their dtype):

* ``model.<name>`` — the **evaluation** weights (for trained checkpoints: the EMA/Polyak average),
  exactly ``model.state_dict()``. This is all that :func:`load_checkpoint` reads.
* resumable checkpoints only: ``train.raw.<name>`` (the raw, non-averaged weights) and
  ``train.optim.<param index>.<key>`` (optimizer state tensors, e.g. Adam's ``exp_avg``).

Safetensors metadata (string → string; values are JSON):

* ``format``: ``"lmconv-bench-checkpoint/1"``;
* ``config``: :meth:`ModelConfig.to_json` — model, preset, dataset, shape, n_bits, head, arch,
  trained orders: everything :func:`~lmconv_bench.models.base.build_model` needs;
* ``meta``: step, epoch, metrics (e.g. ``{"test_bpd": 1.23}``) and whatever the caller adds, plus
  ``lmconv_bench_version``, ``torch_version``, ``git_commit`` (or null) and ``created`` (UTC ISO);
* resumable checkpoints only: ``train_state`` (step, epoch, scheduler state, RNG states as base64,
  best metric, data position, ...) and ``train_optim`` (the optimizer's non-tensor state:
  ``param_groups`` and scalar per-parameter entries).

The sidecar ``<file>.sha256`` holds ``"<hex digest>  <file name>"`` (``sha256sum`` format). A
file's sha256 cannot live inside the file itself, so it lives next to it; records cite
:func:`file_sha256` of the file. Loading verifies the sidecar when present.

Every write is atomic (temporary file in the same directory, fsync, ``os.replace``), so a crash
leaves the previous checkpoint intact. Every failure a user can cause (missing, truncated or
corrupted file, wrong dataset or model, keys that do not fit) raises :class:`UserError`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import UserError
from .io_utils import file_sha256  # noqa: F401  (re-exported: records cite checkpoints' sha256)
from .models.base import AutoregressiveImageModel, ModelConfig, build_model

FORMAT = "lmconv-bench-checkpoint/1"
MODEL_PREFIX = "model."
RAW_PREFIX = "train.raw."
OPTIM_PREFIX = "train.optim."
SIDECAR_SUFFIX = ".sha256"

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------ provenance
@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the lmconv_bench source tree (with ``+dirty`` if modified), or None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmconv-bench")
    except PackageNotFoundError:
        return "unknown"


def provenance() -> dict[str, Any]:
    """Version facts stored in every checkpoint's ``meta``."""
    return {
        "lmconv_bench_version": package_version(),
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------ helpers
def sidecar_path(path: PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def rng_state_to_str(state: torch.Tensor) -> str:
    """A ``torch.get_rng_state()``-style ByteTensor as base64 text (for JSON)."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def rng_state_from_str(text: str) -> torch.Tensor:
    """Inverse of :func:`rng_state_to_str`: a uint8 CPU tensor."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _fp32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu")
    if t.is_floating_point():
        t = t.to(torch.float32)
    return t.contiguous().clone()


def _json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=True)
    except TypeError as e:
        raise TypeError(f"checkpoint {what} must be JSON-serializable: {e}") from None


def _flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` → (tensors keyed ``<idx>.<key>``, JSON-able remainder)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in osd.get("state", {}).items():
        for key, val in entry.items():
            if "." in key:
                raise ValueError(f"optimizer state key {key!r} contains '.'")
            if isinstance(val, torch.Tensor):
                tensors[f"{idx}.{key}"] = val.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": osd.get("param_groups", []), "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    for idx, entry in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for g in rest.get("param_groups", []):
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": dict(sorted(state.items())), "param_groups": groups}


# ------------------------------------------------------------------------------ save
def save_checkpoint(
    path: PathLike,
    model: AutoregressiveImageModel,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (its evaluation weights) and metadata to ``path`` atomically.

    Args:
        path: target ``.safetensors`` file; parent directories are created. An existing file is
            replaced only once the new one is complete (``os.replace``).
        model: a registered model with ``.config``; ``model.state_dict()`` is saved under
            ``model.*`` in float32.
        meta: JSON-able facts (step, epoch, ``metrics``...); provenance (versions, git commit,
            creation time) is added.
        train_state: for resumable checkpoints: ``{"raw_weights": state_dict, "optimizer":
            optimizer.state_dict(), **json_fields}``. ``raw_weights`` go to ``train.raw.*``,
            optimizer tensors to ``train.optim.*``, all other (JSON-able) fields to the
            ``train_state`` metadata. :func:`load_train_state` returns the same structure.
    Returns:
        ``Path(path)``. Also writes the sidecar ``<path>.sha256``.
    """
    path = Path(path)
    config: ModelConfig = model.config
    tensors = {MODEL_PREFIX + k: _fp32(v) for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": config.to_json(),
        "meta": _json({**(meta or {}), **provenance()}, "meta"),
    }
    if train_state is not None:
        ts = dict(train_state)
        raw = ts.pop("raw_weights", None) or {}
        osd = ts.pop("optimizer", None)
        tensors.update({RAW_PREFIX + k: _fp32(v) for k, v in raw.items()})
        if osd is not None:
            otensors, orest = _flatten_optimizer(osd)
            tensors.update({OPTIM_PREFIX + k: v for k, v in otensors.items()})
            metadata["train_optim"] = _json(orest, "optimizer state")
        metadata["train_state"] = _json(ts, "train_state")

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    side = sidecar_path(path)
    side_tmp = None
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = file_sha256(tmp)
        fd2, side_tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd2, "w") as f:
            f.write(f"{digest}  {path.name}\n")
            f.flush()
            os.fsync(f.fileno())
        for t in (tmp, side_tmp):
            os.chmod(t, 0o644)  # mkstemp creates 0600 files; checkpoints are meant to be shared
        os.replace(tmp, path)
        os.replace(side_tmp, side)
    except BaseException:
        for t in (tmp, side_tmp):
            if t is not None and os.path.exists(t):
                os.unlink(t)
        raise
    return path


# ------------------------------------------------------------------------------ read
def _check_exists(path: Path) -> None:
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; check the path, or train one with `lmconv-bench train`")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; pass the .safetensors file inside it (e.g. {path}/best.safetensors)")


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"checkpoint {path} is truncated or corrupted ({why}); re-download or retrain it")


def _finish_interrupted_pair(path: Path, side: Path, digest: str) -> bool:
    """A crash between the two renames of :func:`save_checkpoint` leaves the new checkpoint beside
    the old sidecar, and the new sidecar as a temp file ``.<sidecar>.*.tmp``. If such a temp file
    holds ``digest``, complete the pair (rename it into place) and return True."""
    for cand in sorted(path.parent.glob(f".{side.name}.*.tmp")):
        parts = cand.read_text(encoding="utf-8", errors="replace").split()
        if parts and parts[0].lower() == digest:
            try:
                os.replace(cand, side)
            except OSError:
                pass  # a read-only folder: the pending sidecar still vouches for the file
            return True
    return False


def clean_stray_temps(path: PathLike) -> int:
    """Delete the temp files a killed :func:`save_checkpoint` of ``path`` may have left (the
    checkpoint's and its sidecar's); returns how many. Call only while holding the directory's
    writer lock, after the checkpoint was verified."""
    path = Path(path)
    n = 0
    for pattern in (f".{path.name}.*.tmp", f".{sidecar_path(path).name}.*.tmp"):
        for stray in path.parent.glob(pattern):
            stray.unlink(missing_ok=True)
            n += 1
    return n


def verify_sha256(path: PathLike) -> str:
    """Hex sha256 of ``path``; raises UserError if a ``.sha256`` sidecar exists and disagrees
    (after completing a checkpoint/sidecar pair that a crash interrupted, see
    :func:`_finish_interrupted_pair`)."""
    path = Path(path)
    _check_exists(path)
    digest = file_sha256(path)
    side = sidecar_path(path)
    if side.exists():
        parts = side.read_text(encoding="utf-8", errors="replace").split()
        expected = parts[0].lower() if parts else ""
        if expected != digest and not _finish_interrupted_pair(path, side, digest):
            raise UserError(
                f"checkpoint {path} does not match its sha256 sidecar {side.name} "
                f"(file {digest[:12]}…, sidecar {expected[:12] or 'empty'}…): it is truncated or corrupted; "
                "re-download or retrain it (delete the sidecar only if you replaced the file on purpose)"
            )
    return digest


def _header(path: Path) -> tuple[dict[str, str], list[str]]:
    """(metadata, tensor names) from the safetensors header; UserError if unreadable."""
    _check_exists(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except SafetensorError as e:
        raise _corrupt(path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path} ({e.strerror}); check its permissions") from None


def _json_field(path: Path, metadata: dict[str, str], key: str, required: bool = True) -> Any:
    if key not in metadata:
        if required:
            raise UserError(
                f"checkpoint {path} has no {key!r} metadata: it is not an lmconv-bench checkpoint; "
                "convert it with `lmconv-bench import-checkpoint`"
            )
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise _corrupt(path, f"bad JSON in {key!r} metadata: {e.msg}") from None


def _config_from(path: Path, metadata: dict[str, str]) -> ModelConfig:
    fmt = metadata.get("format")
    if fmt is not None and fmt != FORMAT:
        raise UserError(f"checkpoint {path} has format {fmt!r}, this lmconv-bench reads {FORMAT!r}; upgrade lmconv-bench")
    raw = _json_field(path, metadata, "config")
    if not isinstance(raw, dict):
        raise _corrupt(path, "config metadata is not a JSON object")
    try:
        return ModelConfig.from_dict(raw)
    except TypeError as e:
        raise _corrupt(path, f"bad model config: {e}") from None


def read_config(path: PathLike) -> ModelConfig:
    """The checkpoint's :class:`ModelConfig`, read from the header only (no weights, no hashing)."""
    path = Path(path)
    metadata, _ = _header(path)
    return _config_from(path, metadata)


def read_meta(path: PathLike) -> dict[str, Any]:
    """The checkpoint's ``meta`` dict (step, metrics, versions, ...), from the header only."""
    path = Path(path)
    metadata, _ = _header(path)
    _config_from(path, metadata)
    return _json_field(path, metadata, "meta", required=False) or {}


def _describe(cfg: ModelConfig) -> str:
    return f"{cfg.height}x{cfg.width}x{cfg.channels}, {cfg.n_bits} bits"


def check_config(
    path: PathLike, cfg: ModelConfig, expect_model: str | None = None, expect_dataset: str | None = None
) -> None:
    """Raise UserError if ``cfg`` (of checkpoint ``path``) is not for ``expect_model``/``expect_dataset``."""
    if expect_dataset is not None and cfg.dataset != expect_dataset:
        want = ""
        try:
            from .data import get_dataset_info

            info = get_dataset_info(expect_dataset)
            want = f" ({info.height}x{info.width}x{info.channels}, {info.n_bits} bits)"
        except UserError:
            pass
        raise UserError(
            f"checkpoint {path} is for dataset {cfg.dataset} ({_describe(cfg)}) but the task uses "
            f"{expect_dataset}{want}; pass a {expect_dataset} checkpoint"
        )
    if expect_model is not None and cfg.model != expect_model:
        raise UserError(
            f"checkpoint {path} holds a {cfg.model} model but {expect_model} was requested; "
            f"pass a {expect_model} checkpoint or --model {cfg.model}"
        )


def _read_tensors(path: Path, names: list[str], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for n in names:
                if n.startswith(prefix):
                    out[n[len(prefix):]] = f.get_tensor(n)
    except SafetensorError as e:
        raise _corrupt(path, str(e).strip().splitlines()[0]) from None
    return out


def _preview(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def state_mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """How ``state`` fails to fit ``module`` (missing / unexpected keys, first shape mismatch), or None."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    parts = []
    if missing:
        parts.append(f"missing {_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected {_preview(unexpected)}")
    if bad_shape:
        k = bad_shape[0]
        parts.append(f"shape mismatch at {k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})")
    return "; ".join(parts) or None


def non_finite_tensor(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor of ``state`` holding NaN or inf, else None."""
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None


def load_state_strict(path: Path, module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)``, turning key or shape mismatches, and NaN or inf values,
    into one UserError."""
    bad = non_finite_tensor(state)
    if bad is not None:
        raise UserError(
            f"checkpoint {path} {what} hold NaN or inf (tensor {bad}); it cannot give finite results: "
            "retrain it, or resume from an earlier checkpoint"
        )
    problem = state_mismatch(module, state)
    if problem:
        raise UserError(
            f"checkpoint {path} {what} do not fit the model its config describes ({problem}); "
            "it was written by a different lmconv-bench version or edited: retrain or re-import it"
        )
    own = module.state_dict()
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_checkpoint(
    path: PathLike,
    expect_model: str | None = None,
    expect_dataset: str | None = None,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
) -> tuple[AutoregressiveImageModel, dict[str, Any]]:
    """Rebuild the model stored at ``path`` with its evaluation weights, in eval mode.

    Args:
        expect_model / expect_dataset: registry names the checkpoint must be for (UserError if not).
        map_location: device for the returned model.
        verify: check the ``.sha256`` sidecar when one exists.
    Returns:
        ``(model, meta)``: ``model`` is built from the stored config with
        :func:`~lmconv_bench.models.base.build_model` and the ``model.*`` weights loaded strictly;
        ``meta`` is the stored ``meta`` dict plus ``"sha256"`` (hex digest of the file) and ``"path"``.
    """
    path = Path(path)
    _check_exists(path)
    digest = verify_sha256(path) if verify else file_sha256(path)
    metadata, names = _header(path)
    cfg = _config_from(path, metadata)
    check_config(path, cfg, expect_model, expect_dataset)
    meta = _json_field(path, metadata, "meta", required=False) or {}
    model = build_model(cfg)
    state = _read_tensors(path, names, MODEL_PREFIX)
    load_state_strict(path, model, state, "weights")
    model = model.to(map_location).eval()
    meta = {**meta, "sha256": digest, "path": str(path)}
    return model, meta


def load_weights(path: PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """The evaluation weights (``model.*`` tensors, prefix stripped) as a CPU state dict."""
    path = Path(path)
    if verify:
        verify_sha256(path)
    metadata, names = _header(path)
    _config_from(path, metadata)
    return _read_tensors(path, names, MODEL_PREFIX)


def has_train_state(path: PathLike) -> bool:
    """True if the checkpoint carries a resumable training state."""
    metadata, _ = _header(Path(path))
    return "train_state" in metadata


def load_train_state(path: PathLike, verify: bool = True) -> dict[str, Any]:
    """The training state saved by :func:`save_checkpoint`.

    Returns ``{"raw_weights": {name: tensor}, "optimizer": state dict for
    ``optimizer.load_state_dict`` (or None), **json_fields}``. UserError if the checkpoint has no
    training state (e.g. a ``best.safetensors``, which holds evaluation weights only).
    """
    path = Path(path)
    if verify:
        verify_sha256(path)
    metadata, names = _header(path)
    if "train_state" not in metadata:
        raise UserError(
            f"checkpoint {path} has no training state (evaluation weights only); "
            "resume from a last.safetensors written by `lmconv-bench train`"
        )
    ts = _json_field(path, metadata, "train_state")
    raw = _read_tensors(path, names, RAW_PREFIX)
    optim = None
    if "train_optim" in metadata:
        optim = _unflatten_optimizer(_read_tensors(path, names, OPTIM_PREFIX), _json_field(path, metadata, "train_optim"))
    return {**ts, "raw_weights": raw, "optimizer": optim}


def from_checkpoint(cls: type, path: PathLike, **kwargs: Any) -> AutoregressiveImageModel:
    """Body of ``AutoregressiveImageModel.from_checkpoint``: load, and check the class fits."""
    model, _ = load_checkpoint(path, **kwargs)
    if not isinstance(model, cls):
        raise UserError(
            f"checkpoint {path} holds a {model.config.model} model ({type(model).__name__}), "
            f"not a {cls.__name__}; load it with the matching class or with load_checkpoint"
        )
    return model
