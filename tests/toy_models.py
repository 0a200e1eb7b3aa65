"""Small models shared by the engine tests (kept tiny so property tests run fast on a 2-core CPU)."""

from __future__ import annotations

import timm
import torch
from torch import nn


def tiny_vit(num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A timm VisionTransformer (fused qkv) small enough to build hundreds of times in a test."""
    torch.manual_seed(seed)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=num_classes
    ).eval()


class TwoLayerMLP(nn.Module):
    """A plain MLP: the method is not tied to vision or to timm."""

    def __init__(self, sizes: tuple[int, int, int, int] = (12, 20, 16, 4), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.head = nn.Linear(sizes[2], sizes[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def vit_input(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def randomize_trainable(model: nn.Module, scale: float = 0.1, seed: int = 3) -> None:
    """Give every trainable tensor non-zero values (initial adapters are zero by design)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
