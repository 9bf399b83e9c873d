"""Performance benchmarks measured side by side in one run (``lmconv-bench bench ...``).

``bench conv`` (:func:`bench_conv`)
-----------------------------------
How much the locally masked convolutions cost: the LMConv network (fast implementation) against
the *same* network with plain, unmasked ``conv2d`` layers (identical weights and shapes;
``conv_impl="plain"``), on random data at a CPU-sized preset (``bench-default``: 64 filters, one
gated resnet per stage), MNIST-shaped 28×28×1 by default, batch 16:

* ``train_step_ratio``: forward + discretized-logistic NLL + backward, LMConv / plain, for orders
  ``s_curve`` (its 8 variants in turn), ``hilbert`` (8 variants) and ``raster``;
* ``forward_ratio``: the same for a forward pass alone (eval mode, no autograd);
* ``memory_ratio``: peak memory of a few training steps, LMConv / plain, the largest over the
  orders. Measured in fresh subprocesses (``ru_maxrss`` only grows), as the growth of the peak
  RSS over the process's RSS after start-up (imports, model, data);
* the same ratios for the ``reference`` (unfold) implementation, for context (fewer repeats).

Timings are interleaved (plain, LMConv, plain, LMConv, ...) after a warm-up, and ratios are
ratios of medians, to resist noise from other processes. Per-order mask preparation is cached per
order (as in training) and warmed up before timing. Times are wall-clock seconds with torch's
default thread count.

``bench complete`` (:func:`bench_complete`)
-------------------------------------------
What exact cached completion costs: an MNIST-shaped top-half completion (392 missing pixels)
under ``observed_first(s_curve/0)`` with the ``small`` preset (random weights, random images), at
batch sizes 1, 16 and 64. ``forward_equivalents`` = cached completion time / one full forward pass
on the same batch (median of 3, timed around the completion); ``speedup_vs_naive`` = naive time /
cached time, the naive time extrapolated from its first 20 steps (one full pass each, so ~392
forward passes). The PixelCNN++ baseline's cached raster sampler is measured the same way under
``"pixelcnnpp"``. Measured on 2 busy CPU cores (other jobs running; about 1.5 min in all):

=======================  ========  ========  ========
forward passes           batch 1   batch 16  batch 64
=======================  ========  ========  ========
lmconv, 2 threads        27.1      5.6       3.2
lmconv, 1 thread         26.9      3.9       2.5
pixelcnnpp, 2 threads    21.7      7.0       2.0
=======================  ========  ========  ========

Speed-up over naive at batch 64: 106× (lmconv, 2 threads), 155× (1 thread). At batch 1 the
per-step overhead of ~30 small ops per gated resnet dominates (~3 ms per pixel).

The memory workers run as ``python -m lmconv_bench.bench _memory_worker --impl fast --order
s_curve/0 ...`` and print one JSON line.
"""

from __future__ import annotations

import dataclasses
import json as _json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
"""Image shapes (C, H, W) the conv benchmark can use (random data of that shape, 8-bit)."""

ORDER_FAMILIES = ("s_curve", "hilbert", "raster")

COMPARATORS = ("plain", "plain_cl", "footprint")
"""What LMConv's fast path is timed against, each the same network with the same weights:
``plain``: unmasked 3×3 ``conv2d`` in NCHW; ``plain_cl``: the same in channels_last (oneDNN's
faster layout on CPUs); ``footprint``: unmasked ``conv2d`` over only the taps the order opens
somewhere (2×3 of 3×3 for s_curve and raster; all 9 for hilbert), the honest cost of masking."""


