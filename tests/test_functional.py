"""The pure tensor functions: plan arithmetic, factor builders, Walsh-Hadamard, Fastfood, shuffle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.tuners.lokr.layer import factorization

from superlora.functional import projection as proj
from superlora.functional.factors import kronecker, lora_matrix, tucker_tensor
from superlora.functional.plan import balanced_split, ceil_root, projected_size


@pytest.mark.parametrize(("value", "order", "expected"), [(64, 3, 4), (65, 3, 5), (14_155_776, 2, 3763),
                                                          (14_155_776, 3, 242), (14_155_776, 5, 27), (5653, 5, 6),
                                                          (1, 4, 1), (125, 3, 5), (2**40, 8, 32)])
def test_ceil_root_is_exact(value, order, expected):
    assert ceil_root(value, order) == expected
    assert expected**order >= value > (expected - 1) ** order or value == 1


def test_projected_size_uses_the_decimal_ratio():
    assert projected_size(0.1, 10) == 1  # binary 0.1 * 10 is 1.0000000000000000555
    assert projected_size(0.01, 141_312) == 1414
    assert projected_size(0.5, 141_312) == 70_656
    assert projected_size(1e-9, 10) == 1


@pytest.mark.parametrize("side", [1, 2, 7, 12, 16, 128, 192, 255, 256, 768, 2304, 3072, 1000, 97 * 89])
def test_balanced_split_matches_lokr_factorization(side):
    assert balanced_split(side, 2) == factorization(side, -1)


@given(st.integers(1, 5000), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_balanced_split_multiplies_back(side, pieces):
    parts = balanced_split(side, pieces)
    assert len(parts) == pieces and math.prod(parts) == side


def test_tucker_tensor_matches_einsum_and_identity_modes():
    gen = torch.Generator().manual_seed(0)
    core = torch.randn(2, 3, 4, generator=gen)
    a, b, c = (torch.randn(n, r, generator=gen) for n, r in [(5, 2), (6, 3), (7, 4)])
    expected = torch.einsum("pqr,ip,jq,kr->ijk", core, a, b, c)
    torch.testing.assert_close(tucker_tensor(core, [a, b, c]), expected)
    # An identity mode keeps the core's side: LoTR's per-layer core slices.
    stacked = tucker_tensor(torch.randn(4, 2, 3, generator=gen), [None, a, b])
    assert stacked.shape == (4, 5, 6)


def test_lora_and_kronecker_builders():
    left, right = torch.randn(5, 2), torch.randn(7, 2)
    torch.testing.assert_close(lora_matrix(left, right), left @ right.T)
    a, b, c = torch.randn(2, 3), torch.randn(4, 5), torch.randn(1, 2)
    torch.testing.assert_close(kronecker([a, b, c]), torch.kron(torch.kron(a, b), c))


@pytest.mark.parametrize("n", [1, 2, 8, 64, 128, 2**11])
def test_fwht_equals_sylvester_matrix(n):
    x = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(proj.fwht(x), x @ proj.hadamard_matrix(n, torch.float64))


def _dense_fastfood(params, in_size, out_size):
    """The explicit matrix S H G Pi H B of every block, stacked: the reference the fast path must equal."""
    signs, gauss, scale = params["signs"].double(), params["gauss"].double(), params["scale"].double()
    blocks, n = gauss.shape
    hadamard = proj.hadamard_matrix(n, torch.float64)
    perm = params["perm"].long().view(blocks, n)
    rows = []
    for b in range(blocks):
        permutation = torch.zeros(n, n, dtype=torch.float64)
        permutation[torch.arange(n), perm[b]] = 1.0
        block = torch.diag(scale[b]) @ hadamard @ torch.diag(gauss[b]) @ permutation @ hadamard @ torch.diag(signs)
        rows.append(block[:, :in_size])
    return torch.cat(rows)[:out_size]


@pytest.mark.parametrize(("in_size", "out_size"), [(5, 40), (16, 16), (33, 200), (64, 1000), (1, 7)])
def test_fastfood_equals_its_dense_matrix(in_size, out_size):
    params = proj.fastfood_params(in_size, out_size, seed=11)
    dense = _dense_fastfood(params, in_size, out_size)
    x = torch.randn(in_size, dtype=torch.float64)
    fast = proj.fastfood(x, {k: v.double() if v.is_floating_point() else v for k, v in params.items()}, out_size)
    torch.testing.assert_close(fast, dense @ x)


def test_fastfood_gradient_equals_transposed_dense_matrix():
    params = proj.fastfood_params(20, 150, seed=2)
    params = {k: v.double() if v.is_floating_point() else v for k, v in params.items()}
    dense = _dense_fastfood(params, 20, 150)
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(150, dtype=torch.float64)
    proj.fastfood(x, params, 150).backward(upstream)
    torch.testing.assert_close(x.grad, dense.T @ upstream)


def test_permute_gathers_and_its_gradient_is_the_inverse_gather():
    perm = proj.shuffle_permutation(50, seed=1)
    x = torch.randn(50, requires_grad=True)
    y = proj.permute(x, perm, proj.inverse_permutation(perm))
    assert torch.equal(y, x.detach()[perm])
    upstream = torch.randn(50)
    y.backward(upstream)
    expected = torch.zeros(50).index_add_(0, perm, upstream)
    assert torch.equal(x.grad, expected)


def test_projection_is_fixed_by_its_seed():
    first = proj.fastfood_params(100, 3000, seed=5)
    again = proj.fastfood_params(100, 3000, seed=5)
    other = proj.fastfood_params(100, 3000, seed=6)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["gauss"], other["gauss"])
    assert torch.equal(proj.gaussian_matrix(10, 30, 1), proj.gaussian_matrix(10, 30, 1))
    assert proj.projection_fingerprint(first) == proj.projection_fingerprint(again)
    assert proj.projection_fingerprint(first) != proj.projection_fingerprint(other)


@pytest.mark.parametrize("kind", ["fastfood", "gaussian"])
def test_projection_preserves_norm_in_expectation(kind):
    in_size, out_size = 200, 3000
    ratios = []
    for seed in range(20):
        x = torch.randn(in_size, generator=torch.Generator().manual_seed(100 + seed))
        if kind == "fastfood":
            y = proj.fastfood(x, proj.fastfood_params(in_size, out_size, seed), out_size)
        else:
            y = proj.gaussian_matrix(in_size, out_size, seed) @ x
        ratios.append((y.norm() / x.norm()).item() ** 2)
    assert abs(sum(ratios) / len(ratios) - 1.0) < 0.1


def test_shuffle_is_a_permutation_and_its_inverse_undoes_it():
    perm = proj.shuffle_permutation(10_000, seed=3)
    assert torch.equal(perm.sort().values, torch.arange(10_000))
    assert not torch.equal(perm, torch.arange(10_000))
    inverse = proj.inverse_permutation(perm)
    x = torch.randn(10_000)
    assert torch.equal(x[perm][inverse], x)
    assert torch.equal(perm, proj.shuffle_permutation(10_000, seed=3))


def test_derived_seeds_are_stable_and_distinct():
    assert proj.derive_seed(0, "fastfood", 1) == proj.derive_seed(0, "fastfood", 1)
    assert len({proj.derive_seed(0, "projection", g) for g in range(100)}) == 100
    assert 0 <= proj.derive_seed(2**40, "x") < 2**63


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_chained_tucker_product_runs_under_autocast(dtype):
    # tensordot is not on autocast's lists but its matmul is: the first contraction returns 16-bit values and the
    # next factor is still float32, which crashed with "both inputs should have same dtype".
    gen = torch.Generator().manual_seed(0)
    core = torch.randn(2, 3, 2, generator=gen)
    factors = [torch.randn(4, 2, generator=gen), None, torch.randn(5, 2, generator=gen)]
    exact = torch.einsum("abc,ia,kc->ibk", core, factors[0], factors[2])
    with torch.autocast("cpu", dtype=dtype):
        result = tucker_tensor(core, factors)
    assert result.shape == (4, 3, 5)
    torch.testing.assert_close(result.float(), exact, rtol=0.05, atol=0.05)


def test_normalising_inside_fastfood_keeps_the_map():
    # Dividing by sqrt(n) before each transform and multiplying S by n is the same linear map (to rounding).
    params = proj.fastfood_params(300, 1000, seed=3)
    blocks, n = params["gauss"].shape
    x = torch.randn(300, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (0, n - 300))
    shared = proj.fwht(padded * params["signs"])
    h = proj.permute(shared, params["perm"], params["unperm"], blocks).view(blocks, n) * params["gauss"]
    unnormalised = (proj.fwht(h) * params["scale"]).reshape(-1)[:1000]
    torch.testing.assert_close(proj.fastfood(x, params, 1000), unnormalised, rtol=1e-5, atol=1e-6)
