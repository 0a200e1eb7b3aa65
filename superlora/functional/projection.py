"""Fixed random projections that lift P trainable entries to D update entries, and the shuffle permutation.

Every map here is regenerated from an integer seed with torch's CPU generator (never stored in checkpoints)
and has no trainable parameters. Normalisation: both projections approximate a D x P matrix with i.i.d.
N(0, 1/D) entries, so E ||F x||^2 = ||x||^2 — the update vector has the norm of the trainable vector.

Fastfood (Le, Sarlós, Smola, ICML 2013) replaces the dense matrix by blocks V = S H G Pi H B of size n = 2^k >= P:
B random signs, H the (unnormalised) Walsh-Hadamard transform, Pi a permutation, G Gaussian diagonal, S a
diagonal that gives each row the chi-distributed norm of a Gaussian row. ceil(D / n) blocks are stacked and the
first D outputs kept; the blocks share B (so H B x is computed once) and have their own Pi, G and S.
Cost O(D log n), memory O(D).
"""

from __future__ import annotations

import functools
import hashlib
import math

import torch
from torch import Tensor

# Largest Hadamard block applied as one matmul inside the transform: 2^7 keeps the FLOPs low (2 n 128 per
# axis) while each matmul is still large enough to run near peak on a CPU.
_RADIX_BITS = 7
# A dense Gaussian map is a reference for small groups; beyond this many entries use Fastfood.
MAX_GAUSSIAN_ENTRIES = 2**25


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for one purpose (e.g. ("fastfood", group)) that is stable across runs and machines."""
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, *keys: object) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, *keys))


def shuffle_permutation(size: int, seed: int) -> Tensor:
    """A fixed random permutation of range(size) (int64)."""
    return torch.randperm(size, generator=generator(seed, "shuffle"))


def inverse_permutation(perm: Tensor) -> Tensor:
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), dtype=perm.dtype)
    return inverse


@functools.lru_cache(maxsize=64)
def _cached_hadamard(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return hadamard_matrix(size, dtype).to(device)


class _Gather(torch.autograd.Function):
    """y = x[index] where `index` holds `blocks` permutations of range(len(x)), one after another.

    The gradient is gathered by the inverse permutations and summed over blocks. Autograd's default backward
    for index_select is a scatter-add into a zero tensor, several times slower on CPUs for millions of random
    indices.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor, blocks: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(inverse)
        ctx.blocks = blocks
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        gathered = grad.index_select(0, inverse)
        if ctx.blocks > 1:
            gathered = gathered.view(ctx.blocks, -1).sum(0)
        return gathered, None, None, None


def permute(x: Tensor, index: Tensor, inverse: Tensor, blocks: int = 1) -> Tensor:
    """x[index] for a 1-D x, where `index` is `blocks` permutations of range(len(x)) concatenated and
    `inverse` their inverses, each offset by its block's position in the output."""
    return _Gather.apply(x, index, inverse, blocks)


def hadamard_matrix(size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sylvester's +-1 Hadamard matrix of a power-of-two size."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {size}")
    matrix = torch.ones(1, 1, dtype=dtype)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def _radix_sizes(n: int) -> list[int]:
    bits = n.bit_length() - 1
    steps = max(1, math.ceil(bits / _RADIX_BITS))
    sizes = [bits // steps + (1 if i < bits % steps else 0) for i in range(steps)]
    return [2**b for b in sizes if b > 0]


def fwht(x: Tensor) -> Tensor:
    """Unnormalised Walsh-Hadamard transform along the last dimension (a power of two), batched and vectorised.

    H_n is the Kronecker product of small Hadamard matrices H_a, so viewing the vector as a tensor with one axis
    per factor, the transform multiplies every axis by its H_a. Each axis is one (batched) matmul on a strided
    view, with no transposed copies; its FLOPs are 2 n a per axis instead of the n^2 of a dense product.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    if n == 1:
        return x
    batch = x.shape[:-1]
    sizes = _radix_sizes(n)
    result = x.reshape(-1, n)
    outer = result.shape[0]
    for size in sizes:
        block = _cached_hadamard(size, x.dtype, x.device)
        inner = n // size
        if inner == 1:
            result = result.reshape(outer, size) @ block
        else:
            result = torch.matmul(block, result.reshape(outer, size, inner))
        outer *= size
        n = inner
    return result.reshape(*batch, x.shape[-1])


def fastfood_block_size(in_size: int) -> int:
    return 1 << max(0, (in_size - 1).bit_length())


def fastfood_params(in_size: int, out_size: int, seed: int) -> dict[str, Tensor]:
    """The fixed diagonals and permutations of a Fastfood map R^in_size -> R^out_size."""
    n = fastfood_block_size(in_size)
    blocks = math.ceil(out_size / n)
    gen = generator(seed, "fastfood", in_size, out_size)
    signs = torch.randint(0, 2, (n,), generator=gen).mul_(2).sub_(1).float()
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(blocks)])
    gauss = torch.randn(blocks, n, generator=gen)
    # chi_n row norms via the normal approximation chi_n ~ N(sqrt(n - 1/2), 1/2), accurate for the n used here.
    chi = (math.sqrt(max(n - 0.5, 0.5)) + math.sqrt(0.5) * torch.randn(blocks, n, generator=gen)).clamp_min(0)
    scale = chi / (gauss.norm(dim=1, keepdim=True) * math.sqrt(n * out_size))
    offsets = (torch.arange(blocks) * n).unsqueeze(1)
    inverse = torch.stack([inverse_permutation(p) for p in perm]) + offsets
    # int32 indices halve the buffers' memory; index_select accepts them.
    return {"signs": signs, "perm": perm.reshape(-1).int(), "unperm": inverse.reshape(-1).int(), "gauss": gauss,
            "scale": scale}


def fastfood(x: Tensor, params: dict[str, Tensor], out_size: int) -> Tensor:
    """Apply the Fastfood map to a vector x of length in_size."""
    blocks, n = params["gauss"].shape
    padded = torch.nn.functional.pad(x, (0, n - x.shape[-1]))
    # Each unnormalised transform multiplies norms by sqrt(n) (2^11 for n = 2^22, past fp16's range after two),
    # so divide by sqrt(n) before each one and multiply the n back into the final diagonal S.
    norm = 1.0 / math.sqrt(n)
    # H B x is shared by all blocks; they differ in Pi, G and S.
    shared = fwht(padded * (params["signs"] * norm))
    h = permute(shared, params["perm"], params["unperm"], blocks).view(blocks, n) * (params["gauss"] * norm)
    h = fwht(h) * (params["scale"] * n)
    return h.reshape(-1)[:out_size]


def gaussian_matrix(in_size: int, out_size: int, seed: int) -> Tensor:
    """Dense out_size x in_size matrix with i.i.d. N(0, 1/out_size) entries (the simple reference map)."""
    gen = generator(seed, "gaussian", in_size, out_size)
    return torch.randn(out_size, in_size, generator=gen) / math.sqrt(out_size)


def projection_fingerprint(params: dict[str, Tensor]) -> str:
    """A short checksum of a regenerated projection, stored with adapters to detect generator changes."""
    digest = hashlib.blake2b(digest_size=8)
    for key in sorted(params):
        digest.update(params[key].detach().cpu().contiguous().numpy().tobytes()[:4096])
    return digest.hexdigest()
