"""Datasets: a registry of image sets as uint8 tensors with stable ids.

One module per source (``mnist``, ``cifar10``, ``celeba``), the shared registry and helpers in
``common``, loading by name in ``loading``; adding a dataset is one module and one entry in
``common.DATASETS`` and ``loading._LOADERS``.

Registered datasets (``DATASETS``):

==============  ==========  ======  ===============================  ==========================
name            C x H x W   n_bits  splits                           id
==============  ==========  ======  ===============================  ==========================
``mnist``        1 x 28 x 28   8    train (60,000) / test (10,000)   official index ``"0"``...
``mnist_binary`` 1 x 28 x 28   1    train / test                     same as mnist
``cifar10``      3 x 32 x 32   8    train (50,000) / test (10,000)   pickle ``filenames`` entry
``celeba32``     3 x 32 x 32   8    train / valid / test (official)  file name ``"182739.jpg"``
``celeba64``     3 x 64 x 64   5    train / valid / test (official)  file name
==============  ==========  ======  ===============================  ==========================

Images are ``uint8 [N, C, H, W]`` with values ``0 .. 2**n_bits - 1``. Models work on
``to_model_range(x, n_bits)`` (float32 in [-1, 1]); ``from_model_range`` inverts it.

Ordering: every split is returned in a fixed order of its ids, so ``limit=N`` takes the same
first N ids whatever the row order of the files on disk (the shared CIFAR-10 copy is re-packed in
a different row order; ids and therefore results are unaffected):

- MNIST ids numerically and CelebA file names lexicographically: the official order, which is
  already class-mixed.
- CIFAR-10 by ``(sha256(file name), file name)``. Its file names start with a sub-class word
  (``"abandoned_ship_s_000213.png"``), so a lexicographic order would put only 4 of the 10
  classes in the first 128 test images; the hash order is a fixed pseudo-random permutation, so
  every prefix is a class-mixed sample (the first 128 test images cover all 10 classes).

Per-dataset details:

- ``mnist``: the uncompressed IDX files in ``<root>/MNIST/raw``, read with torchvision's MNIST
  readers; ``download=True`` uses ``torchvision.datasets.MNIST(root, download=True)``.
- ``mnist_binary``: each pixel is 1 iff ``u < value / 255`` (float32), with ``u ~ U[0, 1)`` drawn
  by ``torch.rand`` from a generator seeded with ``stable_seed("mnist_binary", image_id)``, i.e. a
  Bernoulli(value/255) sample drawn once per image id. The binarized set is therefore fixed: the
  same for every load, batch size, ``limit`` or process.
- ``cifar10``: the python pickles in ``<root>/cifar-10-batches-py`` (read with
  ``encoding="latin1"``). Their md5 is checked against torchvision's ``CIFAR10`` table. The
  pickles are read directly, not through ``torchvision.datasets.CIFAR10``, because that class
  drops the ``filenames`` field that is our image id. If the md5 differs (e.g. a re-packed copy)
  the files are accepted after a content check (shapes, counts, 10 balanced classes,
  ``batches.meta``) with one warning per split and process; a failed content check is a
  ``UserError``. ``download=True`` uses torchvision's downloader.
- ``celeba32`` / ``celeba64``: ``<root>/celeba/img_align_celeba/*.jpg`` and
  ``<root>/celeba/list_eval_partition.txt`` (0 = train, 1 = valid, 2 = test). Each image is
  centre-cropped to 140 x 140 (box ``((W-140)//2, (H-140)//2)``, i.e. (19, 39) on the 178 x 218
  originals) and resized with PIL ``Image.resize(size, Image.BILINEAR, reducing_gap=None)``, which
  is antialiased when downscaling (its filter support is widened by the scale factor). Each size
  is resized from the 140 x 140 crop directly. ``celeba64`` is stored at 5 bits: the 8-bit
  resized value ``x`` becomes the integer ``x >> 3`` in ``0 .. 31`` (not rescaled to 0..255).
  Partition entries whose image is absent are skipped, with one warning giving the count.
  Processed tensors are cached on disk under ``default_cache_dir() / "celeba"``, keyed by a
  sha256 of the split's file names, sizes and mtimes and ``CELEBA_PREPROCESS_VERSION``.
  CelebA cannot be downloaded automatically (Google Drive quota).

Full MNIST / CIFAR-10 splits are held in memory (an in-process cache makes repeated loads cheap;
callers always get fresh tensors). ``clear_caches()`` empties the in-process caches.
"""

from __future__ import annotations

from ..pixels import from_model_range, to_model_range
from .celeba import CELEBA_CROP, CELEBA_PREPROCESS_VERSION, CELEBA_URL
from .common import (
    DATASETS,
    ENV_CACHE,
    ENV_DATA,
    DatasetInfo,
    DataWarning,
    ImageSet,
    default_cache_dir,
    get_dataset_info,
    resolve_data_root,
)
from .loading import clear_caches, inspect_datasets, load_split
from .mnist import binarize

__all__ = [
    "CELEBA_CROP",
    "CELEBA_PREPROCESS_VERSION",
    "CELEBA_URL",
    "DATASETS",
    "ENV_CACHE",
    "ENV_DATA",
    "DataWarning",
    "DatasetInfo",
    "ImageSet",
    "binarize",
    "clear_caches",
    "default_cache_dir",
    "from_model_range",
    "get_dataset_info",
    "inspect_datasets",
    "load_split",
    "resolve_data_root",
    "to_model_range",
]
