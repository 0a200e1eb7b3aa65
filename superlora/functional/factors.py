"""Pure tensor functions that build a group tensor from its factors (no modules, no state).

Shapes follow docs/method.md: a `lora` matrix is left @ right^T with left (n1 x r) and right (n2 x r); a Tucker
tensor is core x_1 A_1 ... x_M A_M with A_m (n_m x r_m), where a missing factor is the identity; Kronecker pieces
multiply mode by mode; a Hadamard piece is the element-wise product of two terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import reduce

import torch
from torch import Tensor

from superlora.functional.plan import PiecePlan


def lora_matrix(left: Tensor, right: Tensor) -> Tensor:
    """left (n1 x r) times right^T (r x n2)."""
    return left @ right.transpose(0, 1)


def tucker_tensor(core: Tensor, factors: Sequence[Tensor | None]) -> Tensor:
    """core x_1 factors[0] x_2 ... ; a None factor leaves its mode as it is (identity)."""
    result = core
    for factor in factors:
        # Contract the current leading mode and append the result as the trailing mode: after M steps the modes
        # are back in order.
        if factor is None:
            result = result.movedim(0, -1)
        else:
            # tensordot is not on autocast's lists but its matmul is: keep both operands in the running dtype.
            result = torch.tensordot(result, factor.to(result.dtype), dims=([0], [1]))
    return result


def kronecker(pieces: Sequence[Tensor]) -> Tensor:
    """T_1 (x) T_2 (x) ... mode by mode (all pieces have the same order)."""
    return reduce(torch.kron, pieces)


def _term(plan: PiecePlan, tensors: Mapping[str, Tensor], prefix: str) -> Tensor:
    kind = plan.term
    if kind == "full":
        return tensors[prefix + "full"]
    if kind == "lora":
        return lora_matrix(tensors[prefix + "left"], tensors[prefix + "right"])
    factors = [tensors.get(f"{prefix}factor{mode}") for mode in range(len(plan.shape))]
    return tucker_tensor(tensors[prefix + "core"], factors)


def piece_tensor(plan: PiecePlan, tensors: Mapping[str, Tensor]) -> Tensor:
    """Build one Kronecker piece from its named factor tensors (names as in PiecePlan.parameter_shapes)."""
    if plan.factoring == "hadamard":
        return _term(plan, tensors, "a_") * _term(plan, tensors, "b_")
    return _term(plan, tensors, "")


def group_tensor(pieces: Sequence[PiecePlan], tensors: Sequence[Mapping[str, Tensor]]) -> Tensor:
    """The folded group tensor: the Kronecker product of its pieces."""
    built = [piece_tensor(plan, named) for plan, named in zip(pieces, tensors)]
    return built[0] if len(built) == 1 else kronecker(built)