def _spread(fast: list[float], other: list[float]) -> dict[str, float]:
    """Per-round ratios fast/other (rounds are interleaved): their median, min and max."""
    ratios = [a / b for a, b in zip(fast, other)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


# ------------------------------------------------------------------------------ helpers
def _config(preset: str, shape: str):
    from .errors import unknown
    from .models.base import ModelConfig
    from .models.lmconv import PRESETS

    if shape not in SHAPES:
        raise unknown("bench shape", shape, SHAPES)
    if preset not in PRESETS:
        raise unknown("lmconv preset", preset, PRESETS)
    c, h, w = SHAPES[shape]
    return ModelConfig(
        model="lmconv",
        preset=preset,
        dataset=shape,
        channels=c,
        height=h,
        width=w,
        n_bits=8,
        head="logistic_mixture",
        arch=dict(PRESETS[preset]),
    )


def _data(config, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x8 = torch.randint(0, 256, (batch, config.channels, config.height, config.width), generator=g, dtype=torch.uint8)
    return x8, x8.float() / 127.5 - 1.0


def _networks(config, impls: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    from .models.lmconv import LMConv

    torch.manual_seed(0)
    nets = {impl: LMConv(config, conv_impl=impl) for impl in impls}
    state = nets[impls[0]].state_dict()
    for net in nets.values():
        net.load_state_dict(state)
    return nets


def _train_step(net, xf: torch.Tensor, x8: torch.Tensor, order) -> None:
    net.train()
    net.zero_grad(set_to_none=True)
    params = net(xf, order)
    loss = -net.head.log_prob(params, x8).mean()
    loss.backward()


def _forward(net, xf: torch.Tensor, order) -> None:
    net.eval()
    with torch.no_grad():
        net(xf, order)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], None]) -> float:
    """Wall seconds of ``fn()`` (CUDA work finished before and after)."""
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def _order_names(family: str, size: int) -> list[str]:
    return [f"{family}/{k}" for k in range(8)] if family != "raster" else ["raster/0"]


