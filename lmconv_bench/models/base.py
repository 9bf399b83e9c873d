"""The one model interface, its config, and the model registry.

Evaluation never branches on the model family: it calls ``log_prob`` and ``complete`` on any
:class:`AutoregressiveImageModel`. Built-in models register themselves by name with
:func:`register_model`; third-party packages add more through the entry-point group
``lmconv_bench.models`` (each entry point names a module or a class; importing it registers).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError, unknown
from ..pixels import to_model_range
from ..seeding import generator

ENTRY_POINT_GROUP = "lmconv_bench.models"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored as JSON in every checkpoint.

    Attributes:
        model: registry name (``"lmconv"``, ``"pixelcnnpp"``).
        preset: preset name the architecture came from (``"tiny"``, ``"small"``, ``"paper"``), or
            ``"custom"``.
        dataset: dataset name the model is for (``"mnist"``, ``"cifar10"``, ...).
        channels, height, width: image shape C×H×W.
        n_bits: bits per channel value; data are integers in ``0 .. 2**n_bits - 1``.
        head: likelihood head, ``"logistic_mixture"``, ``"bernoulli"`` or ``"bernoulli2"``.
        arch: family-specific hyper-parameters (nr_resnet, nr_filters, nr_logistic_mix, ...).
        trained_orders: canonical order names the weights were trained on (``"s_curve/3"``).
        trained_task_masks: mask families (with their default parameters) whose
            ``observed_first(order, mask)`` forms were also trained on (``train --task-masks``);
            empty for plain-order training. An order ``observed_first(o, m)`` with ``o`` in
            ``trained_orders`` and ``m`` from one of these families is inside the training
            distribution.
    """

    model: str
    preset: str
    dataset: str
    channels: int
    height: int
    width: int
    n_bits: int
    head: str
    arch: dict[str, Any] = field(default_factory=dict)
    trained_orders: tuple[str, ...] = ()
    trained_task_masks: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise UserError(f"model config has unknown keys {extra}; was it written by a newer lmconv-bench?")
        d = dict(d)
        d["trained_orders"] = tuple(d.get("trained_orders", ()))
        d["trained_task_masks"] = tuple(d.get("trained_task_masks", ()))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


Orders = Tensor
"""A permutation long ``[H*W]`` shared by the batch, or ``[B, H*W]`` one per image (see orders.py)."""


class Cost:
    """Network evaluations counted by the samplers and likelihood code, in full-forward-pass
    equivalents per image: a full forward pass over a batch of ``b`` images adds ``b`` image-passes;
    computing every layer at ``k`` of the ``H*W`` positions adds ``b * k / (H*W)``.
    :attr:`per_image` divides the total by the images added with :meth:`images`."""

    def __init__(self) -> None:
        self.image_passes = 0.0
        self.n_images = 0

    def add(self, passes: float, batch: int) -> None:
        """``passes`` full-forward-pass equivalents, each over a batch of ``batch`` images."""
        self.image_passes += float(passes) * int(batch)

    def images(self, n: int) -> None:
        self.n_images += int(n)

    @property
    def per_image(self) -> float:
        return self.image_passes / self.n_images if self.n_images else 0.0


