"""`SuperLoRAModel`: injects a SuperLoRA adapter into any PyTorch model and manages it.

`get_superlora_model(model, config)` freezes the base model, wraps every targeted `nn.Linear` in an
`AdaptedLinear`, and returns a wrapper with merge/unmerge, save/load, parameter counting and ΔW inspection.
The wrapped model is changed in place (as in PEFT); `unload()` or `merge_and_unload()` give a plain model back.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from superlora.adapter import SuperLoRAAdapter
from superlora.config import SuperLoRAConfig, as_config
from superlora.counting import default_trainable
from superlora.errors import CheckpointError, ConfigError
from superlora.files import atomic_folder
from superlora.functional.plan import AdapterPlan, plan_adapter
from superlora.layers import AdaptedLinear, AdapterRuntime
from superlora.targets import Target, resolve_targets, resolve_trainable

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


class SuperLoRAModel(nn.Module):
    """A base model with a SuperLoRA adapter. Calling it calls the base model with the update applied."""

    def __init__(
        self,
        model: nn.Module,
        config: SuperLoRAConfig,
        trainable: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        config = as_config(config)
        targets = resolve_targets(model, config.targets)
        plan = plan_adapter([t.shape for t in targets], config)
        if trainable is None:
            trainable = default_trainable(model)
        self.trainable_modules = resolve_trainable(model, trainable)
        # Head-only has no targets and an empty adapter; its device does not matter.
        device = model.get_submodule(targets[0].module_name).weight.device if targets else None
        adapter = SuperLoRAAdapter(plan, config)
        self.base_model = model
        self.adapter = adapter.to(device=device, dtype=torch.float32)
        self.config = config
        self.targets = targets
        self.runtime = AdapterRuntime(self.adapter, config.update_scale(plan.rank_terms))

        for param in model.parameters():
            param.requires_grad_(False)
        for name in self.trainable_modules:
            for param in model.get_submodule(name).parameters():
                param.requires_grad_(True)

        parts: dict[str, list[tuple[int, tuple[int, int]]]] = {}
        for index, target in enumerate(targets):
            parts.setdefault(target.module_name, []).append((index, target.rows))
        for module_name, module_parts in parts.items():
            parent, child = _parent(model, module_name)
            setattr(parent, child, AdaptedLinear(getattr(parent, child), module_parts, self.runtime))
        self._hooks = [
            model.register_forward_pre_hook(lambda *_: self.runtime.begin_pass()),
            # always_call: a forward that raised must not leave its pass's ΔW (and graph) behind.
            model.register_forward_hook(lambda *_: self.runtime.end_pass(), always_call=True),
        ]

    # ------------------------------------------------------------------ calling
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def plan(self) -> AdapterPlan:
        """The adapter's plan: groups, folds, pieces and spans (see `superlora.functional.plan`)."""
        return self.adapter.plan

    # ------------------------------------------------------------------ counting and inspection
    def num_trainable_parameters(self, include_trainable_modules: bool = True) -> int:
        count = sum(p.numel() for p in self.adapter.parameters())
        if include_trainable_modules:
            count += sum(
                p.numel() for name in self.trainable_modules for p in self.base_model.get_submodule(name).parameters()
            )
        return count

    def print_trainable_parameters(self) -> None:
        """Print trainable and total parameter counts in PEFT's format."""
        trainable = self.num_trainable_parameters()
        total = sum(p.numel() for p in self.base_model.parameters()) + sum(p.numel() for p in self.adapter.parameters())
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def delta_weights(self) -> dict[str, Tensor]:
        """Target name -> the update s * ΔW that is added to its weight (detached, float32)."""
        with torch.no_grad():
            deltas = self.adapter.delta_weights(include_direct=True, scaling=self.runtime.scaling)
            return {self.targets[t].name: delta.detach() for t, delta in sorted(deltas.items())}

    # ------------------------------------------------------------------ merge / unload
    def _adapted_layers(self) -> Iterator[tuple[str, AdaptedLinear]]:
        for name, module in self.base_model.named_modules():
            if isinstance(module, AdaptedLinear):
                yield name, module

    @torch.no_grad()
    def _apply_deltas(self, sign: float) -> None:
        deltas = self.adapter.delta_weights(include_direct=True)
        for index, target in enumerate(self.targets):
            weight = self.base_model.get_submodule(target.module_name).weight
            start, stop = target.rows
            weight[start:stop].add_(deltas[index].to(weight.dtype), alpha=sign * self.runtime.scaling)

    def merge(self) -> None:
        """Add s * ΔW into the base weights: inference then costs exactly the base model."""
        if self.runtime.merged:
            return
        self._apply_deltas(+1.0)
        self.runtime.merged = True

    def unmerge(self) -> None:
        """Subtract the merged update again (restores the base weights to float rounding)."""
        if not self.runtime.merged:
            return
        self._apply_deltas(-1.0)
        self.runtime.merged = False

    def _restore_layers(self) -> nn.Module:
        for name, layer in list(self._adapted_layers()):
            parent, child = _parent(self.base_model, name)
            setattr(parent, child, layer.base_layer)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return self.base_model

    def merge_and_unload(self) -> nn.Module:
        """Merge the update into the weights and return the plain base model (no superlora modules left)."""
        self.merge()
        return self._restore_layers()

    def unload(self) -> nn.Module:
        """Remove the adapter without merging and return the original base model."""
        self.unmerge()
        return self._restore_layers()

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model without the update inside this context."""
        if self.runtime.merged:
            raise ConfigError("disable_adapter() needs an unmerged model; call unmerge() first")
        previous = self.runtime.enabled
        self.runtime.enabled = False
        try:
            yield
        finally:
            self.runtime.enabled = previous

    @contextlib.contextmanager
    def temporarily_merged(self) -> Iterator[SuperLoRAModel]:
        """Inside the block the update is merged into the base weights; afterwards the exact originals are back.

        The weights are restored from a copy: unmerge() would subtract ΔW again, exact only to rounding.
        """
        if self.runtime.merged:
            yield self
            return
        weights = {t.module_name: self.base_model.get_submodule(t.module_name).weight for t in self.targets}
        originals = {name: weight.detach().clone() for name, weight in weights.items()}
        self.merge()
        try:
            yield self
        finally:
            with torch.no_grad():
                for name, weight in weights.items():
                    weight.copy_(originals[name])
            self.runtime.merged = False

    def merged_state_dict(self) -> dict[str, Tensor]:
        """The base model's state dict with the update merged in, under the plain (un-adapted) names, on CPU.

        It loads into an unadapted copy of the base model; this model is left exactly as it was.
        """
        adapted = [name for name, _ in self._adapted_layers()]
        with self.temporarily_merged():
            state = {}
            for key, value in self.base_model.state_dict().items():
                for name in adapted:
                    prefix = f"{name}.base_layer."
                    if key.startswith(prefix):
                        key = f"{name}.{key[len(prefix):]}"
                        break
                state[key] = value.detach().to("cpu").clone().contiguous()
        return state

    # ------------------------------------------------------------------ save / load
    def _metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "library": "superlora",
            "config": self.config.to_dict(),
            "targets": [{"name": t.name, "shape": list(t.shape)} for t in self.targets],
            "trainable_modules": list(self.trainable_modules),
            "num_adapter_parameters": self.num_trainable_parameters(include_trainable_modules=False),
            "fixed_maps_fingerprint": self.adapter.fixed_maps_fingerprint(),
        }

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Adapter factors (prefix `adapter.`) and trainable modules' tensors (prefix `modules.`), on CPU."""
        state = {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
        for name in self.trainable_modules:
            for key, value in self.base_model.get_submodule(name).state_dict().items():
                state[f"modules.{name}.{key}"] = value
        return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    def save_pretrained(self, directory: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
        """Write adapter_config.json and adapter_model.safetensors (fixed maps are regenerated, never stored).

        The two files are written as a unit (see `atomic_folder`): an interrupted save leaves the previous adapter.
        """
        directory = Path(directory)
        info = self._metadata()
        if metadata:
            info["metadata"] = metadata
        state = self.trainable_state_dict()
        atomic_folder(directory, {
            WEIGHTS_NAME: lambda tmp: save_file(state, tmp, metadata={"format": "pt"}),
            CONFIG_NAME: lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)),
        })
        return directory

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | os.PathLike[str]) -> SuperLoRAModel:
        """Rebuild the adapter on `model` from a directory written by save_pretrained."""
        info = read_adapter_config(directory)
        config = SuperLoRAConfig.from_dict(info["config"])
        try:
            targets = resolve_targets(model, config.targets)
        except ConfigError as err:
            raise CheckpointError(f"this adapter does not fit the model: {err}") from err
        check_targets(info["targets"], targets)
        wrapped = cls(model, config, trainable=info.get("trainable_modules", ()))
        expected = info.get("fixed_maps_fingerprint", "")
        if expected and expected != wrapped.adapter.fixed_maps_fingerprint():
            wrapped.unload()
            raise CheckpointError(
                "the fixed projection/shuffle regenerated from the seed differs from the one the adapter was trained "
                "with (a different torch random generator?); use the torch version recorded with the adapter"
            )
        try:
            wrapped.load_trainable_state_dict(load_file(str(Path(directory) / WEIGHTS_NAME)))
        except (CheckpointError, SafetensorError, OSError) as err:
            wrapped.unload()
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"cannot read {WEIGHTS_NAME} in {directory}: {err}") from err
        return wrapped

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load tensors written by trainable_state_dict, checking every name and shape first.

        On a merged model the old update is unmerged first and the new one merged after loading.
        """
        own = self.trainable_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            problem = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise CheckpointError(f"adapter weights do not match this adapter: {problem}")
        for key, value in own.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"adapter weights do not match: {key} has shape {tuple(state[key].shape)}, "
                    f"this model needs {tuple(value.shape)}"
                )
        # Merged weights hold s·ΔW of the current factors: take it out before the factors change, put the new
        # one in after, so the base weights never carry a stale update.
        was_merged = self.runtime.merged
        self.unmerge()
        try:
            self._copy_trainable(state)
        finally:
            if was_merged:
                self.merge()

    @torch.no_grad()
    def _copy_trainable(self, state: dict[str, Tensor]) -> None:
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if prefix == "adapter":
                target = self.adapter.get_parameter(rest)
            else:
                module_name, _, tensor_name = rest.rpartition(".")
                module = self.base_model.get_submodule(module_name)
                target = getattr(module, tensor_name)
            target.copy_(value.to(target.dtype))


def read_adapter_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed adapter_config.json of a saved adapter, with a clear error when it is missing or broken."""
    path = Path(directory) / CONFIG_NAME
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} not found; point to a folder written by save_pretrained") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(info, dict) or info.get("library") != "superlora" or "config" not in info:
        raise CheckpointError(f"{path} is not a superlora adapter config")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer superlora (format {info['format_version']}); upgrade")
    return info


