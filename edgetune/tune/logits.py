"""Vocabulary logits only where the next token is supervised.

A causal LM computes logits for every position, but a fine-tuning loss (and the merge's validation
loss and KL) needs them only at the positions that predict a supervised token: the assistant
turns. With a 49k vocabulary (128k for Llama 3, 262k for Gemma 3) the LM head, its logits and their
cross-entropy are a large share of a step's time and memory, so the head sees the hidden states of
those positions only, row by row: a forward pre-hook turns its input (batch, length, hidden) into
(supervised, hidden). What a model does after its head (Gemma's soft-capping, Cohere's scale) is
elementwise and still runs. On padded batches of the demo data the head sees a sixth of the
positions, a quarter of those the batch's union of supervised positions would keep
(bench/supervised_logits.py).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from edgetune.data.render import IGNORE


@contextmanager
def head_sees_only(head: torch.nn.Module, wanted: torch.Tensor):
    """While inside, `head` computes logits for the positions `wanted` (a batch x length mask) only."""

    def select(module, args):
        hidden = args[0]
        if hidden.dim() == 3 and hidden.shape[:2] == wanted.shape:
            return (hidden[wanted], *args[1:])
        return None  # not the whole sequence's hidden states: the logits are selected afterwards

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def supervised_logits(model, head: torch.nn.Module | None, inputs: dict, labels: torch.Tensor):
    """Run `model` on `inputs` (without labels; `head` is its output embedding): the logits of the
    positions that predict a supervised token, [tokens, vocab] in row-major order, those tokens,
    and the model's outputs."""
    shifted = labels[:, 1:]  # position t predicts token t + 1; the last position predicts nothing
    predicting = shifted != IGNORE
    wanted = F.pad(predicting, (0, 1), value=False)
    with head_sees_only(head, wanted) if head is not None else nullcontext():
        # use_cache=False matters for packing: with a cache object transformers skips the
        # block-diagonal mask it derives from restarting position ids, and packed examples would
        # see each other
        outputs = model(**inputs, use_cache=False)
    logits = outputs.logits
    if logits.dim() == 3:  # the head was called on something else; the same positions, selected now
        logits = logits[wanted]
    return logits, shifted[predicting], outputs
