"""`edgetune merge`: fold a run's adapter into its base model, writing RUN_DIR/merged (safetensors).

LoRA runs merge into the base weights they were trained on. QLoRA runs are never merged into NF4
weights (rounding the merged sum back to 4 bits destroys the update). Instead the adapter is
merged twice, into the full-precision base and into the dequantised NF4 base (the weights it
was actually trained against), both are scored on the validation split, and the one with the
lower loss is kept; both losses and each one's KL to the adapter-on-4-bit model are recorded.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgetune.errors import EdgetuneError, InputError, ModelError
from edgetune.export.layout import SHIPPED_SETTINGS, trained_system_prompt
from edgetune.merged_record import RECORD, side_files
from edgetune.process_state import kept_process_state
from edgetune.run_recipe import load_run_recipe
from edgetune.rundir import (
    ADAPTER_HINT,
    atomic_dir,
    read_manifest,
    remove_stale_staging,
    resolve_run_dir,
    run_lock,
    update_manifest,
)


@dataclass
class MergeResult:
    run_dir: Path
    merged_dir: Path
    method: str
    chosen: str  # "full_precision" | "dequantized_nf4" | "base"
    candidates: dict[str, dict[str, float]]  # name -> {"valid_loss", "kl_to_adapter"}
    kl_to_adapter: float
    wall_s: float


def _batches(examples, pad_id: int, batch_size: int = 8):
    from edgetune.tune.batches import PadCollator

    collate = PadCollator(pad_id)
    for i in range(0, len(examples), batch_size):
        yield collate([{"input_ids": e.input_ids, "labels": e.labels} for e in examples[i : i + batch_size]])


# the reference model's log-probabilities kept for the KL, [tokens, vocab] in fp32: 1 GiB, about
# 5,400 supervised tokens of a 49k vocabulary (1,000 of Gemma 3's 262k). The validation loss is
# over every example, the KL over the first tokens up to this: kept for a whole 10% split of
# 50,000 examples they would need some 100 GB
KL_REFERENCE_BYTES = 1 << 30


def score(model, examples, pad_id: int, reference_logprobs: list | None = None) -> tuple[float, float, list]:
    """Mean validation loss over supervised tokens; mean KL(reference || model) on the tokens the
    reference kept; this model's log-probabilities on the first supervised tokens, up to
    KL_REFERENCE_BYTES (to serve as a reference), one tensor per batch."""
    import torch
    import torch.nn.functional as F

    from edgetune.tune.logits import supervised_logits

    total_loss, total_kl, n_tokens, kl_tokens, kept, logprobs = 0.0, 0.0, 0, 0, 0, []
    device = next(model.parameters()).device  # a 4-bit model sits on the GPU it was quantised on
    head = model.get_output_embeddings()
    model.eval()
    with torch.no_grad():
        for b, batch in enumerate(_batches(examples, pad_id)):
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            logits, targets, _ = supervised_logits(model, head, inputs, batch["labels"])
            lp = F.log_softmax(logits.float(), dim=-1)  # [tokens, vocab]
            total_loss += -lp.gather(1, targets.unsqueeze(1)).sum().item()
            n_tokens += targets.numel()
            if reference_logprobs is not None and b < len(reference_logprobs):
                ref = reference_logprobs[b].to(device)
                # each token's KL at least 0: rounding had shown "KL to adapter -7.28e-09"
                total_kl += (ref.exp() * (ref - lp[: ref.size(0)])).sum(-1).clamp(min=0).sum().item()
                kl_tokens += ref.size(0)
            room = max(KL_REFERENCE_BYTES // (lp.element_size() * lp.size(-1)) - kept, 0)
            if room:  # once the budget is spent no later batch keeps any: indices stay batch numbers
                logprobs.append(lp[:room].cpu())
                kept += logprobs[-1].size(0)
    return total_loss / max(n_tokens, 1), total_kl / max(kl_tokens, 1), logprobs


def check_finite(model) -> None:
    import torch

    bad = [
        name
        for name, p in model.state_dict().items()
        if p.is_floating_point() and not torch.isfinite(p).all()
    ]
    if bad:
        raise EdgetuneError(
            f"the merged model has NaN or Inf weights in {len(bad)} tensors (first: {bad[0]}); "
            "the adapter is broken (learning rate too high?) and was not merged"
        )


def _load_base(path: Path, trust_remote_code: bool, nf4: bool = False):
    import torch

    from edgetune.models import load_causal_lm

    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": trust_remote_code}
    if nf4:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    return load_causal_lm(path, **kwargs)


def _dequantized_nf4_base(path: Path, trust_remote_code: bool):
    """The base as the QLoRA adapter saw it: every quantised linear replaced by its dequantised weight."""
    import torch

    quantized = _load_base(path, trust_remote_code, nf4=True)
    model = _load_base(path, trust_remote_code)
    from bitsandbytes.functional import dequantize_4bit

    q_modules = dict(quantized.named_modules())
    for name, module in model.named_modules():
        q = q_modules.get(name)
        weight = getattr(q, "weight", None)
        if weight is not None and getattr(weight, "quant_state", None) is not None:
            module.weight.data = dequantize_4bit(weight.data, weight.quant_state).to("cpu", torch.float32)
    return model, quantized


_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)"
)


def _trained_vocabulary(base, mismatches: list[str]) -> int | None:
    """The adapter's vocabulary where its only mismatches with `base` are the embedding's and LM
    head's vocabulary rows (tokens added and the embeddings resized before training), else None."""
    vocab = base.get_input_embeddings().weight.shape[0]
    modules = {base.get_input_embeddings(), base.get_output_embeddings()}
    names = [f".{name}." for name, module in base.named_modules() if module in modules]
    found = set()
    for line in mismatches:
        match = _MISMATCH.search(line)
        if match is None or not any(name in f".{match[1]}" for name in names):
            return None
        trained, here = ([int(d) for d in shape.split(",") if d.strip()] for shape in match.groups()[1:])
        differ = [i for i, (a, b) in enumerate(zip(trained, here, strict=False)) if a != b]
        if len(trained) != len(here) or len(differ) != 1 or here[differ[0]] != vocab:
            return None
        found.add(trained[differ[0]])
    return found.pop() if len(found) == 1 else None