def check_targets(saved: list[dict[str, Any]], targets: list[Target]) -> None:
    """Raise CheckpointError naming the first target whose name or shape differs from the saved adapter."""
    for index, (entry, target) in enumerate(zip(saved, targets)):
        if entry["name"] != target.name or tuple(entry["shape"]) != target.shape:
            raise CheckpointError(
                f"adapter target {index} was {entry['name']} {tuple(entry['shape'])} but this model has "
                f"{target.name} {target.shape}; load it into the model it was trained on"
            )
    if len(saved) != len(targets):
        which = saved[len(targets)]["name"] if len(saved) > len(targets) else targets[len(saved)].name
        raise CheckpointError(
            f"adapter has {len(saved)} targets but this model has {len(targets)} (first unmatched: {which})"
        )


def get_superlora_model(
    model: nn.Module, config: SuperLoRAConfig | dict[str, Any] | str, trainable: Sequence[str] | None = None
) -> SuperLoRAModel:
    """Freeze `model`, inject the adapter described by `config`, keep `trainable` modules trainable.

    `trainable=None` keeps the model's classifier trainable (timm's `get_classifier()`, else a `head` module,
    else nothing); pass `()` to train the adapter alone.
    """
    return SuperLoRAModel(model, as_config(config), trainable=trainable)
