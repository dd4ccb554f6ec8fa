"""An importance matrix for llama.cpp's quantiser, computed by edgetune from the fine-tuning data.

For every linear layer the quantiser wants, per input column, the mean of the squared input
activation over calibration tokens (llama.cpp's imatrix definition): columns that carry large
activations get more precision. We run the merged torch model over the training split rendered
with the training template, so the quantiser protects what the tuned task uses, and store the
result as safetensors (keyed by GGUF tensor name) beside the exports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetune.errors import InputError


def within(sequences: list[list[int]], max_tokens: int) -> list[list[int]]:
    """The sequences compute_imatrix reads: up to the one that reaches max_tokens."""
    used, taken = 0, []
    for ids in sequences:
        if used >= max_tokens:
            break
        taken.append(ids)
        used += len(ids)
    return taken


def compute_imatrix(
    model_dir: Path, sequences: list[list[int]], max_tokens: int = 32768, tick=lambda: None
) -> dict[str, np.ndarray]:
    """{GGUF tensor name: mean squared input per column (float32)} over up to max_tokens tokens
    (the sequences of `within(sequences, max_tokens)`); `tick()` after each sequence."""
    import gguf
    import torch
    from transformers import AutoConfig

    from edgetune.export.gguf_arch import arch_for
    from edgetune.models import load_causal_lm

    config = AutoConfig.from_pretrained(str(model_dir))
    _, spec = arch_for(config)
    names = gguf.get_tensor_name_map(spec.gguf_arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    model = load_causal_lm(model_dir, dtype=torch.float32).eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for hf_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if hf_name == "lm_head" and tied:
            target = names.get_name(
                "model.embed_tokens.weight", try_suffixes=(".weight",)
            )  # one matrix, two uses
        else:
            target = names.get_name(f"{hf_name}.weight", try_suffixes=(".weight",))
        if target is None:
            continue

        def hook(mod, inputs, output, key=target):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[key] = sums.get(key, 0) + (x * x).sum(0)
            counts[key] = counts.get(key, 0) + x.shape[0]

        hooks.append(module.register_forward_hook(hook))
    used = 0
    try:
        with torch.no_grad():
            for ids in within(sequences, max_tokens):
                model(input_ids=torch.tensor([ids]), use_cache=False)
                used += len(ids)
                tick()
    finally:
        for h in hooks:
            h.remove()
    if not used:
        raise InputError("no calibration tokens for the importance matrix")
    return {k: (sums[k] / counts[k]).float().numpy() for k in sums}


def save_imatrix(
    matrix: dict[str, np.ndarray], path: Path, dataset: str, tokens: int, sequences: int
) -> Path:
    from safetensors.numpy import save

    from edgetune.rundir import atomic_write_bytes, atomic_write_text

    # in memory, then written as every export file is (safetensors' save_file makes a file 0600)
    data = save(matrix, metadata={"dataset": dataset, "tokens": str(tokens), "sequences": str(sequences)})
    atomic_write_bytes(path, _metadata_in_order(data))
    atomic_write_text(
        path.with_suffix(".txt"), f"dataset: {dataset}\ntokens: {tokens}\nentries: {len(matrix)}\n"
    )
    return path


def _metadata_in_order(data: bytes) -> bytes:
    """The file with its header's __metadata__ keys sorted: safetensors writes them in a hash map's
    order, which changes from one save to the next (6 orders in 20 saves), so the same importance
    matrix was a file of other bytes at every export. The header keeps its length (the same keys
    and values), so no tensor moves."""
    import json

    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # written otherwise than serde_json does: leave it as it was
        return data
    return data[:8] + text.ljust(size) + data[8 + size :]


def load_imatrix(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