class AutoregressiveImageModel(nn.Module):
    """Base class of every model: an autoregressive density over uint8 images under pixel orders.

    Subclasses implement :meth:`forward` and set ``self.config`` and ``self.head`` (a likelihood head
    from :mod:`lmconv_bench.models.likelihood`). Fixed-order models (the raster PixelCNN++) set
    ``fixed_order`` to that order's name and ignore the ``orders`` argument of :meth:`forward`.
    """

    config: ModelConfig
    fixed_order: str | None = None

    def forward(self, x: Tensor, orders: Orders) -> Tensor:  # pragma: no cover - abstract
        """x: float ``[B, C, H, W]`` in ``[-1, 1]`` (see ``pixels.to_model_range``); returns the
        head's parameters, float ``[B, head.n_params, H, W]``; position p depends only on pixels
        strictly earlier than p in the order."""
        raise NotImplementedError

    # -- likelihood -----------------------------------------------------------------------
    def log_prob(self, x: Tensor, orders: Orders) -> Tensor:
        """log p of each pixel (all its channels jointly) given the pixels before it in the order.

        Args:
            x: uint8 ``[B, C, H, W]`` with values ``0 .. 2**n_bits - 1``.
            orders: ``[H*W]`` or ``[B, H*W]`` permutation(s).
        Returns:
            float ``[B, H, W]`` in nats (sum over a region for its joint log-probability).
        """
        params = self(to_model_range(x, self.config.n_bits).to(self.dtype_), orders)
        return self.head.log_prob(params, x)

    @property
    def dtype_(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    # -- completion ------------------------------------------------------------------------
    def complete(
        self,
        x: Tensor,
        missing: Tensor,
        orders: Orders,
        seeds: Tensor,
        temperature: float = 1.0,
        sampler: str = "naive",
        progress: Callable[[int], None] | None = None,
        cost: Cost | None = None,
    ) -> Tensor:
        """Fill the missing pixels by ancestral sampling in the given order(s).

        Args:
            x: uint8 ``[B, C, H, W]``; values at missing positions are ignored.
            missing: bool ``[B, H, W]`` (True = to be sampled).
            orders: ``[H*W]`` or ``[B, H*W]``. For exact conditioning pass an
                ``observed_first`` order; otherwise missing pixels are still sampled in order, but
                see only what precedes them.
            seeds: int64 ``[B]``. The noise for pixel p of image i is drawn from a generator seeded
                by ``(seeds[i], p)``, so results don't depend on batch size or process count.
            sampler: ``"naive"`` (one full forward pass per step); subclasses may add faster ones.
            cost: if given, the sampler adds the network evaluations it performs (:class:`Cost`).
        Returns:
            uint8 ``[B, C, H, W]``: observed pixels unchanged, missing ones sampled.
        """
        if sampler != "naive":
            raise unknown("sampler", sampler, ["naive"])
        return naive_complete(self, x, missing, orders, seeds, temperature, progress, cost)


def check_arch(model: str, arch: dict[str, Any], positive: tuple[str, ...]) -> None:
    """UserError unless every key of ``positive`` present in ``arch`` is a positive integer and
    ``dropout_prob`` (if present) lies in [0, 1); checked before any layer is built."""
    for key in positive:
        if key in arch:
            v = arch[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise UserError(f"{model} arch field {key}={v!r} must be a positive integer; the config is damaged or edited")
    if "kernel_size" in arch and arch["kernel_size"] % 2 != 1:
        raise UserError(f"{model} arch field kernel_size={arch['kernel_size']!r} must be odd")
    p = arch.get("dropout_prob", 0.0)
    if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
        raise UserError(f"{model} arch field dropout_prob={p!r} must lie in [0, 1)")


def pixel_generators(seeds: Tensor, positions: Tensor) -> list[torch.Generator]:
    """One generator per image i, seeded by ``(seeds[i], positions[i])`` (flat pixel index)."""
    return [generator("pixel", int(s), int(p)) for s, p in zip(seeds.tolist(), positions.tolist())]


@torch.no_grad()
def naive_complete(
    model: AutoregressiveImageModel,
    x: Tensor,
    missing: Tensor,
    orders: Orders,
    seeds: Tensor,
    temperature: float = 1.0,
    progress: Callable[[int], None] | None = None,
    cost: Cost | None = None,
) -> Tensor:
    """Reference completion: one full forward pass per generation step (see ``complete``)."""
    b, _, h, w = x.shape
    n = h * w
    perm = orders if orders.dim() == 2 else orders.expand(b, n)
    perm = perm.to(x.device)
    miss_flat = missing.reshape(b, n).to(x.device)
    out = x.clone()
    out.view(b, x.shape[1], n)[miss_flat.unsqueeze(1).expand(-1, x.shape[1], -1)] = 0
    rows = torch.arange(b, device=x.device)
    for t in range(n):
        pos = perm[:, t]
        todo = miss_flat[rows, pos]
        if not bool(todo.any()):
            continue
        params = model(to_model_range(out, model.config.n_bits).to(model.dtype_), orders)
        if cost is not None:
            cost.add(1, b)
        p_flat = params.reshape(b, params.shape[1], n)
        idx = rows[todo]
        sel = p_flat[idx, :, pos[todo]][:, :, None, None]
        gens = pixel_generators(seeds[todo.cpu()].cpu(), pos[todo].cpu())
        val = model.head.sample(sel, gens, temperature=temperature)  # [k, C, 1, 1]
        out.view(b, x.shape[1], n)[idx, :, pos[todo]] = val[:, :, 0, 0].to(out.dtype)
        if progress is not None:
            progress(1)
    return out


# ------------------------------------------------------------------------------ registry
_MODELS: dict[str, Callable[[ModelConfig], AutoregressiveImageModel]] = {}
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}
_entry_points_loaded = False


def register_model(name: str, presets: dict[str, dict[str, Any]] | None = None):
    """Class decorator: register a model family under ``name`` (duplicates are refused).

    The class is built as ``cls(config)``. ``presets`` maps preset names to ``arch`` dicts.
    """

    def wrap(cls):
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model {name!r} is already registered by {_MODELS[name]!r}")
        _MODELS[name] = cls
        _PRESETS[name] = dict(presets or {})
        return cls

    return wrap


def _load_builtin_and_entry_points() -> None:
    """Import every module of the entry-point group (the built-in ``lmconv`` and ``pixelcnnpp``
    are entry points of this package too, see pyproject.toml), which registers their models.
    This module never imports a model module itself, so the interface depends on no model."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


def model_names() -> list[str]:
    _load_builtin_and_entry_points()
    return sorted(_MODELS)


def get_model_class(name: str):
    _load_builtin_and_entry_points()
    if name not in _MODELS:
        raise unknown("model", name, _MODELS)
    return _MODELS[name]


def presets(model: str) -> dict[str, dict[str, Any]]:
    get_model_class(model)
    return _PRESETS[model]


def build_model(config: ModelConfig) -> AutoregressiveImageModel:
    """Instantiate a registered model from its config (fresh random weights)."""
    return get_model_class(config.model)(config)
