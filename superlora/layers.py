"""`AdaptedLinear`: the wrapper that adds the adapter's update to one `nn.Linear` (whole or by row blocks).

The layer holds no factors of its own. It asks the shared `AdapterRuntime` for this pass's ΔW (built once per
model forward for all targets by `functional.delta`, unscaled) or, for LoRA-form targets, applies x right left^T
without building ΔW. The scale s is applied here, inside the layer's own products (see `functional.delta`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from superlora.adapter import SuperLoRAAdapter


class AdapterRuntime:
    """State shared by the model wrapper and its layers: on/off, merged, and the caches of ΔW.

    Two caches: one per forward pass with autograd (all layers of one pass share one ΔW graph), and one for
    no-grad calls (repeated inference does not rebuild ΔW). The no-grad cache is served only while the adapter's
    values are equal to a snapshot taken when it was built: version counters miss writes through `.data`, and a
    comparison of the (small) factors costs far less than rebuilding ΔW.
    """

    def __init__(self, adapter: SuperLoRAAdapter, scaling: float) -> None:
        self.adapter = adapter
        self.scaling = scaling
        self.enabled = True
        self.merged = False
        self._in_pass = False
        self._pass_cache: dict[int, Tensor] | None = None
        self._frozen_cache: tuple[tuple, list[Tensor], dict[int, Tensor]] | None = None

    def begin_pass(self) -> None:
        self._in_pass, self._pass_cache = True, None

    def end_pass(self) -> None:
        self._in_pass, self._pass_cache = False, None

    def _frozen_key(self, params: list[Tensor]) -> tuple:
        """What the values alone do not show: which tensors, where, and the autocast state ΔW meets."""
        device = params[0].device.type
        autocast = (
            (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
            if torch.amp.is_autocast_available(device) else None
        )
        return autocast, tuple((id(p), p.device, p.dtype, p.shape) for p in params)

    def _frozen_deltas(self) -> dict[int, Tensor]:
        params = list(self.adapter.parameters())
        if not params or params[0].is_meta:  # shapes only: no values to compare, and nothing costly to save
            self._frozen_cache = None
            return self.adapter.delta_weights()
        key = self._frozen_key(params)
        cached = self._frozen_cache
        if cached is not None and cached[0] == key and all(map(torch.equal, cached[1], params)):
            return cached[2]
        self._frozen_cache = None  # drop the old ΔW before building the new one (peak memory)
        deltas = self.adapter.delta_weights()
        self._frozen_cache = (key, [p.detach().clone() for p in params], deltas)
        return deltas

    def deltas(self) -> dict[int, Tensor]:
        """Unscaled ΔW of every non-direct target, computed at most once per forward pass."""
        if not torch.is_grad_enabled():
            # Without autograd the tensors carry no graph, so they stay valid until a parameter changes.
            return self._frozen_deltas()
        self._frozen_cache = None
        if not self._in_pass:
            # Called outside the model's forward (a sub-module used on its own): correct, just not shared.
            return self.adapter.delta_weights()
        if self._pass_cache is None:
            self._pass_cache = self.adapter.delta_weights()
        return self._pass_cache


class _LinearWithRowUpdates(torch.autograd.Function):
    """F.linear(x, W + s·ΔW) for a frozen W whose row blocks `rows` get the updates ΔW.

    Autograd on the merged weight would compute the gradient of every row of W; only the adapted rows need one
    (for q and v of a fused qkv layer that saves a third of the weight-gradient matmul).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scale, rows, *deltas):  # type: ignore[override]
        merged = weight.detach().clone()
        for (start, stop), delta in zip(rows, deltas):
            merged[start:stop].add_(delta.detach().to(merged.dtype), alpha=scale)
        ctx.save_for_backward(x, merged)
        ctx.scale, ctx.rows, ctx.delta_dtypes = scale, rows, [d.dtype for d in deltas]
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, merged = ctx.saved_tensors
        # Under autocast the output (and so its gradient) may be in a lower precision than the saved tensors.
        dtype = grad_out.dtype
        grad_x = grad_out @ merged.to(dtype) if ctx.needs_input_grad[0] else None
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        flat_x = x.reshape(-1, x.shape[-1]).to(dtype)
        grad_deltas = [
            (flat_grad[:, start:stop].transpose(0, 1) @ flat_x).mul_(ctx.scale).to(delta_dtype)
            for (start, stop), delta_dtype in zip(ctx.rows, ctx.delta_dtypes)
        ]
        return (grad_x, None, None, None, None, *grad_deltas)


