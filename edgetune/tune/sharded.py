"""Writing the adapter of a run whose weights were sharded across ranks (FSDP, DeepSpeed ZeRO-3).

Every rank takes part in gathering the full state dict; its keys are the unwrapped model's. peft's
own adapter selection walks the live module tree, whose names under nested FSDP units read
`layers.0._fsdp_wrapped_module.self_attn...`, matches none of them and writes an empty adapter
(peft 0.21). So the adapter's tensors are picked here, by the LoRA layers' clean names, and written
in peft's format (keys without the adapter name; adapter_config.json for inference).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

FSDP_SEGMENT = "_fsdp_wrapped_module."


def adapter_tensors(model, state: dict[str, Any], adapter: str = "default") -> dict[str, Any]:
    """The adapter's tensors in `state` (a full, gathered state dict), keyed as peft saves them."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [
        name.replace(FSDP_SEGMENT, "") + "."
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer)
    ]
    out = {}
    for key, tensor in state.items():
        layer = next((p for p in layers if key.startswith(p)), None)
        if layer is None or key[len(layer) :].startswith("base_layer."):
            continue
        parts = key[len(layer) :].split(".")
        if adapter not in parts:
            continue  # another adapter's weights
        parts.remove(adapter)
        if parts == ["lora_magnitude_vector", "weight"]:
            parts = ["lora_magnitude_vector"]  # DoRA: peft saves the vector without ".weight"
        out[layer + ".".join(parts)] = tensor.detach().to("cpu").contiguous()
    return out


def write_adapter(model, state: dict[str, Any], directory: Path, adapter: str = "default") -> int:
    """adapter_model.safetensors and adapter_config.json from a gathered state dict; returns the
    number of tensors written (never zero: an empty adapter is an error, not a file)."""
    from safetensors.torch import save_file

    from edgetune.errors import EdgetuneError

    tensors = adapter_tensors(model, state, adapter)
    if not tensors:
        raise EdgetuneError("the gathered state dict holds no adapter weights; nothing was written")
    save_file(tensors, str(Path(directory) / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.peft_config[adapter])
    config.inference_mode = True
    config.save_pretrained(str(directory))
    return len(tensors)
