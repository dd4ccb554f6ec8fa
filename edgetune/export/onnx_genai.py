"""onnxruntime-genai, the ONNX runtime for on-device generation (C, C++, C#, Java and Python APIs),
reads a model folder's genai_config.json: which graph inputs carry the tokens, the mask, the
positions and the key/value cache, the attention shape, where to stop and how to search. optimum
writes none, so an ONNX folder ran in onnxruntime, optimum and transformers.js, but not there.

Every ONNX folder edgetune writes gets one, of type `decoder` (the runtime's generic decoder-only
model: optimum's graph holds all that is particular to an architecture), the stop ids the parity
check stops at, and the merged model's generation settings. The parity check then runs the folder
in onnxruntime-genai itself (`genai_agreement`): its tokenizer and chat template must give the
prompt ids the model was trained on, and its greedy answers must be onnxruntime's, token for token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

GENAI_CONFIG = "genai_config.json"
PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
# the same graph in the same onnxruntime computes the same logits (measured: bitwise, fp32 to int4);
# a config that swaps the cache's keys and values measured a KL of 7e-3 on the test model
GENAI_KL = 1e-5


def genai_config(folder: Path, stop: list[int], graph) -> dict:
    """The folder's genai_config.json: `graph` its model.onnx's (ONNX GraphProto), config.json
    and generation_config.json read from the folder."""
    from edgetune.export.onnx_runtime import MODEL_FILE, OnnxDecoder
    from edgetune.export.onnx_sidefiles import generation_settings

    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    kv_heads, head_dim = OnnxDecoder._kv_dims(config)
    layers = len({m[1] for name in inputs if (m := PAST.fullmatch(name))})
    context = OnnxDecoder.context_of(config) or 2048
    settings = generation_settings(folder)
    return {
        "model": {
            "type": "decoder",
            # the runtime reads a null as an error: a model without a BOS leaves the key out
            **({"bos_token_id": config["bos_token_id"]} if config.get("bos_token_id") is not None else {}),
            "eos_token_id": sorted(stop),
            "pad_token_id": config.get("pad_token_id")
            if config.get("pad_token_id") is not None
            else min(stop),
            "vocab_size": config.get("vocab_size"),
            "context_length": context,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "hidden_size": config.get("hidden_size"),
                "head_size": head_dim,
                "num_attention_heads": config.get("num_attention_heads"),
                "num_key_value_heads": kv_heads,
                "num_hidden_layers": layers,
                "inputs": {
                    "input_ids": "input_ids",
                    **{name: name for name in ("attention_mask", "position_ids") if name in inputs},
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    **(
                        {"present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}
                        if "present.0.key" in outputs
                        else {}
                    ),
                },
            },
        },
        "search": {
            "do_sample": bool(settings.get("do_sample")),
            "temperature": settings.get("temperature") or 1.0,
            "top_k": settings.get("top_k") or 50,
            "top_p": settings.get("top_p") or 1.0,
            "repetition_penalty": settings.get("repetition_penalty") or 1.0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "min_length": 0,
            "max_length": context,
            # optimum's graph concatenates the cache it is given: a buffer shared between past and
            # present would need a graph that writes in place
            "past_present_share_buffer": False,
        },
    }


def write_genai_config(folder: Path, stop: list[int], graph) -> None:
    text = json.dumps(genai_config(folder, stop, graph), indent=2) + "\n"
    (folder / GENAI_CONFIG).write_text(text, encoding="utf-8")


@dataclass
class GenaiPrompt:
    """One parity example as onnxruntime ran it, for onnxruntime-genai to run again."""

    messages: list[dict[str, str]] | None  # the chat, for its template (None: a plain prompt)
    text: str  # the prompt as transformers renders it with the folder's tokenizer
    ids: list[int]  # the model's prompt ids, where both runtimes start
    shipped_ids: list[int]  # what the folder's transformers tokenizer makes of `text`
    answer: list[int]  # onnxruntime's greedy answer
    logits: list  # onnxruntime's logits before each token of `answer`


class Recorded:
    """A runner whose prefill and step logits are kept: what onnxruntime-genai's must equal (so
    the onnxruntime session can be closed before the folder loads a second time)."""

    def __init__(self, runner, keep: bool = True) -> None:
        self.runner, self.keep, self.kept = runner, keep, []  # keep: false where nothing will compare

    def prefill(self, ids):
        self.kept = []
        return self._kept(self.runner.prefill(ids))

    def step(self, token):
        return self._kept(self.runner.step(token))

    def _kept(self, logits):
        if self.keep:
            self.kept.append(logits.copy())  # a row, not a view holding the whole prefill's logits
        return logits


def load_genai(og, folder: Path, threads: int | None = None, device: str = "cpu"):
    """The folder as an onnxruntime-genai model on `threads` (default: as onnxruntime sessions
    here; left alone, the runtime takes every physical core, cpusets and OMP_NUM_THREADS aside)."""
    from edgetune.cores import default_threads

    config = og.Config(str(folder))
    options = {"session_options": {"intra_op_num_threads": threads or default_threads()}}
    config.overlay(json.dumps({"model": {"decoder": options}}))
    if device == "cuda":
        config.clear_providers()
        config.append_provider("cuda")
    return og.Model(config)


def genai_agreement(directory: Path, prompts: list[GenaiPrompt], max_new_tokens: int):
    """Run the folder in onnxruntime-genai: (share of `prompts` whose greedy answer is onnxruntime's,
    every step's logits within GENAI_KL of onnxruntime's; notes on what its tokenizer and chat
    template make of the prompts, and on prompts it could not run). (None, []) where the folder
    has no genai_config.json (exported before edgetune wrote one)."""
    if not (directory / GENAI_CONFIG).is_file():
        return None, []
    try:
        import onnxruntime_genai as og
    except ImportError:  # no wheel for this machine (Intel Macs)
        return None, ["onnxruntime-genai is not installed here: the folder's run in it is not checked"]
    try:
        model = load_genai(og, directory)
    except Exception as e:  # noqa: BLE001 - whatever it says of a config it cannot load is the finding
        return 0.0, [f"onnxruntime-genai cannot load the folder: {_first(e)}"]
    context = json.loads((directory / GENAI_CONFIG).read_text(encoding="utf-8"))["model"]["context_length"]
    same, notes, errors = [], [], []
    fitting = [p for p in prompts if len(p.ids) < context]
    for prompt in fitting:
        try:
            same.append(_same_run(og, model, prompt, min(max_new_tokens, context - len(prompt.ids))))
        except Exception as e:  # noqa: BLE001 - one prompt it cannot run fails that prompt, not parity
            same.append(False)
            errors.append(_first(e))
    if len(fitting) < len(prompts):
        n = len(prompts) - len(fitting)
        notes.append(
            f"{n} prompt{'s' * (n != 1)} fill{'s' * (n == 1)} the model's {context} positions: not run in "
            "onnxruntime-genai"
        )
    if errors:
        notes.append(f"onnxruntime-genai failed on {len(errors)} of {len(fitting)} prompts: {errors[0]}")
    return _share(same), notes + _tokenizer_notes(og, model, prompts)


def _tokenizer_notes(og, model, prompts: list[GenaiPrompt]) -> list[str]:
    """What onnxruntime-genai's own tokenizer and chat template make otherwise than the folder's
    transformers tokenizer: said, not failed (an app can feed it token ids)."""
    try:
        tokenizer = og.Tokenizer(model)
    except Exception as e:  # noqa: BLE001
        return [f"onnxruntime-genai cannot load the folder's tokenizer ({_first(e)}): feed it ids"]
    templated = [p for p in prompts if p.messages is not None]
    template_differs = sum(_rendered(tokenizer, p.messages) != p.text for p in templated)
    ids_differ = sum([int(i) for i in tokenizer.encode(p.text)] != list(p.shipped_ids) for p in prompts)
    notes = []
    if template_differs:
        notes.append(
            f"onnxruntime-genai's chat template renders {template_differs} of {len(templated)} prompts "
            "otherwise than transformers"
        )
    if ids_differ:
        notes.append(
            f"onnxruntime-genai's tokenizer gives other ids than transformers for {ids_differ} of "
            f"{len(prompts)} prompts"
        )
    return notes


def _first(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _share(same: list[bool]) -> float | None:
    return sum(same) / len(same) if same else None


def _same_run(og, model, prompt: GenaiPrompt, budget: int) -> bool:
    """Greedy in onnxruntime-genai for up to `budget` tokens: onnxruntime's answer (as far as the
    budget goes), with logits within GENAI_KL of onnxruntime's at every step. The search is plain
    argmax whatever the folder's settings: a repetition penalty or a minimum length from the
    model's generation_config would change which token wins."""
    import numpy as np

    from edgetune.bench.accuracy import kl_top1, log_softmax

    params = og.GeneratorParams(model)
    params.set_search_options(
        do_sample=False, max_length=len(prompt.ids) + budget, repetition_penalty=1.0, min_length=0
    )
    generator = og.Generator(model, params)
    generator.append_tokens([int(i) for i in prompt.ids])
    theirs, got = [], []
    while not generator.is_done():
        theirs.append(np.asarray(generator.get_logits(), np.float64).reshape(-1))
        generator.generate_next_token()
        got.append(int(generator.get_next_tokens()[0]))
    if got != list(prompt.answer[:budget]):
        return False
    ours = np.asarray(prompt.logits[: len(got)], np.float64)
    kl, _ = kl_top1(log_softmax(ours), log_softmax(np.stack(theirs)))
    return kl <= GENAI_KL


def _rendered(tokenizer, messages) -> str | None:
    try:
        return tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - "Empty chat template": the folder's is lost (parity says so)
        return None
