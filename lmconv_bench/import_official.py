"""Import checkpoints of the LMConv paper's released code (github ajayjain/lmconv) into this format.

``lmconv-bench import-checkpoint SRC DST --format lmconv-official [--ema] [--dataset D]`` calls
:func:`import_checkpoint`, which reads a ``.pth`` file written by the official ``main.py`` and
writes an lmconv-bench ``.safetensors`` checkpoint (:func:`~lmconv_bench.checkpoints.save_checkpoint`)
whose model is :class:`~lmconv_bench.models.lmconv.LMConv` with the same weights. Our module and
parameter names are the official ``OurPixelCNN`` state-dict names (see the table in
``models/lmconv.py``), so the weights are copied one to one, without any transformation; the
imported model computes the official network's function.

Accepted files (``torch.load`` of SRC)
--------------------------------------
* The dict that ``main.py`` saves: ``{"epoch", "global_step", "args", "model_state_dict",
  "optimizer_state_dict", "ema_state_dict", "test_loss_<obs>", ...}`` (``args`` is
  ``vars(args)``, a plain dict; an ``argparse.Namespace`` is accepted too). Checkpoints written by
  ``average_checkpoints.py`` have the same layout. ``model_state_dict`` is imported, or
  ``ema_state_dict`` with ``ema=True``.
* A bare ``OurPixelCNN`` state dict (name → tensor), with or without ``DataParallel``'s
  ``module.`` prefix. It records no dataset, orders or normalization: pass ``dataset``.

Loading and pickle safety: SRC is read with ``torch.load(SRC, map_location="cpu",
weights_only=True)``, with an allowlist of the few non-tensor types those files hold
(``argparse.Namespace``; numpy scalars and dtypes, which appear as the ``test_loss_*`` floats).
That loader never executes code from the file. A file that needs anything else is refused with a
:class:`UserError` naming it; ``trust_pickle=True`` (CLI ``--trust-pickle``) then loads it with
``weights_only=False``, which **executes arbitrary code stored in the pickle**: use it only for
files from a source you trust.

What is inferred, and from where
--------------------------------
From the tensors (they always win):

* ``nr_filters`` F, input channels C and kernel size k: ``u_init`` weight ``[F, C+1, k, k]``
  (the official default is k = 5; the README's models use ``-k 3``);
* ``nr_resnet``: the number of gated resnets in ``up_layers.0.u_stream``;
* the head: ``nin_out`` has ``n`` outputs: 2 with C = 1 is the binarized-MNIST softmax head
  (``"bernoulli2"``); otherwise a logistic mixture with ``K = n / 10`` (C = 3) or ``n / 3``
  (C = 1) components;
* ``weight_norm``: LMConv layers stored as ``weight_g`` / ``weight_v``; ``conv_bias``: whether
  they have a ``bias`` (``--no_bias``).

From the saved ``args`` (when present): ``normalization`` (``pono`` or ``none``; PONO has no
parameters, so the tensors cannot tell it from ``none``), ``max_dilation`` (the dilation does
not change any shape; official default 2), ``dropout_prob`` (training only), the dataset and the
trained orders. Without ``args``, normalization defaults to ``pono`` (every released model uses
it) and ``max_dilation`` to 2; the returned notes say so, and ``normalization=`` overrides.
Values in ``args`` that contradict the tensors (``nr_filters``, ``nr_resnet``, ``kernel_size``,
``nr_logistic_mix``, ``binarize``, ``normalization``) are refused as a damaged or edited file.

Dataset (``args.dataset``, ``args.binarize``, ``args.celeba_size``, ``args.n_bits``):
``cifar`` → ``cifar10``; ``mnist`` → ``mnist`` (``mnist_binary`` with ``--binarize``);
``celebahq`` at 64×64 / 5 bits → ``celeba64`` (at 32×32 / 8 bits → ``celeba32``). An explicit
``dataset`` overrides it, after a check that its channels and bit depth fit the model.

Trained orders (``args.order``, a name or a list of names; ``randomize_order``;
``base_order_transpose`` / ``base_order_reflect_rows`` / ``base_order_reflect_cols``;
``order_variants``; ``train_masks``), rebuilt exactly as ``main.py`` builds its list of training
orders. Official names map to ours: ``raster_scan`` → ``raster``, ``s_curve`` → ``s_curve``,
``hilbert`` → ``hilbert``, ``s_curve_center_quarter_last`` → ``center_last``, and
``gilbert2d`` → the **transpose** of our ``hilbert``: the official ``gilbert2d`` generator yields
``(x, y)`` = (column, row) pairs, but the official mask code reads each pair as ``(row, col)``,
so its base sequence is our ``hilbert/4``, and its ``randomize_order`` list position ``i`` is our
``hilbert/(i XOR 4)`` (:data:`TRANSPOSED_ORDERS`). The official ``hilbert`` (the ``hilbertcurve``
package, power-of-two sizes only) was checked against our ``hilbert`` on 8×8 … 64×64 with an own
implementation of Skilling's algorithm, which that package uses.

Not supported (refused with a UserError): PixelCNN++ checkpoints trained without ``--ours``;
``--learn_weight_for_masks`` (``mask_weight`` tensors); ``instance_norm(_affine)`` and
``order_rescale`` normalization.

Known differences from the official evaluation (listed in the returned notes where they apply):

* 5-bit data (celeba64): the official likelihood hard-codes ``log(127.5)`` in the rare mid-bin
  fallback; ours uses ``log((2**n_bits - 1) / 2)`` (see ``models/likelihood.py``).
* The official CelebA model was trained on CelebA-HQ; our ``celeba32``/``celeba64`` are CelebA
  aligned-and-cropped images, so its numbers there are not the paper's.
* ``mnist_binary``: the official code re-binarizes MNIST randomly at every load; ours draws the
  binarization once per image id.
* ``ema_state_dict``: in the official ``EMA`` class ``update`` returns inside its loop (only the
  first tensor is ever averaged) and weighs the *new* value by ``mu``; its ``ema_state_dict`` is
  therefore not a usable average. ``--ema`` imports it as stored; the README's evaluation commands
  use ``model_state_dict`` (the default here).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoints import file_sha256, non_finite_tensor, save_checkpoint, state_mismatch
from .errors import UserError, unknown
from .models.base import ModelConfig
from .models.likelihood import n_params as head_n_params

FORMATS = ("lmconv-official",)
"""Formats :func:`import_checkpoint` accepts (the CLI's ``--format``)."""

ORDER_NAMES = {
    "raster_scan": "raster",
    "s_curve": "s_curve",
    "gilbert2d": "hilbert",
    "hilbert": "hilbert",
    "s_curve_center_quarter_last": "center_last",
}
"""Official ``--order`` names → our base order names."""

TRANSPOSED_ORDERS = frozenset({"gilbert2d"})
"""Official orders whose base sequence, as the official mask code reads it, is the transpose of
our base order of the same construction (variant 4 before any ``base_order_*`` flag)."""

OFFICIAL_DEFAULTS: dict[str, Any] = {
    "kernel_size": 5,
    "max_dilation": 2,
    "dropout_prob": 0.5,
    "normalization": "weight_norm",
    "n_bits": 8,
    "celeba_size": 256,
    "binarize": False,
}
"""Defaults of the official ``main.py`` argparse options, for ``args`` that lack a key (older
versions of the code had fewer options)."""

MODEL_KEY, EMA_KEY = "model_state_dict", "ema_state_dict"


def _arg(args: Mapping[str, Any], key: str) -> Any:
    """``args[key]``, or the official default when it is absent or None."""
    value = args.get(key)
    return OFFICIAL_DEFAULTS.get(key) if value is None else value


_MODULE_PREFIX = "module."


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_checkpoint` wrote.

    Attributes:
        dst: the written ``.safetensors`` file (with its ``.sha256`` sidecar).
        config: the :class:`ModelConfig` stored in it.
        source_sha256: hex sha256 of SRC.
        weights: which tensors were imported: ``"model_state_dict"``, ``"ema_state_dict"`` or
            ``"state dict"`` (a bare state dict).
        notes: one-line remarks on assumptions and known differences (may be empty).
    """

    dst: Path
    config: ModelConfig
    source_sha256: str
    weights: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> list[str]:
        """Human-readable lines for the CLI."""
        c, a = self.config, self.config.arch
        lines = [
            f"wrote {self.dst} ({self.weights} of the official checkpoint, sha256 {self.source_sha256[:12]}…)",
            f"dataset {c.dataset} ({c.channels}x{c.height}x{c.width}, {c.n_bits} bits), head {c.head}, preset {c.preset}",
            "arch " + ", ".join(f"{k}={a[k]}" for k in sorted(a)),
            "trained orders " + (", ".join(c.trained_orders) if c.trained_orders else "unknown (the file does not record them)"),
        ]
        return lines + [f"note: {n}" for n in self.notes]


# ------------------------------------------------------------------------------------- loading
def _safe_globals() -> list[Any]:
    """Non-tensor types the official files hold, for ``torch.load(weights_only=True)``."""
    import numpy as np

    allowed: list[Any] = [argparse.Namespace, np.dtype]
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core to numpy._core
    scalar = core.multiarray.scalar
    allowed.append(scalar)
    if torch.torch_version.TorchVersion(torch.__version__) >= (2, 6):
        # (object, name) entries: files from 2020 (numpy 1.x) name the scalar constructor
        # numpy.core.multiarray.scalar, files from numpy 2 numpy._core.multiarray.scalar
        allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes through these classes
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _unsafe_global(message: str) -> str | None:
    """The type a weights-only load refused, parsed from torch's message (None if not that error)."""
    for pattern in (r"Unsupported global: GLOBAL ([\w.]+)", r"but got <class '([\w.]+)'>"):
        m = re.search(pattern, message)
        if m:
            return m.group(1)
    return None


def load_official(src: str | Path, trust_pickle: bool = False) -> Any:
    """``torch.load`` SRC onto the CPU, safely unless ``trust_pickle`` (see the module docstring).

    Returns whatever the file holds (normally a dict). Raises UserError for a missing,
    unreadable, truncated or corrupted file, and for one that needs pickle globals outside the
    allowlist (naming the global and the ``--trust-pickle`` option).
    """
    src = Path(src)
    if not src.exists():
        raise UserError(f"official checkpoint {src} does not exist; check the path (the released .pth files must be downloaded by hand)")
    if src.is_dir():
        raise UserError(f"official checkpoint {src} is a directory; pass the .pth file inside it")
    try:
        if trust_pickle:
            return torch.load(src, map_location="cpu", weights_only=False)
        if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: no allowlist
            return torch.load(src, map_location="cpu", weights_only=True)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = None if trust_pickle else _unsafe_global(str(e))
        if name is not None:
            raise UserError(
                f"official checkpoint {src} holds a pickled {name}, which the safe loader refuses; if you trust the file, "
                "import it with --trust-pickle (this runs code stored in the file)"
            ) from None
        raise UserError(
            f"cannot read official checkpoint {src} ({_first_line(e)}); it is truncated, corrupted or not a torch.save file: re-download it"
        ) from None
    except OSError as e:
        if e.strerror:
            raise UserError(f"cannot read official checkpoint {src} ({e.strerror}); check its permissions") from None
        raise UserError(
            f"cannot read official checkpoint {src} ({_first_line(e)}); it is truncated, corrupted or not a torch.save file: re-download it"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError, ... on damaged files
        raise UserError(
            f"cannot read official checkpoint {src} ({_first_line(e)}); it is truncated, corrupted or not a torch.save file: re-download it"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(_MODULE_PREFIX) for k in state):
        return {k[len(_MODULE_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _args_dict(args: Any, src: Path) -> dict[str, Any] | None:
    if args is None:
        return None
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    raise UserError(f"official checkpoint {src} has 'args' of type {type(args).__name__}, expected a dict or argparse.Namespace; re-save it or import its bare state dict")


def split_official(obj: Any, src: Path, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str, dict[str, Any]]:
    """Pick the weights out of a loaded official file.

    Returns ``(state, args, weights, extra)``: the state dict (``module.`` stripped), the saved
    ``args`` as a dict (None for a bare state dict), which weights were taken
    (``"model_state_dict"``, ``"ema_state_dict"`` or ``"state dict"``) and the file's JSON-able
    scalars (``epoch``, ``global_step``, ``test_loss*``). UserError for an unknown layout, or
    ``ema`` without ``ema_state_dict``.
    """
    if isinstance(obj, Mapping) and (MODEL_KEY in obj or EMA_KEY in obj):
        key = EMA_KEY if ema else MODEL_KEY
        if key not in obj:
            if ema:
                raise UserError(
                    f"official checkpoint {src} has no {EMA_KEY} (it was trained without --ema < 1); import it without --ema"
                )
            raise UserError(f"official checkpoint {src} has no {MODEL_KEY} (only {EMA_KEY}); import it with --ema")
        state = obj[key]
        if not _is_state_dict(state):
            raise UserError(f"official checkpoint {src}: {key} is not a mapping of names to tensors; the file is damaged: re-download it")
        extra: dict[str, Any] = {}
        for k, v in obj.items():
            cast = int if k in ("epoch", "global_step") else float if str(k).startswith("test_loss") else None
            if cast is not None:
                try:
                    extra[str(k)] = cast(v)
                except (TypeError, ValueError):
                    pass
        return _strip_module(state), _args_dict(obj.get("args"), src), key, extra
    if _is_state_dict(obj):
        if ema:
            raise UserError(f"official checkpoint {src} is a bare state dict with no EMA weights; import it without --ema")
        return _strip_module(obj), None, "state dict", {}
    if isinstance(obj, Mapping):
        keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
        what = f"a dict with keys {keys}"
    else:
        what = f"a {type(obj).__name__}"
    raise UserError(
        f"official checkpoint {src} has an unknown layout ({what}); expected the dict main.py saves "
        f"({MODEL_KEY}, {EMA_KEY}, args, ...) or a bare OurPixelCNN state dict"
    )


# ------------------------------------------------------------------------------------- inference
def _conv_weight(state: Mapping[str, torch.Tensor], stem: str) -> tuple[torch.Tensor | None, bool]:
    if f"{stem}.weight_v" in state:
        return state[f"{stem}.weight_v"], True
    if f"{stem}.weight" in state:
        return state[f"{stem}.weight"], False
    return None, False


def infer_arch(state: Mapping[str, torch.Tensor], src: Path) -> dict[str, Any]:
    """Architecture facts readable from the tensors of an ``OurPixelCNN`` state dict.

    Returns ``{"nr_filters", "channels", "kernel_size", "nr_resnet", "n_out", "weight_norm",
    "conv_bias"}``; ``n_out`` is the number of ``nin_out`` outputs. UserError for state dicts of
    other models or of unsupported options.
    """
    keys = list(state)
    if any(k.startswith(("ul_init", "ul_stream", "u_stream.", "downsize_ul_stream")) for k in keys):
        raise UserError(
            f"official checkpoint {src} holds the PixelCNN++ baseline (trained without --ours), not OurPixelCNN; "
            "only LMConv (--ours) checkpoints can be imported"
        )
    if any(k.endswith(".mask_weight") for k in keys):
        raise UserError(f"official checkpoint {src} was trained with --learn_weight_for_masks (mask_weight tensors), which lmconv-bench does not support")
    if any(k.startswith(("norm_init.", "norm_ds.", "norm_us.")) or ".norm_input." in k or ".norm_out." in k for k in keys):
        raise UserError(f"official checkpoint {src} has affine normalization parameters (--normalization instance_norm_affine), which lmconv-bench does not support")
    w, wn = _conv_weight(state, "u_init")
    if w is None or "nin_out.lin_a.weight_v" not in state:
        preview = ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")
        raise UserError(
            f"official checkpoint {src} is not an OurPixelCNN state dict (no u_init / nin_out.lin_a weights; keys: {preview}); "
            "pass a checkpoint of the LMConv paper's code"
        )
    if w.dim() != 4 or w.shape[2] != w.shape[3] or w.shape[2] % 2 != 1 or w.shape[1] < 2:
        raise UserError(f"official checkpoint {src}: u_init weight has shape {tuple(w.shape)}, expected [F, C+1, k, k] with odd k; the file is damaged")
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"up_layers\.0\.u_stream\.(\d+)\.", k))}
    if not blocks:
        raise UserError(f"official checkpoint {src} has no up_layers.0.u_stream blocks; the file is damaged or not an OurPixelCNN state dict")
    return {
        "nr_filters": int(w.shape[0]),
        "channels": int(w.shape[1]) - 1,
        "kernel_size": int(w.shape[2]),
        "nr_resnet": max(blocks) + 1,
        "n_out": int(state["nin_out.lin_a.weight_v"].shape[0]),
        "weight_norm": wn,
        "conv_bias": "u_init.bias" in state,
    }


def _head(facts: dict[str, Any], src: Path) -> tuple[str, int | None]:
    """(head, nr_logistic_mix or None) from the channel count and ``nin_out`` size."""
    c, n = facts["channels"], facts["n_out"]
    if c == 1 and n == 2:
        return "bernoulli2", None
    per = {1: 3, 3: 10}.get(c)
    if per is None:
        raise UserError(f"official checkpoint {src} has {c} input channels; only 1 (MNIST) and 3 (CIFAR-10, CelebA) are supported")
    if n % per or n == 0:
        raise UserError(f"official checkpoint {src}: nin_out has {n} outputs, not a multiple of {per} for {c} channel(s); the file is damaged")
    return "logistic_mixture", n // per


def dataset_from_args(args: Mapping[str, Any] | None) -> str | None:
    """Our dataset name for the official ``args`` (None when they do not say)."""
    if not args or not args.get("dataset"):
        return None
    name = str(args["dataset"])
    if name in ("cifar", "cifar10"):
        return "cifar10"
    if name == "mnist":
        return "mnist_binary" if _arg(args, "binarize") else "mnist"
    if name == "celebahq":
        size, bits = int(_arg(args, "celeba_size")), int(_arg(args, "n_bits"))
        table = {(64, 5): "celeba64", (32, 8): "celeba32"}
        if (size, bits) in table:
            return table[(size, bits)]
        raise UserError(
            f"the official checkpoint is for CelebA-HQ at {size}x{size}, {bits} bits, which no lmconv-bench dataset matches "
            "(celeba64 is 64x64 at 5 bits, celeba32 32x32 at 8 bits); pass --dataset to choose one anyway"
        )
    raise unknown("official dataset", name, ("cifar", "mnist", "celebahq"), "the checkpoint's args; pass --dataset")


# the 8 dihedral variants as maps on (r, c) of an n×n image, composed as in orders._variant
def _dihedral(k: int, r: int, c: int, n: int) -> tuple[int, int]:
    if k >= 4:
        r, c = c, r
    if k % 4 in (1, 3):
        r = n - 1 - r
    if k % 4 in (2, 3):
        c = n - 1 - c
    return r, c


def _compose(outer: int, inner: int) -> int:
    """Variant index of ``outer ∘ inner`` (``inner`` applied first)."""
    n, pts = 3, [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    want = [_dihedral(outer, *_dihedral(inner, r, c, n), n) for r, c in pts]
    return next(k for k in range(8) if [_dihedral(k, r, c, n) for r, c in pts] == want)


def orders_from_args(args: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The trained orders, as our names, rebuilt from the official ``args`` (``()`` if unknown).

    Follows ``main.py``: for each ``--order`` name, the base sequence is transposed, then
    row-reflected, then column-reflected as the ``base_order_*`` flags say; ``randomize_order``
    replaces it by its 8 variants (official list position i = our variant i composed with the
    base flags); ``order_variants`` then selects list positions, and ``train_masks`` the ones
    trained on. Duplicates are dropped, first occurrence kept.
    """
    if not args or not args.get("order"):
        return ()
    raw = args["order"]
    names = [raw] if isinstance(raw, str) else list(raw)
    base_k = 4 * bool(args.get("base_order_transpose")) + bool(args.get("base_order_reflect_rows")) + 2 * bool(args.get("base_order_reflect_cols"))
    listed: list[str] = []
    for name in names:
        if name not in ORDER_NAMES:
            raise unknown("official order", name, ORDER_NAMES, "the checkpoint's args")
        base = ORDER_NAMES[name]
        inner = _compose(base_k, 4) if name in TRANSPOSED_ORDERS else base_k  # the flags act after the transpose
        if args.get("randomize_order"):
            listed += [f"{base}/{_compose(i, inner)}" for i in range(8)]
        else:
            listed.append(f"{base}/{inner}")
    for key in ("order_variants", "train_masks"):
        pick = args.get(key)
        if pick:
            try:
                listed = [listed[int(i)] for i in pick]
            except (IndexError, TypeError, ValueError):
                raise UserError(f"the official checkpoint's args.{key}={pick!r} does not index its {len(listed)} orders; the args are damaged") from None
    return tuple(dict.fromkeys(listed))


def _check_args(args: Mapping[str, Any], facts: dict[str, Any], head: str, n_mix: int | None, src: Path) -> None:
    """UserError where the saved ``args`` contradict the tensors."""
    pairs = [("nr_filters", facts["nr_filters"]), ("nr_resnet", facts["nr_resnet"]), ("kernel_size", facts["kernel_size"])]
    if n_mix is not None:
        pairs.append(("nr_logistic_mix", n_mix))
    for key, got in pairs:
        if key in args and args[key] is not None and int(args[key]) != got:
            raise UserError(
                f"official checkpoint {src}: args.{key}={args[key]} but the tensors say {got}; the file is damaged or edited: re-download it"
            )
    if "binarize" in args and bool(args["binarize"]) != (head == "bernoulli2"):
        raise UserError(
            f"official checkpoint {src}: args.binarize={args['binarize']} but the output layer is a {head} head; the file is damaged or edited: re-download it"
        )


def _normalization(args: Mapping[str, Any] | None, facts: dict[str, Any], override: str | None, src: Path, notes: list[str]) -> str:
    if facts["weight_norm"]:
        if override not in (None, "weight_norm"):
            raise UserError(f"official checkpoint {src} has weight-normalised convolutions (weight_g/weight_v); it cannot be imported with normalization {override!r}")
        return "weight_norm"
    if override is not None:
        if override not in ("pono", "none"):
            raise unknown("normalization for a checkpoint without weight_g/weight_v", override, ("pono", "none"))
        return override
    if args is None or "normalization" not in args:
        notes.append("normalization pono assumed (the file does not record it; every released model uses PONO)")
        return "pono"
    norm = str(args["normalization"])
    if norm in ("pono", "none"):
        return norm
    if norm == "weight_norm":
        raise UserError(f"official checkpoint {src}: args.normalization is weight_norm but its convolutions have no weight_g/weight_v; the file is damaged or edited")
    raise UserError(f"official checkpoint {src} uses --normalization {norm}, which lmconv-bench does not support (only pono, weight_norm and none)")


def _check_dataset(info, facts: dict[str, Any], head: str, args: Mapping[str, Any] | None, src: Path) -> None:
    if info.channels != facts["channels"]:
        raise UserError(f"official checkpoint {src} models {facts['channels']}-channel images but dataset {info.name} has {info.channels}; pass a matching --dataset")
    if head == "bernoulli2" and info.n_bits != 1:
        raise UserError(f"official checkpoint {src} is a binarized-MNIST model (2-logit head) but dataset {info.name} has {info.n_bits} bits; use --dataset mnist_binary")
    if head != "bernoulli2" and info.n_bits == 1:
        raise UserError(f"official checkpoint {src} has a logistic-mixture head but dataset {info.name} is binary; use --dataset mnist")
    if head != "bernoulli2" and args is not None:
        bits = int(_arg(args, "n_bits"))
        if bits != info.n_bits:
            raise UserError(f"official checkpoint {src} was trained on {bits}-bit data but dataset {info.name} has {info.n_bits} bits; pass a matching --dataset")


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (float,)) and not math.isfinite(v):
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


# ------------------------------------------------------------------------------------- import
def _choose_dataset(dataset: str | None, args, src: Path, notes: list[str]) -> str:
    """The dataset to import for: ``dataset`` if given (noting a mismatch with the file's), else
    the one the file records; UserError when neither says."""
    if dataset is None:
        dataset = dataset_from_args(args)
        if dataset is None:
            raise UserError(
                f"official checkpoint {src} does not record its dataset (no args.dataset); "
                "pass --dataset (mnist, mnist_binary, cifar10, celeba32, celeba64)"
            )
        return dataset
    try:
        trained_on = dataset_from_args(args)
    except UserError:
        trained_on = str((args or {}).get("dataset"))
    if trained_on is not None and trained_on != dataset:
        notes.append(f"dataset {dataset} chosen; the checkpoint was trained on {trained_on}")
    return dataset


def _arch_from(facts: dict[str, Any], a: Mapping[str, Any], n_mix: int | None, norm: str, notes: list[str]) -> dict[str, Any]:
    """Our ``arch`` dict from the tensors' facts and the saved args ``a``."""

    def opt(key: str, default: Any) -> Any:
        return default if a.get(key) is None else a[key]

    if a.get("max_dilation") is None:
        notes.append("max_dilation 2 assumed (the official default; the dilation is not visible in the tensors)")
    return {
        "nr_resnet": facts["nr_resnet"],
        "nr_filters": facts["nr_filters"],
        # unused by the bernoulli2 head; kept from args for the record
        "nr_logistic_mix": n_mix if n_mix is not None else int(opt("nr_logistic_mix", 10)),
        "kernel_size": facts["kernel_size"],
        "max_dilation": int(opt("max_dilation", OFFICIAL_DEFAULTS["max_dilation"])),
        "normalization": norm,
        # training only (nn.Dropout2d); 0 when the file does not say
        "dropout_prob": float(opt("dropout_prob", 0.0)),
        "conv_bias": facts["conv_bias"],
    }


def _load_into_lmconv(config: ModelConfig, state: dict[str, torch.Tensor], src: Path):
    """An eval-mode LMConv of ``config`` holding ``state`` (as float32); UserError when the tensors
    do not fit, are not floats, or hold NaN or inf."""
    from .models.lmconv import LMConv

    model = LMConv(config)
    arch = config.arch
    problem = state_mismatch(model, state)
    if problem:
        raise UserError(
            f"official checkpoint {src} does not fit the OurPixelCNN it describes "
            f"(nr_resnet={arch['nr_resnet']}, nr_filters={arch['nr_filters']}, k={arch['kernel_size']}: {problem}); "
            "the file is damaged or from an unsupported version of the code"
        )
    if not all(v.is_floating_point() for v in state.values()):
        raise UserError(f"official checkpoint {src} has non-float weights; the file is damaged: re-download it")
    bad = non_finite_tensor(state)
    if bad is not None:
        raise UserError(f"official checkpoint {src} holds NaN or inf (tensor {bad}); it cannot give finite results: "
                        "re-download it, or pick another epoch's file")
    model.load_state_dict({k: v.detach().to(torch.float32) for k, v in state.items()}, strict=True)
    return model.eval()


def _difference_notes(info, head: str, a: Mapping[str, Any], weights: str) -> list[str]:
    """The known differences from the official evaluation that apply to this checkpoint."""
    notes = []
    if info.n_bits not in (1, 8) and head == "logistic_mixture":
        notes.append(
            f"{info.n_bits}-bit data: the official likelihood uses log(127.5) in the mid-bin fallback, ours log({(2 ** info.n_bits - 1) / 2:g}) (rarely used bins)"
        )
    if a.get("dataset") == "celebahq":
        notes.append("trained on CelebA-HQ; lmconv-bench's CelebA sets are aligned CelebA crops, so figures there are not the paper's")
    if head == "bernoulli2":
        notes.append("mnist_binary is binarized once per image id here; the official code re-binarizes at every load")
    if weights == EMA_KEY:
        notes.append("ema_state_dict imported as stored; the official EMA.update only ever averaged its first tensor")
    return notes


def import_official(
    src: str | Path,
    dst: str | Path,
    *,
    ema: bool = False,
    dataset: str | None = None,
    normalization: str | None = None,
    trust_pickle: bool = False,
) -> ImportResult:
    """Convert an official LMConv checkpoint SRC (``.pth``) into an lmconv-bench checkpoint DST.

    Args:
        src: file written by the official ``main.py`` / ``average_checkpoints.py``, or a bare
            ``OurPixelCNN`` state dict (see the module docstring).
        dst: the ``.safetensors`` file to write; must not exist (UserError otherwise; nothing is
            overwritten). A ``.sha256`` sidecar is written beside it.
        ema: import ``ema_state_dict`` instead of ``model_state_dict``.
        dataset: our dataset name; required when SRC has no ``args``, otherwise overrides
            ``args.dataset`` (after a channels / bit-depth check).
        normalization: ``"pono"`` or ``"none"`` for a file without ``args`` (default ``pono``);
            weight norm is detected from the tensors.
        trust_pickle: load with ``weights_only=False`` (runs code stored in the file).
    Returns:
        an :class:`ImportResult`. The stored model reproduces the official network exactly: same
        weights (as float32), same architecture, so ``log_prob`` (nats per pixel ``[B, H, W]``)
        equals the official per-pixel log-likelihood up to the differences listed in ``notes``.
    """
    from .data import get_dataset_info
    from .models.lmconv import PRESETS

    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise UserError(f"destination {dst} must be a .safetensors file (e.g. {dst.with_suffix('.safetensors').name})")
    if dst.exists():
        raise UserError(f"destination {dst} already exists; choose another DST or delete it first (nothing was overwritten)")
    from .io_utils import check_creatable

    check_creatable(dst)
    obj = load_official(src, trust_pickle=trust_pickle)
    state, args, weights, extra = split_official(obj, src, ema=ema)
    notes: list[str] = []

    facts = infer_arch(state, src)
    head, n_mix = _head(facts, src)
    if args is not None:
        _check_args(args, facts, head, n_mix, src)
    norm = _normalization(args, facts, normalization, src, notes)

    info = get_dataset_info(_choose_dataset(dataset, args, src, notes))
    _check_dataset(info, facts, head, args, src)

    a = args or {}
    arch = _arch_from(facts, a, n_mix, norm, notes)
    paper = {k: v for k, v in PRESETS["paper"].items() if k != "dropout_prob"}
    preset = "paper" if all(arch.get(k) == v for k, v in paper.items()) else "custom"

    trained = orders_from_args(args)
    if any(k >= 4 for k in (int(n.split("/")[1]) for n in trained)) and info.height != info.width:
        raise UserError(f"official checkpoint {src} was trained on transposed orders, which need square images, but {info.name} is {info.height}x{info.width}")

    n_bits = 1 if head == "bernoulli2" else info.n_bits
    config = ModelConfig(
        model="lmconv", preset=preset, dataset=info.name, channels=info.channels, height=info.height,
        width=info.width, n_bits=n_bits, head=head, arch=arch, trained_orders=trained,
    )
    expected_out = head_n_params(head, info.channels, arch["nr_logistic_mix"])
    if expected_out != facts["n_out"]:  # pragma: no cover - guarded by _head
        raise UserError(f"official checkpoint {src}: nin_out has {facts['n_out']} outputs, the {head} head needs {expected_out}")

    model = _load_into_lmconv(config, state, src)
    notes += _difference_notes(info, head, a, weights)

    source_sha = file_sha256(src)
    meta = {
        "imported_from": {
            "format": "lmconv-official",
            "source": src.name,
            "source_sha256": source_sha,
            "weights": weights,
            "args": _jsonable(args) if args is not None else None,
            **_jsonable(extra),
        },
    }
    if "epoch" in extra:
        meta["epoch"] = extra["epoch"]
    if "global_step" in extra:
        meta["step"] = extra["global_step"]
    if dst.exists():  # re-check just before writing
        raise UserError(f"destination {dst} already exists; choose another DST or delete it first (nothing was overwritten)")
    save_checkpoint(dst, model, meta=meta)
    return ImportResult(dst=dst, config=config, source_sha256=source_sha, weights=weights, notes=tuple(notes))


def import_checkpoint(
    src: str | Path,
    dst: str | Path,
    format: str = "lmconv-official",  # noqa: A002  (the CLI option's name)
    **kwargs: Any,
) -> ImportResult:
    """``lmconv-bench import-checkpoint SRC DST --format F``: dispatch on ``format`` (see
    :data:`FORMATS`); ``kwargs`` go to the importer (:func:`import_official`)."""
    if format not in FORMATS:
        raise unknown("checkpoint format", format, FORMATS)
    return import_official(src, dst, **kwargs)


__all__ = [
    "FORMATS",
    "ORDER_NAMES",
    "ImportResult",
    "dataset_from_args",
    "import_checkpoint",
    "import_official",
    "infer_arch",
    "load_official",
    "orders_from_args",
    "split_official",
]