# ------------------------------------------------------------------------------ memory worker
def _peak_rss_kib() -> int:
    """This process's peak resident set size in KiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, which starts afresh at ``exec`` (``ru_maxrss``
    carries over the high-water mark of the parent that forked us). Elsewhere: ``ru_maxrss``
    (bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _memory_worker(impl: str, order: str, preset: str, shape: str, batch: int, steps: int) -> dict[str, Any]:
    """Peak RSS of ``steps`` training steps in this process. Returns KiB figures."""
    from .orders import get_order

    config = _config(preset, shape)
    net = _networks(config, (impl,))[impl]
    x8, xf = _data(config, batch)
    perm = get_order(order, config.height, config.width)
    base = _peak_rss_kib()
    for _ in range(steps):
        _train_step(net, xf, x8, perm)
    peak = _peak_rss_kib()
    return {"impl": impl, "order": order, "baseline_kib": base, "peak_kib": peak, "growth_kib": peak - base}


def _run_memory_worker(impl: str, order: str, preset: str, shape: str, batch: int, steps: int) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "lmconv_bench.bench", "_memory_worker",
        "--impl", impl, "--order", order, "--preset", preset, "--shape", shape,
        "--batch", str(batch), "--steps", str(steps),
    ]  # fmt: skip
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return _json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ bench conv
def bench_conv(
    preset: str = "bench-default",
    batch: int = 16,
    repeats: int = 5,
    shape: str = "mnist",
    reference_repeats: int = 1,
    memory_steps: int = 2,
    memory: bool = True,
    json: bool = False,
    log: Callable[[str], None] | None = print,
    device: str = "cpu",
) -> dict[str, Any]:
    """Measure the cost of locally masked convolutions against plain convolutions.

    Args:
        preset: lmconv preset (default ``bench-default``: 64 filters, nr_resnet 1, k 3).
        batch: images per step (random 8-bit data of ``shape``).
        repeats: timed rounds (at least 5 for a spread worth reading); each round times, per order
            family, one train step and one forward pass of each comparator (:data:`COMPARATORS`)
            and of LMConv, interleaved (s_curve and hilbert use variant ``round % 8``).
        shape: ``"mnist"`` (28×28×1) or ``"cifar10"`` (32×32×3).
        reference_repeats: timed rounds of the unfold implementation (s_curve only); 0 skips it.
        memory_steps: training steps per memory subprocess; ``memory=False`` skips memory.
        json: also print the result as one JSON object on the last line.
        log: where progress and the summary table go (None: silent).
        device: ``cpu`` or ``cuda[:N]``; memory is measured on CPU only (skipped on CUDA).

    Returns:
        ``{"train_step_ratio": {family: r}, "forward_ratio": {family: r}, "train_step_ratio_vs":
        {comparator: {family: {"median", "min", "max", "rounds"}}}, "forward_ratio_vs": {...},
        "memory_ratio": r, "memory_ratio_by_order": {...}, "reference": {...}, "seconds": {...},
        "config": {...}}``. ``train_step_ratio`` / ``forward_ratio`` (kept for compatibility): LMConv
        (fast) / plain NCHW, ratios of medians. ``*_vs``: per-round ratios LMConv / comparator with
        their spread. Seconds are medians per train step / forward.
    """
    from .orders import get_order

    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    config = _config(preset, shape)
    dev = torch.device(device)
    c, h, w = config.channels, config.height, config.width
    x8, xf = (t.to(dev) for t in _data(config, batch))
    impls = ("plain", "footprint", "fast") + (("reference",) if reference_repeats > 0 else ())
    nets = {k: v.to(dev) for k, v in _networks(config, impls).items()}
    # the plain network once more, in channels_last (oneDNN's faster layout on CPUs)
    nets["plain_cl"] = _networks(config, ("plain",))["plain"].to(dev).to(memory_format=torch.channels_last)
    xf_cl = xf.contiguous(memory_format=torch.channels_last)
    inputs = {"plain": xf, "plain_cl": xf_cl, "footprint": xf, "fast": xf}
    orders = {fam: [get_order(n, h, w).to(dev) for n in _order_names(fam, h)] for fam in ORDER_FAMILIES}
    say(
        f"bench conv ({dev}): preset {preset} ({config.arch['nr_filters']} filters, nr_resnet {config.arch['nr_resnet']}), "
        f"{h}x{w}x{c}, batch {batch}, {torch.get_num_threads()} threads, {repeats} interleaved rounds"
    )

    result = _time_comparators(nets, inputs, x8, orders, repeats, batch, (h, w), say, t_start)
    med_t, med_f = result["seconds"]["train_step"], result["seconds"]["forward"]

    if reference_repeats > 0:
        result["reference"] = _time_reference(nets["reference"], xf, x8, orders["s_curve"], reference_repeats, med_t, med_f)
        say(f"  reference impl done ({time.perf_counter() - t_start:.0f} s)")
    if memory and dev.type == "cpu":
        del nets
        result.update(_memory_ratios(preset, shape, batch, memory_steps))
        say(f"  memory done ({time.perf_counter() - t_start:.0f} s)")

    result["config"] = {
        "preset": preset,
        "shape": [c, h, w],
        "batch": batch,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    say(_table(result))
    if json:
        print(_json.dumps(result, sort_keys=True))
    return result


COMPARATOR_LABELS = {"plain": "plain 3x3 NCHW", "plain_cl": "plain 3x3 channels_last", "footprint": "same tap footprint"}


def _time_comparators(nets, inputs, x8, orders, repeats: int, batch: int, hw, say, t_start: float) -> dict[str, Any]:
    """Warm up, then time every comparator and LMConv per family in interleaved rounds; the
    ratios of :func:`bench_conv` with their spread."""
    h, w = hw
    for perms in orders.values():  # every order's masks, cached as in training
        for perm in perms:
            nets["fast"].conv_masks(perm, batch, h, w, x8.device)
    for impl in ("plain", "plain_cl", "footprint", "fast"):
        _train_step(nets[impl], inputs[impl], x8, orders["s_curve"][0])
        _forward(nets[impl], inputs[impl], orders["s_curve"][0])
    train = {fam: {k: [] for k in COMPARATORS + ("fast",)} for fam in ORDER_FAMILIES}
    fwd = {fam: {k: [] for k in COMPARATORS + ("fast",)} for fam in ORDER_FAMILIES}
    for r in range(repeats):
        for fam in ORDER_FAMILIES:
            perm = orders[fam][r % len(orders[fam])]
            for impl in COMPARATORS + ("fast",):
                net, xin = nets[impl], inputs[impl]
                train[fam][impl].append(_timed(lambda: _train_step(net, xin, x8, perm)))
                fwd[fam][impl].append(_timed(lambda: _forward(net, xin, perm)))
        say(f"  round {r + 1}/{repeats} done ({time.perf_counter() - t_start:.0f} s)")
    med_t = {"plain": statistics.median(v for fam in ORDER_FAMILIES for v in train[fam]["plain"])}
    med_f = {"plain": statistics.median(v for fam in ORDER_FAMILIES for v in fwd[fam]["plain"])}
    for fam in ORDER_FAMILIES:
        med_t[fam], med_f[fam] = statistics.median(train[fam]["fast"]), statistics.median(fwd[fam]["fast"])
    return {
        "train_step_ratio": {fam: med_t[fam] / med_t["plain"] for fam in ORDER_FAMILIES},
        "forward_ratio": {fam: med_f[fam] / med_f["plain"] for fam in ORDER_FAMILIES},
        "train_step_ratio_vs": {k: {fam: _spread(train[fam]["fast"], train[fam][k]) for fam in ORDER_FAMILIES}
                                for k in COMPARATORS},
        "forward_ratio_vs": {k: {fam: _spread(fwd[fam]["fast"], fwd[fam][k]) for fam in ORDER_FAMILIES}
                             for k in COMPARATORS},
        "seconds": {"train_step": med_t, "forward": med_f},
    }


def _time_reference(net, xf, x8, perms, repeats: int, med_t, med_f) -> dict[str, Any]:
    """The unfold implementation's train step and forward, relative to the plain network."""
    ref_t, ref_f = [], []
    _forward(net, xf, perms[0])  # warm-up
    for r in range(repeats):
        perm = perms[r % len(perms)]
        ref_t.append(_timed(lambda: _train_step(net, xf, x8, perm)))
        ref_f.append(_timed(lambda: _forward(net, xf, perm)))
    return {"train_step_ratio": {"s_curve": statistics.median(ref_t) / med_t["plain"]},
            "forward_ratio": {"s_curve": statistics.median(ref_f) / med_f["plain"]}}