def _reduced_precision(x: Tensor, weight: Tensor) -> bool:
    """Whether this layer's matmul runs in 16-bit floats (autocast on x's device, or a half-precision weight)."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.finfo(torch.get_autocast_dtype(device)).bits < 32
    return torch.finfo(weight.dtype).bits < 32


class AdaptedLinear(nn.Module):
    """A Linear layer plus s * ΔW on some of its row blocks. `parts` are (target index, (row start, row stop))."""

    def __init__(self, base_layer: nn.Linear, parts: list[tuple[int, tuple[int, int]]], runtime: AdapterRuntime) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.parts = sorted(parts, key=lambda part: part[1])
        self.runtime = runtime
        direct = runtime.adapter.direct_targets
        self._dense = [(t, rows) for t, rows in self.parts if t not in direct]
        self._direct = [(t, rows) for t, rows in self.parts if t in direct]

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def extra_repr(self) -> str:
        return "targets=" + ", ".join(f"{t}:rows[{a}:{b}]" for t, (a, b) in self.parts)

    def _row_blocks(self, pieces: list[tuple[tuple[int, int], Tensor]], fill: Tensor, dim: int) -> Tensor:
        """Concatenate `pieces` at their row ranges along `dim`, filling the gaps from `fill`."""
        blocks, cursor = [], 0
        for (start, stop), piece in pieces:
            if start > cursor:
                blocks.append(fill.narrow(dim, cursor, start - cursor))
            blocks.append(piece)
            cursor = stop
        if cursor < self.out_features:
            blocks.append(fill.narrow(dim, cursor, self.out_features - cursor))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim)

    def forward(self, x: Tensor) -> Tensor:
        runtime = self.runtime
        if not runtime.enabled or runtime.merged:
            return self.base_layer(x)
        scale = runtime.scaling
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if not self._dense:
            out = F.linear(x, weight, bias)
        elif _reduced_precision(x, weight):
            # W + s·ΔW rounded to 16 bits keeps only 8 (bf16) or 11 (fp16) significant bits of W, which swallow
            # much of a small update; x (s·ΔW)^T as its own matmul keeps ΔW's relative precision.
            deltas = runtime.deltas()
            pieces = [(rows, F.linear(x, (deltas[t] * scale).to(x.dtype))) for t, rows in self._dense]
            out = F.linear(x, weight, bias)
            out = out + self._row_blocks(pieces, out.new_zeros(()).expand(out.shape), -1).to(out.dtype)
        elif weight.requires_grad or (bias is not None and bias.requires_grad):
            # The base layer itself is being trained: let autograd handle the merged weight.
            deltas = runtime.deltas()
            pieces = [
                (rows, torch.add(weight[rows[0] : rows[1]], deltas[t].to(weight.dtype), alpha=scale))
                for t, rows in self._dense
            ]
            out = F.linear(x, self._row_blocks(pieces, weight, 0), bias)
        else:
            deltas = runtime.deltas()
            rows = [rows for _, rows in self._dense]
            out = _LinearWithRowUpdates.apply(x, weight, bias, scale, rows, *(deltas[t] for t, _ in self._dense))
        if self._direct:
            adapter = runtime.adapter
            pieces = []
            for t, rows in self._direct:
                left, right = adapter.direct_factors(t)  # type: ignore[misc]
                # Scale the rank-r intermediate, not the full-width output.
                pieces.append((rows, ((x.to(right.dtype) @ right) * scale) @ left.transpose(0, 1)))
            update = self._row_blocks(pieces, out.new_zeros(()).expand(out.shape), -1)
            out = out + update.to(out.dtype)
        return out
