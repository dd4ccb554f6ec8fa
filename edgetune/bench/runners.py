"""One interface over the three runtimes bench compares: torch, onnxruntime and llama.cpp.

A runner evaluates token ids, nothing else: every target gets the same ids from the same
renderer, and the same greedy loop (`greedy`) drives them all, so differences in the report are
differences in the model files and runtimes, not in prompting or decoding settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune.errors import ModelError


@dataclass
class Target:
    name: str  # e.g. "gguf/q4_k_m" or "torch/merged"
    format: str  # torch | onnx | gguf
    quant: str  # fp32, adapter, q8_0, int4, ...
    runtime: str  # torch | onnxruntime | llama.cpp
    device: str  # cpu | cuda
    path: Path  # model directory, ONNX directory or .gguf file
    adapter: Path | None = None  # torch/adapter: base model + unmerged LoRA adapter
    size_bytes: int = 0


class Runner:
    """prefill(ids) -> logits of the last position; step(token) -> logits of the next position;
    logits(ids) -> [len(ids), vocab] for one fresh sequence. Logits are numpy float arrays.
    `context`: the most positions one sequence may hold, where the runtime or the model has a limit."""

    context: int | None = None

    def prefill(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def step(self, token: int) -> np.ndarray:
        raise NotImplementedError

    def logits(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError


def iter_greedy(
    runner: Runner, prompt_ids: list[int], eos_ids: list[int], max_new_tokens: int
) -> Iterator[int]:
    """Greedy tokens one by one (chat streams them); the EOS token is yielded when the model emits it."""
    logits = runner.prefill(prompt_ids)
    for produced in range(1, max_new_tokens + 1):
        token = int(np.argmax(logits))
        yield token
        if token in eos_ids or produced == max_new_tokens:
            return
        logits = runner.step(token)


def greedy(runner: Runner, prompt_ids: list[int], eos_ids: list[int], max_new_tokens: int) -> list[int]:
    return list(iter_greedy(runner, prompt_ids, eos_ids, max_new_tokens))


class Uncached(Runner):
    """A runner's model without its KV cache: every step recomputes the whole sequence. The
    reference the cached path must equal (ONNX parity checks this)."""

    def __init__(self, runner: Runner):
        self.runner, self.sequence = runner, []

    def prefill(self, ids):
        self.sequence = list(ids)
        return self.runner.logits(self.sequence)[-1]

    def step(self, token):
        self.sequence.append(token)
        return self.runner.logits(self.sequence)[-1]

    def logits(self, ids):
        return self.runner.logits(ids)


class TorchRunner(Runner):
    def __init__(self, target: Target, threads: int | None = None):
        import torch

        from edgetune.models import load_causal_lm
        from edgetune.validate import check_adapter_dir, check_model_dir

        check_model_dir(target.path)
        if target.adapter is not None:
            check_adapter_dir(target.adapter)
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(target.device)
        model = load_causal_lm(target.path, dtype=torch.float32)
        if target.adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(target.adapter))
        self.model = model.to(self.device).eval()
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.past = None
        import inspect

        forward = (model.get_base_model() if target.adapter is not None else model).forward
        # prefill and step need the last position only (as llama.cpp computes it): no LM head over
        # the whole prompt in the time to first token
        self.last_only = (
            {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(forward).parameters else {}
        )

    def _run(self, ids: list[int], past, **kwargs):
        with self.torch.no_grad():
            out = self.model(
                input_ids=self.torch.tensor([ids], device=self.device),
                past_key_values=past,
                use_cache=True,
                **kwargs,
            )
        return out.logits[0].float().cpu().numpy(), out.past_key_values

    def prefill(self, ids):
        logits, self.past = self._run(ids, None, **self.last_only)
        return logits[-1]

    def step(self, token):
        logits, self.past = self._run([token], self.past, **self.last_only)
        return logits[-1]

    def logits(self, ids):
        return self._run(ids, None)[0]


class OnnxRunner(Runner):
    def __init__(self, target: Target, threads: int | None = None):
        from edgetune.export.onnx_runtime import OnnxDecoder

        self.decoder = OnnxDecoder(target.path, threads=threads, device=target.device)
        self.context = self.decoder.max_positions
        self.past, self.length = None, 0

    def prefill(self, ids):
        # the last position's logits only, as torch (logits_to_keep) and llama.cpp compute them
        logits, self.past = self.decoder.forward(ids, None, 0, last_only=True)
        self.length = len(ids)
        return logits[-1]

    def step(self, token):
        logits, self.past = self.decoder.forward([token], self.past, self.length)
        self.length += 1
        return logits[-1]

    def logits(self, ids):
        return self.decoder.logits(ids)


class LlamaRunner(Runner):
    def __init__(
        self, target: Target, threads: int | None = None, n_ctx: int = 2048, logits_all: bool = True
    ):
        from edgetune.export.llama_runtime import load_llama

        gpu_layers = -1 if target.device == "cuda" else 0
        self.llm = load_llama(
            target.path, n_ctx=n_ctx, logits_all=logits_all, n_threads=threads, n_gpu_layers=gpu_layers
        )
        self.logits_all = logits_all
        # past n_ctx llama.cpp finds no memory slot for the batch; past the trained context the model
        # is outside what it learned (torch's limit, max_position_embeddings, is the same number)
        import llama_cpp  # llama.h's own calls on the public handles, not llama-cpp-python's internals

        self.context = min(self.llm.n_ctx(), llama_cpp.llama_model_n_ctx_train(self.llm.model))

    def _last(self) -> np.ndarray:
        if self.logits_all:
            return np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)
        # without logits_all llama-cpp-python does not copy logits into `scores`: read llama.cpp's
        # buffer for the last position of the batch just evaluated
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).astype(np.float32)

    def prefill(self, ids):
        self.llm.reset()
        self.llm.eval(ids)
        return self._last()

    def step(self, token):
        self.llm.eval([token])
        return self._last()

    def logits(self, ids):
        if not self.logits_all:
            raise ModelError("this llama.cpp runner was loaded without logits for every position")
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


class GenaiRunner(Runner):
    """An ONNX folder in onnxruntime-genai, the runtime apps on devices use (its genai_config.json):
    bench times it beside onnxruntime. Its logits are onnxruntime's (the parity check holds it to
    that), so only prefill and step are here."""

    GENAI = "onnxruntime-genai"

    def __init__(self, target: Target, threads: int | None = None):
        import json

        import onnxruntime_genai as og

        from edgetune.export.onnx_genai import GENAI_CONFIG, load_genai

        # the same threads as the onnxruntime session it is compared with
        self.og, self.model = og, load_genai(og, target.path, threads, target.device)
        settings = json.loads((target.path / GENAI_CONFIG).read_text(encoding="utf-8"))
        self.context = settings["model"]["context_length"]
        self.generator = None

    def _logits(self) -> np.ndarray:
        return np.asarray(self.generator.get_logits(), dtype=np.float32).reshape(-1)

    def prefill(self, ids):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.context)
        self.generator = self.og.Generator(self.model, params)
        self.generator.append_tokens([int(i) for i in ids])
        return self._logits()

    def step(self, token):
        self.generator.append_tokens([int(token)])
        return self._logits()


RUNNERS = {"torch": TorchRunner, "onnx": OnnxRunner, "gguf": LlamaRunner}


def open_runner(target: Target, threads: int | None = None, **kwargs) -> Runner:
    if target.device == "cuda" and target.format == "torch":
        import torch

        if not torch.cuda.is_available():
            raise ModelError("torch here has no CUDA device")
    if target.runtime == GenaiRunner.GENAI:
        return GenaiRunner(target, threads)
    return RUNNERS[target.format](target, threads, **kwargs)