def _attach(base, adapter: Path, base_name: str):
    """The adapter on `base`; one trained on a model of other shapes is a one-line error (peft's
    own says "Error(s) in loading state_dict", and its details are lines a CLI does not print).
    One whose only other shapes are the vocabulary rows of the embedding and LM head was trained
    on this base with tokens added, and says so (it was called another model)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(adapter))
    except RuntimeError as exc:
        mismatches = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        if not mismatches:
            raise
        trained = _trained_vocabulary(base, mismatches)
        if trained is not None:
            here = base.get_input_embeddings().weight.shape[0]
            raise ModelError(
                f"{adapter}: was trained with a vocabulary of {trained} tokens, model.base {base_name} "
                f"has {here} (tokens added in training?); to merge it, save the base with its embeddings "
                f"resized to {trained} rows (resize_token_embeddings) and the adapter's tokenizer as a new "
                "folder, then merge a new run folder whose recipe.yaml names that folder as model.base and "
                "holds the adapter as adapter/"
            ) from None
        raise ModelError(
            f"{adapter}: was trained on another model than model.base {base_name} ({mismatches[0]})"
        ) from None


def refuse_changed_base(model_ref, manifest: dict[str, Any], warn) -> None:
    """The base's files against those tune recorded: merged into other weights, the adapter's update
    makes a model nobody trained (and "KL to adapter" is measured on the same wrong base, so it
    looks perfect). A local base is refused; a built-in one, not the user's to put back, is warned
    about, as a resume does. A hub model is not hashed again (gigabytes for a warning): its revision
    is what the recipe pins."""
    from edgetune.rundir import sha256_tree

    trained = manifest.get("base_model", {}).get("sha256")
    if not trained or model_ref.kind == "hub":  # a hub model's gigabytes, read again for a warning
        return
    if sha256_tree(model_ref.files) == trained:
        return
    if model_ref.kind == "local":
        raise InputError(
            f"model.base {model_ref.name}: its files changed since the adapter was trained on them; "
            "put them back, or train again on the new ones"
        )
    warn(
        f"model.base {model_ref.name}: its files differ from those the adapter was trained on "
        "(converted again); merging into them"
    )


def other_base_named(adapter: Path, model_ref, base_name: str) -> str | None:
    """The base an adapter's own config names, where it is not model.base (by its folder's name, as
    a run moved to another machine keeps it): an adapter of the same shapes made on another model
    merges without an error, and its "KL to adapter", measured on the same wrong base, looks
    perfect. tune's manifest hashes a local or built-in base; an adapter made elsewhere has none."""
    named = str(
        json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    )
    if not named or named == base_name or Path(named).name == Path(model_ref.path).name:
        return None
    return (
        f"{adapter / 'adapter_config.json'} names its base {named}; model.base is {base_name}: if the "
        "adapter was trained on another model of the same shapes, the merged model is not the tuned one"
    )