def _memory_ratios(preset: str, shape: str, batch: int, steps: int) -> dict[str, Any]:
    """Peak-memory growth of LMConv per order family over the plain network (fresh processes)."""
    base = _run_memory_worker("plain", "s_curve/0", preset, shape, batch, steps)
    by_order = {}
    for fam in ORDER_FAMILIES:
        got = _run_memory_worker("fast", f"{fam}/0", preset, shape, batch, steps)
        by_order[f"{fam}/0"] = got["growth_kib"] / max(base["growth_kib"], 1)
    return {"memory_ratio": max(by_order.values()), "memory_ratio_by_order": by_order,
            "memory_kib": {"plain_growth": base["growth_kib"], "plain_peak": base["peak_kib"]}}


def _table(res: dict[str, Any]) -> str:
    fams = ORDER_FAMILIES
    lines = ["", "LMConv (fast) / comparator, median [min-max] over rounds   "
             + "  ".join(f"{f:>18s}" for f in fams)]
    for key, what in (("train_step_ratio_vs", "train step"), ("forward_ratio_vs", "forward")):
        for comp in COMPARATORS:
            r = res[key][comp]
            cells = "  ".join(f"{r[f]['median']:5.2f} [{r[f]['min']:4.2f}-{r[f]['max']:4.2f}]" for f in fams)
            lines.append(f"  {what + ' vs ' + COMPARATOR_LABELS[comp]:52s} {cells}")
    if "memory_ratio_by_order" in res:
        m = res["memory_ratio_by_order"]
        lines.append(
            f"  {'peak memory growth ratio':40s} {m['s_curve/0']:7.2f}  {m['hilbert/0']:7.2f}  {m['raster/0']:7.2f}"
        )
    if "reference" in res:
        ref = res["reference"]
        lines.append(
            f"  reference (unfold) impl / plain: train step {ref['train_step_ratio']['s_curve']:.2f}, "
            f"forward {ref['forward_ratio']['s_curve']:.2f} (s_curve)"
        )
    sec = res["seconds"]
    lines.append(
        f"  plain network: {sec['train_step']['plain']:.2f} s per train step, {sec['forward']['plain']:.2f} s per forward"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ bench complete
class _StopNaive(Exception):
    """Raised from the progress callback to stop a naive completion after the timed steps."""


def _time_naive_steps(model, x8, missing, perm, seeds, steps: int) -> float:
    """Seconds per step of the naive sampler, from its first ``steps`` sampling steps."""
    done = 0

    def progress(_n: int) -> None:
        nonlocal done
        done += 1
        if done >= steps:
            raise _StopNaive

    t0 = time.perf_counter()
    try:
        model.complete(x8, missing, perm, seeds, sampler="naive", progress=progress)
    except _StopNaive:
        pass
    return (time.perf_counter() - t0) / max(done, 1)


def _complete_figures(
    model, perm, mask: torch.Tensor, batches, naive_steps: int, forward_repeats: int, say, label: str
) -> dict[str, Any]:
    """Forward, cached and (extrapolated) naive completion times of one model at each batch size."""
    c, h, w = model.config.channels, model.config.height, model.config.width
    dev = next(model.parameters()).device
    perm, mask = perm.to(dev), mask.to(dev)
    n_steps = int(mask.sum())  # sampling steps: the mask is shared, so one pixel per step
    fe, sp, naive_fe = {}, {}, {}
    sec: dict[str, dict[str, float]] = {"forward": {}, "cached": {}, "naive_extrapolated": {}}
    for b in batches:
        g = torch.Generator().manual_seed(b)
        x8 = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8).to(dev)
        xf = x8.float() / 127.5 - 1.0
        missing = mask.expand(b, h, w)
        seeds = torch.arange(b, dtype=torch.long)
        _forward(model, xf, perm)  # warm-up (workspace, masks)
        fwd = [_timed(lambda: _forward(model, xf, perm))]
        cached = _timed(lambda: model.complete(x8, missing, perm, seeds, sampler="cached"))
        fwd += [_timed(lambda: _forward(model, xf, perm)) for _ in range(max(forward_repeats - 1, 0))]
        naive = _time_naive_steps(model, x8, missing, perm, seeds, naive_steps) * n_steps
        t_fwd = statistics.median(fwd)
        key = str(b)
        fe[key], sp[key], naive_fe[key] = cached / t_fwd, naive / cached, naive / t_fwd
        sec["forward"][key], sec["cached"][key], sec["naive_extrapolated"][key] = t_fwd, cached, naive
        say(
            f"  {label} batch {b:3d}: forward {t_fwd:7.3f} s, cached {cached:7.2f} s "
            f"({fe[key]:6.1f} forward passes), naive ~{naive:8.1f} s (x{sp[key]:.0f})"
        )
    return {"forward_equivalents": fe, "speedup_vs_naive": sp, "naive_forward_equivalents": naive_fe, "seconds": sec}


