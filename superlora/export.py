"""Take a trained adapter elsewhere: the adapter alone, a merged plain timm checkpoint, or ONNX for deployment.

- `export_adapter`: the adapter folder (`save_pretrained` format); needs superlora and the base model to use.
- `export_merged`: W + s·ΔW written into the base weights, saved as `model.safetensors` + `config.json`. For a
  timm architecture it loads with timm alone:
      timm.create_model(ARCH, pretrained=True, num_classes=N,
                        pretrained_cfg_overlay=dict(file="merged/model.safetensors", num_classes=N))
  (add `custom_load=False` to the overlay for AugReg `vit_*` names, whose default loader reads .npz files).
- `export_onnx`: the merged model as ONNX (dynamic batch), checked against PyTorch with onnxruntime.

The adapted model itself is never changed: merging happens on the side and the original weights are restored
bit for bit.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from superlora.base_models import data_config as model_data_config
from superlora.errors import ConfigError, SuperLoRAError
from superlora.inference import jsonable_data_config
from superlora.files import atomic_folder, atomic_write
from superlora.model import SuperLoRAModel

MERGED_WEIGHTS = "model.safetensors"
MERGED_CONFIG = "config.json"
ONNX_NAME = "model.onnx"
ONNX_TOLERANCE = 1e-4
FORMATS = ("adapter", "merged", "onnx")


class ExportError(SuperLoRAError):
    """An export that could not be written or does not reproduce the PyTorch model."""


def _merged_config(model: SuperLoRAModel, classes: Sequence[str] | None) -> dict[str, Any]:
    """config.json of a merged model: what superlora.base_models.load_model reads, plus timm's `label_names`."""
    from superlora.base_models import model_config

    try:
        config = model_config(model.base_model)
    except ConfigError:
        config = {"architecture": None, "num_classes": getattr(model.base_model, "num_classes", None)}
    config["pretrained_cfg"] = jsonable_data_config(model_data_config(model))
    if classes is not None:
        config["label_names"] = list(classes)
    config["merged_adapter"] = {"config": model.config.to_dict(),
                                "adapter_parameters": model.num_trainable_parameters(include_trainable_modules=False)}
    return config


def timm_load_snippet(folder: str | os.PathLike, config: Mapping[str, Any]) -> str:
    """The Python line that loads a merged export with timm alone."""
    architecture = config.get("architecture")
    classes = config.get("num_classes")
    file = Path(folder) / MERGED_WEIGHTS
    return (f"timm.create_model({architecture!r}, pretrained=True, num_classes={classes}, "
            f"pretrained_cfg_overlay=dict(file={str(file)!r}, num_classes={classes}))")


def export_adapter(model: SuperLoRAModel, folder: str | os.PathLike,
                   metadata: Mapping[str, Any] | None = None) -> Path:
    """(a) The adapter alone, in `save_pretrained` format (adapter_config.json + adapter_model.safetensors)."""
    return model.save_pretrained(folder, metadata=dict(metadata or {}))


def export_merged(model: SuperLoRAModel, folder: str | os.PathLike, classes: Sequence[str] | None = None) -> Path:
    """(b) The merged model as a plain checkpoint: folder/model.safetensors + folder/config.json."""
    folder = Path(folder)
    state = model.merged_state_dict()
    config = _merged_config(model, classes)
    # Weights and config as one unit: an interrupted export leaves the previous folder, never a mismatched pair.
    atomic_folder(folder, {
        MERGED_WEIGHTS: lambda tmp: save_file(state, tmp, metadata={"format": "pt"}),
        MERGED_CONFIG: lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"),
    })
    return folder


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    max_abs_difference: float | None  # ONNX vs PyTorch logits on a random batch; None when not checked


def export_onnx(model: SuperLoRAModel, path: str | os.PathLike, classes: Sequence[str] | None = None, *,
                opset: int = 17, check: bool = True, tolerance: float = ONNX_TOLERANCE) -> OnnxExport:
    """(c) The merged model as ONNX with a dynamic batch axis (input `pixel_values`, output `logits`).

    With `check`, onnxruntime runs the file on a random batch and its logits must match the adapted PyTorch
    model within `tolerance`, else ExportError. Class names and normalisation go into the ONNX metadata.
    """
    import onnx

    path = Path(path)
    data_config = model_data_config(model)
    sample = torch.randn(2, *data_config["input_size"], generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(sample.to(device)).float().cpu()
        with model.temporarily_merged(), warnings.catch_warnings():
            # Tracing warns about Python conditions in timm's forward; they are constant for a fixed model.
            warnings.simplefilter("ignore")
            path.parent.mkdir(parents=True, exist_ok=True)

            def write(tmp: str) -> None:
                torch.onnx.export(model, (sample.to(device),), tmp, dynamo=False, opset_version=opset,
                                  input_names=["pixel_values"], output_names=["logits"],
                                  dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
                proto = onnx.load(tmp)
                metadata = {"classes": json.dumps(list(classes) if classes is not None else []),
                            "data_config": json.dumps(jsonable_data_config(data_config)),
                            "producer": "superlora (merged adapter)"}
                for key, value in metadata.items():
                    entry = proto.metadata_props.add()
                    entry.key, entry.value = key, value
                onnx.save(proto, tmp)

            try:
                atomic_write(path, write)
            except SuperLoRAError:
                raise
            except Exception as err:  # the exporter raises many types for unsupported operators
                raise ExportError(f"ONNX export failed ({type(err).__name__}: {err}); the merged timm checkpoint "
                                  "(export format 'merged') still works") from err
    finally:
        model.train(was_training)
    difference = onnx_difference(path, sample, reference) if check else None
    if difference is not None and difference > tolerance:
        raise ExportError(f"{path}: ONNX logits differ from PyTorch by {difference:.2e} (> {tolerance:g}); "
                          "do not deploy this file")
    return OnnxExport(path, difference)


def onnx_difference(path: Path, inputs: Tensor, reference: Tensor) -> float | None:
    """Largest absolute difference between onnxruntime's logits for `inputs` and `reference` (None without ort)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": inputs.numpy()})
    return float((torch.from_numpy(logits) - reference).abs().max())


def export(model: SuperLoRAModel, folder: str | os.PathLike, formats: Sequence[str] = FORMATS, *,
           classes: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the chosen `formats` under `folder` (adapter/, merged/, model.onnx); returns what was written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    folder = Path(folder)
    written: dict[str, Any] = {}
    for name in formats:
        if name == "adapter":
            written["adapter"] = export_adapter(model, folder / "adapter",
                                                {**(metadata or {}), "classes": list(classes or [])})
        elif name == "merged":
            written["merged"] = export_merged(model, folder / "merged", classes)
        else:
            written["onnx"] = export_onnx(model, folder / ONNX_NAME, classes)
    return written
