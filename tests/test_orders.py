"""Generation orders: permutations, dihedral variants, locality, kernel masks, observed_first."""

import pytest
import torch

from lmconv_bench import orders as O
from lmconv_bench.errors import UserError
from lmconv_bench.masks import make_mask


@pytest.mark.parametrize("size", [28, 32, 64])
def test_every_named_order_is_a_permutation(size):
    names = O.parse_spec("all", size, size)
    assert len(names) == 32
    for name in names:
        perm = O.get_order(name, size, size)
        assert perm.dtype == torch.long and perm.shape == (size * size,)
        assert torch.equal(perm.sort().values, torch.arange(size * size)), name


@pytest.mark.parametrize("size", [28, 32, 64])
def test_variants_are_distinct(size):
    for base in O.BASE_ORDERS:
        perms = {tuple(O.get_order(f"{base}/{k}", size, size).tolist()) for k in range(8)}
        assert len(perms) == 8, base


def test_variant_composition_matches_hand_computation():
    # 2x2 raster: (0,0),(0,1),(1,0),(1,1). T first, then reflections (Rr∘T = transpose, then rows).
    expected = {
        0: [0, 1, 2, 3],  # identity
        1: [2, 3, 0, 1],  # Rr
        2: [1, 0, 3, 2],  # Rc
        3: [3, 2, 1, 0],  # Rr∘Rc
        4: [0, 2, 1, 3],  # T
        5: [2, 0, 3, 1],  # Rr∘T
        6: [1, 3, 0, 2],  # Rc∘T
        7: [3, 1, 2, 0],  # Rr∘Rc∘T
    }
    for k, want in expected.items():
        assert O.get_order(f"raster/{k}", 2, 2).tolist() == want, k
    # non-square: reflections work, transposes are refused
    assert O.get_order("raster/1", 2, 3).tolist() == [3, 4, 5, 0, 1, 2]
    assert O.get_order("s_curve/2", 2, 3).tolist() == [2, 1, 0, 3, 4, 5]
    with pytest.raises(UserError, match="square"):
        O.get_order("raster/4", 2, 3)
    with pytest.raises(UserError, match="square"):
        O.parse_spec("hilbert/6", 28, 30)


def test_s_curve_and_center_last_definitions():
    assert O.get_order("s_curve", 3, 3).tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    # 4x4: the centre square is rows/cols 1..2; it goes last, in its own s_curve sequence
    cl = O.get_order("center_last", 4, 4).tolist()
    assert cl[-4:] == [6, 5, 9, 10]
    assert cl[:-4] == [i for i in O.get_order("s_curve", 4, 4).tolist() if i not in (5, 6, 9, 10)]


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("base", ["hilbert", "s_curve"])
def test_steps_are_four_neighbour_moves(size, base):
    for k in range(8):
        perm = O.get_order(f"{base}/{k}", size, size)
        r, c = perm // size, perm % size
        steps = r.diff().abs() + c.diff().abs()
        assert torch.all(steps == 1), (base, k, size)


def test_spec_parsing():
    assert O.parse_spec("s_curve", 8, 8) == [f"s_curve/{k}" for k in range(8)]
    assert O.parse_spec("raster/0, hilbert/3,raster/0", 8, 8) == ["raster/0", "hilbert/3"]
    assert len(O.parse_spec("all,raster", 8, 8)) == 32
    assert len(O.parse_spec("hilbert", 8, 10)) == 4  # non-square: variants 0..3 only
    with pytest.raises(UserError, match='did you mean "s_curve"'):
        O.parse_spec("s_curv", 8, 8)
    with pytest.raises(UserError, match="variant"):
        O.parse_spec("raster/9", 8, 8)
    with pytest.raises(UserError):
        O.parse_spec("", 8, 8)


def _brute_force_masks(perm, h, w, k, d, center):
    rank = {int(p): t for t, p in enumerate(perm.tolist())}
    out = torch.zeros(h, w, k, k, dtype=torch.bool)
    for r in range(h):
        for c in range(w):
            for i in range(k):
                for j in range(k):
                    rr, cc = r + (i - k // 2) * d, c + (j - k // 2) * d
                    if 0 <= rr < h and 0 <= cc < w and rank[rr * w + cc] < rank[r * w + c]:
                        out[r, c, i, j] = True
            if center:
                out[r, c, k // 2, k // 2] = True
    return out


@pytest.mark.parametrize("k,d", [(3, 1), (3, 2), (5, 1)])
def test_kernel_masks_are_causal(k, d):
    g = torch.Generator().manual_seed(0)
    h, w = 6, 7
    perms = [O.get_order(n, h, w) for n in ("raster/0", "s_curve/3", "hilbert/1", "center_last/2")]
    perms.append(torch.randperm(h * w, generator=g))
    for perm in perms:
        for center in (False, True):
            m = O.kernel_masks(perm, h, w, k, d, include_center=center)
            assert m.shape == (h, w, k, k)
            assert torch.equal(m, _brute_force_masks(perm, h, w, k, d, center))
            assert bool(m[..., k // 2, k // 2].all()) == center
    # batched orders give the per-image masks
    batch = torch.stack(perms)
    mb = O.kernel_masks(batch, h, w, k, d, include_center=False)
    for i, perm in enumerate(perms):
        assert torch.equal(mb[i], O.kernel_masks(perm, h, w, k, d, include_center=False))


def test_raster_type_a_mask_sees_only_the_past():
    m = O.kernel_masks(O.get_order("raster/0", 5, 5), 5, 5, 3, 1, include_center=False)
    assert m[2, 2].int().tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert not m[0, 0].any()  # the first pixel sees nothing


@pytest.mark.parametrize("family", ["center", "top_half", "bottom_half", "random"])
def test_observed_first_puts_missing_last(family):
    h = w = 28
    ids = [str(i) for i in range(5)]
    missing = torch.stack([make_mask(family, {}, h, w, i, seed=1) for i in ids])
    for name in ("raster/0", "s_curve/5", "hilbert/2", "center_last/7"):
        perm = O.get_order(name, h, w)
        of = O.observed_first(perm, missing)  # [B, H*W]
        assert of.shape == (5, h * w)
        for b in range(5):
            flat = missing[b].flatten()
            n_obs = int((~flat).sum())
            assert not flat[of[b, :n_obs]].any() and flat[of[b, n_obs:]].all()
            # each group keeps the original order's sequence
            keep = [p for p in perm.tolist() if not flat[p]] + [p for p in perm.tolist() if flat[p]]
            assert of[b].tolist() == keep
        assert bool(O.is_observed_first(of, missing).all())


def test_is_observed_first_decides_context():
    h = w = 8
    bottom = make_mask("bottom_half", {}, h, w)
    top = make_mask("top_half", {}, h, w)
    raster = O.get_order("raster/0", h, w)
    assert bool(O.is_observed_first(raster, bottom))  # raster on bottom_half: all_observed
    assert not bool(O.is_observed_first(raster, top))  # raster on top_half: preceding_only
    assert bool(O.is_observed_first(O.observed_first(raster, top), top))


def test_orders_cli_json(tmp_path):
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lmconv_bench", "orders", "--size", "28x28", "--orders", "all", "--json",
         "--plot", str(tmp_path / "orders.png")],
        capture_output=True, text=True, check=True,
    )
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(d) == 32 and d["raster/0"][:3] == [0, 1, 2]
    assert (tmp_path / "orders.png").stat().st_size > 1000