def bench_complete(
    preset: str = "small",
    batches: tuple[int, ...] = (1, 16, 64),
    json: bool = False,
    log: Callable[[str], None] | None = print,
    naive_steps: int = 20,
    forward_repeats: int = 3,
    pixelcnnpp: bool = True,
    threads: int | None = None,
    flip_checkpoints: list[str] | None = None,
    flip_images: int = 16,
    data_root: str | None = None,
    device: str = "cpu",
    shape: str = "mnist",
) -> dict[str, Any]:
    """Cost of exact cached completion, in full forward passes, and its speed-up over naive.

    Task: MNIST-shaped (28×28×1, 8-bit) top-half completion (392 missing pixels) under
    ``observed_first(s_curve/0)``, random weights at ``preset``, random images. Per batch size:
    the median of ``forward_repeats`` full forward passes (no autograd) on the same batch, one
    cached completion (``complete(..., sampler="cached")``, timed between the forward passes) and
    the naive sampler's first ``naive_steps`` steps, extrapolated to all 392 (one full pass per
    step, so ~392 forward passes).

    Args:
        preset: lmconv preset (and pixelcnnpp preset of the same name, if it exists).
        batches: batch sizes.
        json: also print the result as one JSON object on the last line.
        log: where progress and the summary go (None: silent).
        naive_steps: naive steps timed per batch size.
        pixelcnnpp: also measure the PixelCNN++ raster baseline's cached sampler (raster order:
            on the top half its missing pixels come first, ``context = preceding_only``).
        threads: torch threads for the whole benchmark (None: the current setting). The cached
            sampler's per-step loop picks its own (see ``models.lmconv_cache.SMALL_STEP_MACS``).
        flip_checkpoints: checkpoints for :func:`float32_flips` on the CI tasks (None or empty:
            not measured); ``flip_images`` images per task.

    Returns:
        ``{"forward_equivalents": {"1": r, ...}, "speedup_vs_naive": {...},
        "naive_forward_equivalents": {...}, "seconds": {"forward"|"cached"|"naive_extrapolated":
        {...}}, "pixelcnnpp": {same keys} (if measured), "config": {...}}``; keys are batch sizes
        as strings; forward equivalents are completion seconds / forward-pass seconds.
    """
    from .masks import make_mask
    from .orders import get_order, observed_first

    say = log or (lambda _msg: None)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        t_start = time.perf_counter()
        config = _config(preset, shape)
        _, h, w = config.channels, config.height, config.width
        mask = make_mask("top_half", {}, h, w)
        perm = observed_first(get_order("s_curve/0", h, w), mask)
        say(
            f"bench complete: MNIST top half ({int(mask.sum())} missing pixels), observed_first(s_curve/0), "
            f"lmconv preset {preset} (random weights), batches {list(batches)}, {torch.get_num_threads()} threads"
        )
        result = _complete_both(config, perm, mask, batches, naive_steps, forward_repeats, say, device, pixelcnnpp)
        result["config"] = {
            "preset": preset,
            "device": str(device),
            "task": f"{shape} top_half (random weights, random images)",
            "order": "observed_first(s_curve/0)",
            "missing_pixels": int(mask.sum()),
            "batches": list(batches),
            "naive": f"extrapolated from {naive_steps} steps",
            "forward_repeats": forward_repeats,
            "threads": torch.get_num_threads(),
            "wall_seconds": round(time.perf_counter() - t_start, 1),
        }
        if flip_checkpoints:
            result["float32_flips"] = float32_flips(flip_checkpoints, n_images=flip_images, data_root=data_root, log=say)
    finally:
        torch.set_num_threads(before)
    say(_complete_table(result))
    if json:
        print(_json.dumps(result, sort_keys=True))
    return result


