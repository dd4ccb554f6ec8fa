"""LoRA adapters under FSDP.

peft (0.21) picks an adapter's tensors out of a state dict by key prefixes it builds from the live
module tree, stripping a leading `_fsdp_wrapped_module.` only. FSDP's state dicts use the clean
names, but nested FSDP units (each decoder layer and each LoRA matrix is one under peft's wrap
policy) put that segment in the middle of a name (`layers.0._fsdp_wrapped_module.self_attn...`), so
no prefix matches: every checkpoint and the final adapter come out empty, and loading one back
maps nothing. `see_through_fsdp` cleans every such segment from those prefixes; without FSDP
wrappers it changes nothing.
"""

from __future__ import annotations

FSDP_SEGMENT = "_fsdp_wrapped_module."


def see_through_fsdp() -> bool:
    """Make peft's adapter-key prefixes FSDP-clean (once per process). False where this peft builds
    no such prefixes (older versions select adapter keys by name and never had the problem)."""
    try:
        from peft.tuners import tuners_utils
    except ImportError:
        return False
    original = getattr(tuners_utils, "_get_tuner_state_dict_key_prefixes", None)
    if original is None:
        return False
    if getattr(original, "sees_through_fsdp", False):
        return True

    def clean_prefixes(model, adapter_name=None):
        return {p.replace(FSDP_SEGMENT, "") for p in original(model, adapter_name=adapter_name)}

    clean_prefixes.sees_through_fsdp = True
    tuners_utils._get_tuner_state_dict_key_prefixes = clean_prefixes
    return True