def _refuse_tied(peft_model, adapter: Path) -> None:
    from edgetune.tune.model import tied_adapter_targets

    if tied := tied_adapter_targets(peft_model):
        raise ModelError(
            f"{adapter}: the adapter changes {', '.join(tied)}, whose weight the base model ties to its "
            "input embedding; merged, it would change the embedding too, so the merged model would not be "
            "the tuned one (train again without it in train.lora.target_modules)"
        )


def trained_default(tokenizer, system: str) -> str | None:
    """The tokenizer's chat template with `system` as the default system prompt it writes when a
    chat has none (system_default), or None where it writes none or cannot be changed safely."""
    from edgetune.export.system_default import with_trained_default

    def render(template: str, messages: list[dict[str, str]], tools: list | None = None) -> str:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tools=tools, tokenize=False, add_generation_prompt=True
        )

    return with_trained_default(tokenizer.chat_template, system, render)


def trained_template(adapter: Path, derived: str | None, trust_remote_code: bool = False) -> str | None:
    """The chat template tune saved with the adapter (the one its examples were rendered with), or
    where the adapter holds no tokenizer (one made elsewhere), the one the data derives today. The
    data can derive another since: rows of another format make a plain-prompt run's data chats."""
    if not (adapter / "tokenizer_config.json").is_file():
        return derived
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(adapter), trust_remote_code=trust_remote_code).chat_template


def data_changed_since_tune(recipe, manifest: dict[str, Any]) -> list[str]:
    """The data splits (as recipe keys) whose files' bytes differ from those tune recorded: the
    merge scores its candidates on the files as they are now, so its losses would not be the
    ones of the data the adapter learnt from. Empty for a run whose tune recorded no hashes."""
    from edgetune.fingerprints import data_files

    trained = manifest.get("data", {}).get("sha256")
    if not isinstance(trained, dict) or not trained:
        return []
    now = data_files(recipe)
    return [f"data.{k}" for k in ("train", "valid", "test") if trained.get(k) != now.get(k)]