def _complete_both(config, perm, mask, batches, naive_steps, forward_repeats, say, device, pixelcnnpp: bool) -> dict[str, Any]:
    """:func:`_complete_figures` of the LMConv network (random weights) and, if asked and the
    preset exists, of the PixelCNN++ baseline under ``"pixelcnnpp"``."""
    from .models.base import build_model, presets
    from .orders import get_order

    torch.manual_seed(0)
    net = build_model(config).eval().to(device)
    result = _complete_figures(net, perm, mask, batches, naive_steps, forward_repeats, say, "lmconv")
    if pixelcnnpp and config.preset in presets("pixelcnnpp"):
        del net
        pconfig = dataclasses.replace(config, model="pixelcnnpp", arch=dict(presets("pixelcnnpp")[config.preset]))
        torch.manual_seed(0)
        pnet = build_model(pconfig).eval().to(device)
        raster = get_order("raster/0", config.height, config.width)
        result["pixelcnnpp"] = _complete_figures(pnet, raster, mask, batches, naive_steps, forward_repeats, say, "pixelcnnpp")
    return result


FLIP_TASKS = ("mnist_center", "mnist_top_half", "mnist_random")


@torch.no_grad()
def float32_flips(checkpoints: list[str], tasks: tuple[str, ...] = FLIP_TASKS, n_images: int = 16,
                  data_root=None, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """How often float32 cached completion differs from float32 naive completion.

    Both samplers are exact in float64 (tested). In float32 the summation order differs, so a
    sample can flip where two bins are nearly tied, and every later pixel of that completion may
    then differ. Per checkpoint and task: the first ``n_images`` test images with the task's masks,
    each checkpoint under the order ``run`` would use first (``observed_first`` of its first trained
    order for any-order models; its own order for fixed-order models and single-order controls),
    seeds as in ``run``. Returns ``{"completions": n, "differing_completions": k,
    "completion_rate": k/n, "missing_pixels": m, "differing_pixels": j, "pixel_rate": j/m,
    "by_cell": [...]}``.
    """
    from .checkpoints import load_checkpoint
    from .config import resolve_tasks
    from .data import load_split
    from .masks import make_masks
    from .orders import get_order, observed_first
    from .seeding import stable_seed

    say = log or (lambda _msg: None)
    cells = []
    for path in checkpoints:
        model, _ = load_checkpoint(path)
        cfg = model.config
        name = model.fixed_order or cfg.trained_orders[0]
        own_order = bool(model.fixed_order) or (len(cfg.trained_orders) == 1 and not cfg.trained_task_masks)
        for task_name in tasks:
            (task,) = resolve_tasks(task_name)
            if task.dataset != cfg.dataset:
                continue
            data = load_split(task.dataset, task.split, data_root, limit=n_images)
            missing = make_masks(task.mask_family, task.mask_params, cfg.height, cfg.width, data.ids)
            perm = get_order(name, cfg.height, cfg.width)
            perms = perm.expand(len(missing), -1) if own_order else observed_first(perm, missing)
            seeds = torch.tensor([stable_seed(0, i, name, 0) for i in data.ids], dtype=torch.long)
            cached = model.complete(data.images, missing, perms, seeds, sampler="cached")
            naive = model.complete(data.images, missing, perms, seeds, sampler="naive")
            diff = (cached != naive).flatten(2).any(1)  # [N, H*W] pixel differs in any channel
            cells.append({"checkpoint": Path(path).name, "task": task_name, "order": name, "completions": len(diff),
                          "differing_completions": int(diff.any(1).sum()), "missing_pixels": int(missing.sum()),
                          "differing_pixels": int(diff.sum())})
            say(f"  float32 flips {Path(path).name} {task_name}: {cells[-1]['differing_completions']}/{len(diff)} "
                f"completions, {cells[-1]['differing_pixels']}/{cells[-1]['missing_pixels']} missing pixels differ")
    tot = {k: sum(c[k] for c in cells) for k in ("completions", "differing_completions", "missing_pixels", "differing_pixels")}
    return {**tot, "completion_rate": tot["differing_completions"] / max(tot["completions"], 1),
            "pixel_rate": tot["differing_pixels"] / max(tot["missing_pixels"], 1), "by_cell": cells}


def _complete_table(res: dict[str, Any]) -> str:
    cfg = res["config"]
    keys = [str(b) for b in cfg["batches"]]
    head = "".join(f"{'batch ' + k:>12s}" for k in keys)
    lines = [
        "",
        f"Completion cost, MNIST top half ({cfg['missing_pixels']} pixels), preset {cfg['preset']}, "
        f"{cfg['threads']} torch thread(s)",
        f"  {'':62s}{head}",
    ]
    models = [("lmconv", res)] + ([("pixelcnnpp", res["pixelcnnpp"])] if "pixelcnnpp" in res else [])
    for name, r in models:
        rows = (
            ("cached, in full forward passes", r["forward_equivalents"], "{:12.1f}"),
            (f"naive ({cfg['naive']}), forward passes", r["naive_forward_equivalents"], "{:12.0f}"),
            ("speed-up of cached over naive", r["speedup_vs_naive"], "{:12.0f}"),
        )
        for label, vals, fmt in rows:
            lines.append(f"  {name + ' ' + label:62s}" + "".join(fmt.format(vals[k]) for k in keys))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> None:
    """``python -m lmconv_bench.bench _memory_worker ...`` (internal) or ``conv [--json]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lmconv_bench.bench")
    sub = parser.add_subparsers(dest="cmd", required=True)
    mw = sub.add_parser("_memory_worker", help="internal: peak memory of a few training steps")
    mw.add_argument("--impl", default="fast")
    mw.add_argument("--order", default="s_curve/0")
    mw.add_argument("--preset", default="bench-default")
    mw.add_argument("--shape", default="mnist")
    mw.add_argument("--batch", type=int, default=16)
    mw.add_argument("--steps", type=int, default=2)
    cv = sub.add_parser("conv", help="LMConv vs plain conv network ratios")
    cv.add_argument("--json", action="store_true")
    cv.add_argument("--repeats", type=int, default=3)
    cv.add_argument("--shape", default="mnist")
    cp = sub.add_parser("complete", help="cached vs naive completion cost")
    cp.add_argument("--json", action="store_true")
    cp.add_argument("--preset", default="small")
    cp.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "complete":
        bench_complete(preset=args.preset, json=args.json, threads=args.threads)
    elif args.cmd == "_memory_worker":
        res = _memory_worker(args.impl, args.order, args.preset, args.shape, args.batch, args.steps)
        print(_json.dumps(res))
    else:
        bench_conv(repeats=args.repeats, shape=args.shape, json=args.json)


if __name__ == "__main__":
    main()
