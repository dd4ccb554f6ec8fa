"""Datasets and collators for encoded examples.

Padding: right-padded batches, labels -100 on padding (never "labels == pad", so EOS stays
supervised when pad == eos). Packing: transformers' DataCollatorWithFlattening puts a batch in one
row with position ids restarting at 0 for each example; with no attention mask, transformers
builds a block-diagonal causal mask from those position ids, so examples never attend to each
other (a test checks packed logits against unpacked ones).
"""

from __future__ import annotations

from typing import Any

from edgetune.data.render import IGNORE, Encoded


class EncodedDataset:
    """A map-style dataset over Encoded examples, in the dict form the Trainer expects."""

    def __init__(self, examples: list[Encoded]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels}


class PadCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def make_collator(pad_token_id: int, packing: bool):
    if packing:
        from transformers import DataCollatorWithFlattening

        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
    return PadCollator(pad_token_id)
