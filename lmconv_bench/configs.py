"""Model configurations for a dataset: :func:`make_config` (registry model + preset + dataset →
:class:`~lmconv_bench.models.base.ModelConfig`) and :func:`model_parameter_counts`. Sits above
both ``models`` (the interface and registry) and ``data`` (image shapes), so neither imports the
other."""

from __future__ import annotations

from typing import Any

from .data import get_dataset_info
from .errors import unknown
from .models.base import ModelConfig, build_model, model_names, presets


def make_config(
    model: str,
    preset: str,
    dataset: str,
    trained_orders: tuple[str, ...] | list[str] = (),
    **arch_overrides: Any,
) -> ModelConfig:
    """Build a :class:`ModelConfig` for ``model`` at ``preset`` on ``dataset``.

    Image shape and ``n_bits`` come from the dataset registry; the head is ``"bernoulli"`` for
    1-bit data and ``"logistic_mixture"`` otherwise. ``arch_overrides`` replace preset entries.
    """
    info = get_dataset_info(dataset)
    table = presets(model)
    if preset not in table:
        raise unknown(f"preset for model {model!r}", preset, table)
    arch = {**table[preset], **arch_overrides}
    return ModelConfig(
        model=model,
        preset=preset,
        dataset=dataset,
        channels=info.channels,
        height=info.height,
        width=info.width,
        n_bits=info.n_bits,
        head="bernoulli" if info.n_bits == 1 else "logistic_mixture",
        arch=arch,
        trained_orders=tuple(trained_orders),
    )


def model_parameter_counts(datasets: list[str], include_paper: bool = True) -> list[dict[str, Any]]:
    """``[{"model", "preset", "dataset", "n_params"}]`` for every registered model and preset
    (``paper`` presets only with ``include_paper``), built with random weights on CPU."""
    rows = []
    for name in model_names():
        for preset in presets(name):
            if preset == "paper" and not include_paper:
                continue
            for ds in datasets:
                net = build_model(make_config(name, preset, ds, trained_orders=["raster/0"]))
                rows.append({"model": name, "preset": preset, "dataset": ds,
                             "n_params": sum(p.numel() for p in net.parameters())})
    return rows
