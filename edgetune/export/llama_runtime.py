"""Loading GGUF files into llama.cpp (llama-cpp-python) the way edgetune runs them.

Weight repacking ("extra buffer types") is off: in llama-cpp-python 0.3.36 on this project's
Xeon (AVX512 + AMX), evaluating any quantised GGUF with repacked weights segfaults, even llama.cpp's
own Q4_1 file of SmolLM2; with repacking off the same files evaluate correctly. Set
EDGETUNE_LLAMA_REPACK=1 to turn it back on where it works.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from edgetune.cores import default_threads
from edgetune.errors import InputError

_this_thread = threading.local()  # .no_repack: within load_llama; .errors, .level: llama.cpp's log
_patching = threading.Lock()


@contextlib.contextmanager
def _model_params_without_repack():
    """Repacking off for the Llama this thread builds. llama_cpp.Llama reads its defaults from a
    module function, which is wrapped once for the process and reads a per-thread flag: wrapping it
    for each load and putting the original back left it wrapped for good when two threads' loads
    overlapped (the second saved the first's wrapper as the original)."""
    import llama_cpp.llama_cpp as bindings  # the module llama_cpp.Llama reads its defaults from

    with _patching:
        if not getattr(bindings.llama_model_default_params, "_edgetune_wrapped", False):
            original = bindings.llama_model_default_params

            def params():
                p = original()
                if getattr(_this_thread, "no_repack", False):
                    p.use_extra_bufts = False
                return p

            params._edgetune_wrapped = True
            bindings.llama_model_default_params = params
    _this_thread.no_repack = True
    try:
        yield
    finally:
        _this_thread.no_repack = False


_GGML_LOG_ERROR, _GGML_LOG_CONT = 4, 5  # ggml.h's ggml_log_level
_log_callback = None  # held: llama.cpp calls it for as long as the process lives


def _errors() -> list[str]:
    """llama.cpp's error lines in this thread since its load_llama began (a load logs on the thread
    that loads: another thread's refused file must not give this one its reason)."""
    if not hasattr(_this_thread, "errors"):
        _this_thread.errors = []
    return _this_thread.errors


def _errors_only_log() -> None:
    """llama.cpp's log, errors only, and those kept for the message of a file it refuses.
    llama-cpp-python 0.3.36 reads ggml's log levels by an older numbering, so with verbose=False
    it still printed every warning (WARN is 3, its ERROR), such as "n_ctx_seq (2048) > n_ctx_train
    (512) -- possible training context overflow" in the middle of an export's progress, for a
    context edgetune chose; and the error that says why a file failed to load went to /dev/null
    (it silences the load), leaving "Failed to load model from file"."""
    with _patching:  # two threads' first loads: one callback, never one freed while installed
        _install_log_callback()


def _install_log_callback() -> None:
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes
    import logging
    import sys

    import llama_cpp

    # llama-cpp-python sets its logger to DEBUG for a Llama(verbose=True): a program's own such
    # Llama, after an edgetune stage in its process, still sees all of llama.cpp's log
    verbose = logging.getLogger("llama-cpp-python")

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data) -> None:
        _this_thread.level = getattr(_this_thread, "level", 0) if level == _GGML_LOG_CONT else level
        if _this_thread.level == _GGML_LOG_ERROR:
            line = text.decode("utf-8", "replace")
            errors = _errors()
            del errors[:-20]
            errors.append(line)
            print(line, end="", flush=True, file=sys.stderr)
        elif verbose.level == logging.DEBUG:
            print(text.decode("utf-8", "replace"), end="", flush=True, file=sys.stderr)

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _why_refused(exc: Exception) -> str:
    """The first error llama.cpp logged, without the names of the functions that passed it on."""
    for line in _errors():
        cause = line.strip()
        head, sep, rest = cause.partition(": ")
        while sep and head.replace("_", "").isalnum():  # a function's name, such as llama_model_load
            cause = rest
            head, sep, rest = cause.partition(": ")
        if cause:
            return cause
    return str(exc)


def load_llama(
    path: Path, n_ctx: int = 2048, logits_all: bool = False, n_threads: int | None = None, **kwargs: Any
):
    from llama_cpp import Llama

    if not path.is_file():
        raise InputError(f"{path}: GGUF file not found")
    from edgetune.validate import check_gguf

    check_gguf(path)
    _errors_only_log()
    _errors().clear()
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
            raise InputError(f"{path}: llama.cpp cannot load this file ({_why_refused(exc)})") from None


def end_of_generation_ids(llm) -> set[int]:
    """Every token llama.cpp ends generation at: the file's EOS, EOT and EOM ids and the tokens it
    knows by name. What llama-server and the other llama.cpp front-ends stop on."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)  # llama.h's own calls, on the public model handle
    return {i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, i)}


def is_text_token(llm, token: int) -> bool:
    """Whether llama.cpp reads `token` as text (a normal or byte token), not a control token."""
    import llama_cpp

    attr = llama_cpp.llama_vocab_get_attr(llama_cpp.llama_model_get_vocab(llm.model), token)
    return bool(attr & (llama_cpp.LLAMA_TOKEN_ATTR_NORMAL | llama_cpp.LLAMA_TOKEN_ATTR_BYTE))


def file_chat_template(llm) -> str | dict[str, str] | None:
    """The chat template a GGUF carries, as transformers holds it: one string, or named ones."""
    meta = llm.metadata
    prefix = "tokenizer.chat_template."
    named = {key[len(prefix) :]: value for key, value in meta.items() if key.startswith(prefix)}
    default = meta.get("tokenizer.chat_template")
    if named:
        return {"default": default, **named} if default is not None else named
    return default
