"""A LoRA adapter served merged into the base's weights: W = W₀ + (α/r)·B·A, for each layer it adapts.

A merged adapter costs nothing per token: the model runs exactly the base's kernels. Served through PEFT's LoRA
layers instead, the same adapter (r 8 on q/k/v/o) made reinf-tiny 15–20% slower a token on the CPU, and a
Qwen2.5-0.5B-shaped model 9% slower on an H100 (bench/gpu_latency.py). Each swap writes new values into the same
weight tensors, so a compiled decode step or a recorded CUDA graph stays valid for every adapter, of any rank.

`read_adapter` checks a PEFT folder against the base before anything is written; `MergedAdapters` keeps the
base's own values of every layer it changed, so that another adapter, or none, starts from them exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

PEFT_PREFIX = "base_model.model."


class LoraFormatError(ValueError):
    """The folder is not a LoRA adapter that can be merged into this base."""


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer: its name in the base, its A (r × in) and B (out × r), and the scale α/r."""

    module: str
    a: torch.Tensor
    b: torch.Tensor
    scale: float
    fan_in_fan_out: bool

    def delta(self, device: torch.device) -> torch.Tensor:
        d = self.b.to(device, torch.float32) @ self.a.to(device, torch.float32)
        return (d.T if self.fan_in_fan_out else d) * self.scale


def read_adapter(path: Path, model: torch.nn.Module) -> list[LoraLayer]:
    """The layers of the PEFT LoRA adapter in `path`, each checked against a weight of `model` (names, shapes).

    Raises LoraFormatError naming what does not fit: a feature a merge cannot express (DoRA, a LoRA bias, extra
    trained modules), a layer the base does not have, or a shape that differs from the base's."""
    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise LoraFormatError(f"only LoRA adapters can be served; this one is {config.get('peft_type')}")
    for key, what in (
        ("use_dora", "DoRA"),
        ("lora_bias", "a LoRA bias"),
        ("modules_to_save", "fully trained modules (modules_to_save)"),
        ("alpha_pattern", "per-layer alphas (alpha_pattern)"),
        ("layer_replication", "layer replication"),
        ("target_parameters", "LoRA on parameters (target_parameters)"),
    ):
        if config.get(key):
            raise LoraFormatError(f"adapters with {what} are not supported; train a plain LoRA adapter")
    if config.get("bias", "none") != "none":
        raise LoraFormatError(f"adapters that train biases (bias={config['bias']!r}) are not supported")
    weights = _load_weights(path)
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    rslora = bool(config.get("use_rslora"))
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        name = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            head, sep, tail = name.partition(f".{part}.")
            if sep and tail in ("weight", "default.weight"):
                pairs.setdefault(head, {})[part] = tensor
                break
        else:
            raise LoraFormatError(
                f"{key} is not a LoRA A or B matrix; only plain LoRA adapters can be served"
            )
    modules = dict(model.named_modules())
    layers = []
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise LoraFormatError(f"{module} has a lora_A or a lora_B matrix but not both")
        a, b = pair["lora_A"], pair["lora_B"]
        target = getattr(modules.get(module), "weight", None)
        if not isinstance(target, torch.Tensor) or target.dim() != 2:
            raise LoraFormatError(f"the adapter's layer {module} matches no linear layer of the base")
        out_in = (b.shape[0], a.shape[1]) if not fan_in_fan_out else (a.shape[1], b.shape[0])
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or tuple(target.shape) != out_in:
            raise LoraFormatError(
                f"the adapter's {module} (A {tuple(a.shape)}, B {tuple(b.shape)}) does not fit the base's "
                f"weight {tuple(target.shape)}; was it trained on another model?"
            )
        r = a.shape[0]
        layers.append(LoraLayer(module, a, b, alpha / (math.sqrt(r) if rslora else r), fan_in_fan_out))
    if not layers:
        raise LoraFormatError("the adapter holds no LoRA weights")
    return layers


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    file = path / "adapter_model.safetensors"
    if file.is_file():
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    # weights_only: a pickled file runs no code of its own when it is read.
    return torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)


class MergedAdapters:
    """Writes one adapter at a time into `model`'s weights, and the base's values back."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        # The base's value of each weight an adapter has changed, kept on the CPU so that a GPU holds one copy.
        self._base: dict[str, torch.Tensor] = {}

    def merge(self, layers: list[LoraLayer]) -> None:
        """Serve `layers` (from `read_adapter`): every weight any adapter changed starts again from the base's."""
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for layer in layers:
                if layer.module not in self._base:
                    self._base[layer.module] = modules[layer.module].weight.detach().to("cpu", copy=True)
            wanted = {layer.module: layer for layer in layers}
            for module, base in self._base.items():
                weight = modules[module].weight
                layer = wanted.get(module)
                if layer is None:
                    weight.copy_(base)
                else:
                    merged = base.to(weight.device, torch.float32) + layer.delta(weight.device)
                    weight.copy_(merged.to(weight.dtype))

    def clear(self) -> None:
        """Serve the base: its own values, bit for bit."""
        self.merge([])
