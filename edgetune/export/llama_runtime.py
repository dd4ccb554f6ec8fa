"""Loading GGUF files into llama.cpp (llama-cpp-python) the way edgetune runs them.

Weight repacking ("extra buffer types") is off: in llama-cpp-python 0.3.36 on this project's
Xeon (AVX512 + AMX), evaluating any quantised GGUF with repacked weights segfaults, even llama.cpp's
own Q4_1 file of SmolLM2; with repacking off the same files evaluate correctly. Set
EDGETUNE_LLAMA_REPACK=1 to turn it back on where it works.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from edgetune.cores import default_threads
from edgetune.errors import InputError


@contextlib.contextmanager
def _model_params_without_repack():
    import llama_cpp.llama_cpp as bindings  # the module llama_cpp.Llama reads its defaults from

    original = bindings.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = original


def load_llama(
    path: Path, n_ctx: int = 2048, logits_all: bool = False, n_threads: int | None = None, **kwargs: Any
):
    from llama_cpp import Llama

    if not path.is_file():
        raise InputError(f"{path}: GGUF file not found")
    from edgetune.validate import check_gguf

    check_gguf(path)
    repack = os.environ.get("EDGETUNE_LLAMA_REPACK") == "1"
    context = contextlib.nullcontext() if repack else _model_params_without_repack()
    with context:
        try:
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                logits_all=logits_all,
                verbose=False,
                n_threads=n_threads or default_threads(),
                # prompt processing has its own thread count (default: every core); the same number
                # as decode, so bench compares runtimes at the thread count it reports
                n_threads_batch=n_threads or default_threads(),
                **kwargs,
            )
        except ValueError as exc:  # llama-cpp-python's message for files llama.cpp refuses
            raise InputError(f"{path}: llama.cpp cannot load this file ({exc})") from None


def end_of_generation_ids(llm) -> set[int]:
    """Every token llama.cpp ends generation at: the file's EOS, EOT and EOM ids and the tokens it
    knows by name. What llama-server and the other llama.cpp front-ends stop on."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)  # llama.h's own calls, on the public model handle
    return {i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, i)}


def file_chat_template(llm) -> str | dict[str, str] | None:
    """The chat template a GGUF carries, as transformers holds it: one string, or named ones."""
    meta = llm.metadata
    prefix = "tokenizer.chat_template."
    named = {key[len(prefix) :]: value for key, value in meta.items() if key.startswith(prefix)}
    default = meta.get("tokenizer.chat_template")
    if named:
        return {"default": default, **named} if default is not None else named
    return default