def merge(run_dir: Path | str | None = None, console=None) -> MergeResult:
    import transformers

    from edgetune.data.prepare import prepare
    from edgetune.data.render import stop_ids
    from edgetune.models import load_tokenizer, resolve_model
    from edgetune.validate import check_adapter_dir

    started = time.time()
    run_dir = resolve_run_dir(run_dir)
    with run_lock(run_dir, "merge"), kept_process_state():  # its verbosity, torch's RNG: the caller's after
        adapter = run_dir / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            from edgetune.tune.resume import config_missing, no_adapter_yet

            if missing := config_missing(run_dir):
                raise missing
            if (run_dir / "manifest.json").is_file():
                raise no_adapter_yet(run_dir)
            if (run_dir / "adapter_config.json").is_file():
                raise InputError(f"{run_dir}: not a run directory{ADAPTER_HINT}")
            raise InputError(f"{run_dir}: no adapter/ to merge; run `edgetune tune` first")
        check_adapter_dir(adapter)
        recipe = load_run_recipe(run_dir)
        manifest = read_manifest(run_dir)
        method = manifest.get("stages", {}).get("tune", {}).get("method", "lora")
        changed = data_changed_since_tune(recipe, manifest)
        if changed and console is not None:
            console.print(
                f"[yellow]warning:[/] {', '.join(changed)} changed since the adapter was trained: "
                "the merge is scored on the files as they are now",
                soft_wrap=True,
            )
        transformers.logging.set_verbosity_error()
        model_ref = resolve_model(
            recipe.model.base, recipe.model.revision, quiet=True, allow_pickle=recipe.model.allow_pickle
        )
        refuse_changed_base(
            model_ref,
            manifest,
            lambda message: (
                console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
                if console is not None
                else None
            ),
        )
        if (named := other_base_named(adapter, model_ref, recipe.model.base)) and console is not None:
            console.print(f"[yellow]warning:[/] {escape(named)}", soft_wrap=True)
        tokenizer = load_tokenizer(model_ref, recipe.model.trust_remote_code)
        data = prepare(recipe.data, tokenizer, encode=("valid",))  # 50,000 training rows took a minute
        if not data.encoded["valid"].examples:  # no validation split (or none of it usable): train[:64]
            data = prepare(recipe.data, tokenizer, encode=("train",))
        # saved with the merged model, then exported: the template the adapter was trained under
        tokenizer.chat_template = trained_template(
            adapter, data.shipped_template, recipe.model.trust_remote_code
        )
        valid = data.encoded["valid"].examples or data.encoded["train"].examples[:64]
        scored_on = "valid" if data.encoded["valid"].examples else "train[:64] (no validation split)"
        pad = tokenizer.pad_token_id

        def say(message: str) -> None:
            if console is not None:
                console.print(message)

        candidates: dict[str, dict[str, float]] = {}
        if method == "qlora":
            say(
                "QLoRA run: scoring a merge into the full-precision base and one into the dequantised NF4 base"
            )
            dequant, quantized = _dequantized_nf4_base(model_ref.path, recipe.model.trust_remote_code)
            on_4bit = _attach(quantized, adapter, recipe.model.base)
            _refuse_tied(on_4bit, adapter)
            _, _, reference = score(on_4bit, valid, pad)
            del on_4bit, quantized
            merged_by_name = {
                "full_precision": _attach(
                    _load_base(model_ref.path, recipe.model.trust_remote_code), adapter, recipe.model.base
                ).merge_and_unload(),
                "dequantized_nf4": _attach(dequant, adapter, recipe.model.base).merge_and_unload(),
            }
            for name, m in merged_by_name.items():
                loss, kl, _ = score(m, valid, pad, reference)
                candidates[name] = {"valid_loss": loss, "kl_to_adapter": kl}
            chosen = min(candidates, key=lambda k: candidates[k]["valid_loss"])
            merged = merged_by_name[chosen]
        else:
            unmerged = _attach(
                _load_base(model_ref.path, recipe.model.trust_remote_code), adapter, recipe.model.base
            )
            _refuse_tied(unmerged, adapter)
            _, _, reference = score(unmerged, valid, pad)
            merged = unmerged.merge_and_unload()
            loss, kl, _ = score(merged, valid, pad, reference)
            chosen = "full_precision"
            candidates[chosen] = {"valid_loss": loss, "kl_to_adapter": kl}
        check_finite(merged)
        merged.config.use_cache = True
        # every id a reply ends with, the template's turn end among them, so that runtimes reading
        # generation_config (transformers, and each export through it) stop where the model learnt to
        stops = stop_ids(model_ref.path, tokenizer)
        if stops:
            merged.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
        target = run_dir / "merged"
        remove_stale_staging(target)  # a killed merge's copy of the model, each one its full size
        system = trained_system_prompt(run_dir, data)
        if system and isinstance(tokenizer.chat_template, str):  # front-ends that send no system prompt
            tokenizer.chat_template = trained_default(tokenizer, system) or tokenizer.chat_template
        with atomic_dir(target) as staging:
            merged.save_pretrained(str(staging), safe_serialization=True)
            # with the training template, its default system prompt the trained one
            tokenizer.save_pretrained(str(staging))
            if system:  # as every exported file carries it: the folder copied out of its run keeps it
                (staging / SHIPPED_SETTINGS).write_text(json.dumps({"system_prompt": system}) + "\n")
        result = MergeResult(
            run_dir,
            target,
            method,
            chosen,
            candidates,
            candidates[chosen]["kl_to_adapter"],
            round(time.time() - started, 1),
        )
        update_manifest(
            run_dir,
            stages={
                "merge": {
                    "status": "done",
                    "method": method,
                    "chosen": chosen,
                    "candidates": candidates,
                    "kl_to_adapter": result.kl_to_adapter,
                    "valid_examples": len(valid),
                    "kl_tokens": sum(lp.size(0) for lp in reference),
                    "scored_on": scored_on,
                    "data_changed_since_tune": changed,
                    "merged": "merged",
                    RECORD: side_files(target),  # so export and bench can say it was edited since
                    "wall_s": result.wall_s,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            },
        )
        return result
