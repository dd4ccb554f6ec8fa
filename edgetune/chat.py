"""`edgetune chat`: talk to a run's merged model, a GGUF file or an ONNX directory.

Every artifact is driven by the same greedy loop as bench (edgetune.bench.runners), with the
training chat template and stopping at the model's EOS ids, so what chat shows is what bench scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgetune.bench.runners import Runner, Target, iter_greedy, open_runner
from edgetune.data.render import reply_text
from edgetune.errors import EdgetuneError, InputError, ModelError
from edgetune.export.layout import shipped_system_prompt
from edgetune.models import short_reason
from edgetune.rundir import MANIFEST, RECIPE_FILE


class _Finite(Runner):
    """A runner whose logits must be numbers: NaN's argmax is token 0 (SmolLM2's EOS), so a file
    with damaged weights answered with an empty line and no word."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def _checked(self, logits):
        import numpy as np

        if not np.isfinite(logits).all():
            raise ModelError(
                "the model computes NaN or infinite logits: its weights are damaged or overflow "
                "(`edgetune export --check` measures an exported file against its merged model)"
            )
        return logits

    def prefill(self, ids):
        return self._checked(self.runner.prefill(ids))

    def step(self, token):
        return self._checked(self.runner.step(token))


@dataclass
class ChatSession:
    runner: Runner
    tokenizer: object
    eos_ids: list[int]
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    dropped_turns: int = 0  # earlier exchanges left out of the prompt to fit the context
    cut_at: int | None = None  # the last answer's token budget where it ran out before EOS
    # trained on plain prompts (see Renderer.plain_prompts): each message goes to the model as it
    # is, alone, with no template, system prompt or history, as training and bench gave them
    plain: bool = False

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Rendered as in training: the same template (edgetune's fallback for a model without one)
        and exactly one BOS where the model wants one."""
        from edgetune.data.render import Renderer

        renderer = Renderer(self.tokenizer, template="plain" if self.plain else "auto")
        if self.plain:
            return renderer.ids_for_text(messages[-1]["content"])
        return renderer.ids_for_text(renderer.chat_text(messages, add_generation_prompt=True))

    def fitted_prompt(self, user: str, max_new_tokens: int) -> tuple[list[int], int]:
        """The prompt ids and the answer's token budget within the runner's context: the oldest
        exchanges are dropped (counted in `dropped_turns`) until the prompt leaves room for the
        answer (at most a quarter of the context is held back for it, so that a large
        --max-new-tokens does not cost the whole conversation). Nothing is dropped when the prompt
        alone is too long."""
        system = [{"role": "system", "content": self.system}] if self.system and not self.plain else []
        context, history, dropped = self.runner.context, [] if self.plain else list(self.history), 0
        room = min(max_new_tokens, context // 4) if context else 0
        while True:
            ids = self.prompt_ids(system + history + [{"role": "user", "content": user}])
            if not context or len(ids) + room <= context or not history:
                break
            history, dropped = history[2:], dropped + 1
        if not ids:  # a plain prompt of no text has no token to start from (--prompt "")
            raise InputError("the prompt is empty: give the model something to answer")
        if context and len(ids) >= context:
            with_system = " with the system prompt" if system else ""
            raise InputError(
                f"the prompt is {len(ids)} tokens{with_system}, and the model's context is {context}: shorten it"
            )
        self.history, self.dropped_turns = history, self.dropped_turns + dropped
        return ids, min(max_new_tokens, context - len(ids)) if context else max_new_tokens

    def tokens(self, user: str, max_new_tokens: int) -> Iterator[int]:
        prompt, budget = self.fitted_prompt(user, max_new_tokens)
        self.cut_at = budget  # until EOS comes: an answer that never ends in one was cut there
        for token in iter_greedy(_Finite(self.runner), prompt, self.eos_ids, budget):
            if token in self.eos_ids:
                self.cut_at = None
                return
            yield token

    def reply(
        self, user: str, max_new_tokens: int = 256, on_text: Callable[[str], None] | None = None
    ) -> str:
        """Answer `user`, streaming text pieces to on_text; the turn is kept in the history."""
        ids: list[int] = []
        shown = ""
        for token in self.tokens(user, max_new_tokens):
            ids.append(token)
            text = reply_text(self.tokenizer, ids)
            if on_text is not None and not text.endswith("\ufffd"):  # wait for whole UTF-8 characters
                on_text(text[len(shown) :])
                shown = text
        text = reply_text(self.tokenizer, ids)
        if on_text is not None and len(text) > len(shown):
            on_text(text[len(shown) :])
        if not self.plain:
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
        return text


def _run_of(path: Path) -> Path | None:
    """The run an artifact is part of, found where runs put their files (RUN, RUN/merged,
    RUN/export/gguf/FILE, RUN/export/onnx/QUANT): a recipe.yaml further up (a project's, another
    tool's) is not the artifact's run, and its system prompt is not the artifact's."""
    places = [path]
    if path.name == "merged":
        places.append(path.parent)
    if path.parent.name in ("gguf", "onnx") and path.parent.parent.name == "export":
        places.append(path.parents[2])
    return next((p for p in places if (p / RECIPE_FILE).is_file() and (p / MANIFEST).is_file()), None)


def training_system_prompt(run: Path) -> str | None:
    """The system prompt every training chat had, as tune recorded it (its own, or the recipe's
    where it had none: the one the Modelfile carries); for a run from before tune recorded that, the
    recipe's, else the one the data's chats share (as it says now)."""
    from edgetune.data.split import make_splits
    from edgetune.export.modelfile import shared_system_prompt
    from edgetune.run_recipe import load_run_recipe
    from edgetune.rundir import read_manifest

    recorded = read_manifest(run).get("data") or {}
    if "trained_system_prompt" in recorded:  # (a recipe's prompt no chat lacked one for is not it)
        return recorded["trained_system_prompt"]
    recipe = load_run_recipe(run)
    if recipe.data.system_prompt:
        return recipe.data.system_prompt
    if "shared_system_prompt" in recorded:
        return recorded["shared_system_prompt"]
    try:
        return shared_system_prompt(make_splits(recipe.data, skip_bad_rows=True).train)
    except Exception:  # the data moved or changed since training: chat without one
        return None


def trained_on_plain_prompts(run: Path, tokenizer) -> bool:
    """Whether the run's training gave its prompts to the model with no chat template (its recipe's
    data.template and the data format its manifest recorded)."""
    from edgetune.data.render import Renderer
    from edgetune.run_recipe import load_run_recipe
    from edgetune.rundir import read_manifest

    data_format = (read_manifest(run).get("data") or {}).get("format")
    if not data_format:
        return False
    template = load_run_recipe(run).data.template
    return Renderer(tokenizer, template=template).plain_prompts(data_format)


def _tokenizer(path: Path, named: Path | None = None):
    """The tokenizer in `path`, named in errors as `named` (the user's folder where `path` is a view)."""
    from edgetune.models import ResolvedModel, load_tokenizer

    return load_tokenizer(ResolvedModel(str(named or path), path, "local"))


def _refuse_without_cuda(fmt: str) -> None:
    """--device cuda where it cannot run on CUDA. torch must see a CUDA device whatever the format:
    llama-cpp-python's GPU offload is Metal on a Mac, which took `--device cuda` on a GGUF file
    (bench checks torch too). llama.cpp and onnxruntime fall back to the CPU unasked."""
    from edgetune.bench.targets import check_devices, cuda_runtimes

    check_devices(["cuda"])
    if fmt != "torch" and (problem := cuda_runtimes()[fmt]):
        raise InputError(f"--device cuda: {problem}; chat on the CPU, or install a CUDA build")


def open_chat(
    artifact: Path,
    system: str | None = None,
    threads: int | None = None,
    device: str = "cpu",
    allow_pickle: bool = False,
) -> ChatSession:
    from edgetune.data.render import stop_ids

    artifact = Path(artifact)
    if not artifact.exists():
        raise InputError(f"{artifact}: no such file or directory")
    run = _run_of(artifact.resolve())
    if artifact.is_dir() and run is not None and run == artifact.resolve():  # a run: its merged model
        artifact = artifact / "merged"
        if not (artifact / "config.json").is_file():
            if not (artifact.parent / "adapter").is_dir():  # its tune did not finish (or diverged)
                from edgetune.tune.resume import no_adapter_yet

                raise no_adapter_yet(artifact.parent)
            raise InputError(f"{artifact.parent}: no merged model yet; run `edgetune merge` first")
    if artifact.is_dir():
        from edgetune.models import refuse_pickle
        from edgetune.validate import check_model_dir

        check_model_dir(artifact)
        refuse_pickle(artifact, allow_pickle)
    if artifact.is_file() and _is_gguf(artifact):
        target = Target(artifact.name, "gguf", "", "llama.cpp", device, artifact)
        if run is not None and (run / "merged" / "tokenizer.json").is_file():
            tokenizer_dir = run / "merged"  # the training tokenizer itself
            tokenizer = _tokenizer(tokenizer_dir)
        else:
            from edgetune.tokenizer_gguf import tokenizer_from_gguf

            tokenizer_dir, tokenizer = None, tokenizer_from_gguf(artifact)
    elif artifact.is_dir() and (artifact / "model.onnx").is_file():
        target = Target(artifact.name, "onnx", "", "onnxruntime", device, artifact)
        tokenizer_dir, tokenizer = artifact, _tokenizer(artifact)
    elif artifact.is_dir() and (artifact / "config.json").is_file():
        from edgetune.config_from_transformers5 import readable_model_dir

        readable = readable_model_dir(artifact)
        target = Target(artifact.name, "torch", "", "torch", device, readable)
        tokenizer_dir, tokenizer = readable, _tokenizer(readable, artifact)
    else:
        raise InputError(
            f"{artifact}: not a run directory, a .gguf file, an ONNX directory or an HF model directory"
        )
    if device == "cuda":
        _refuse_without_cuda(target.format)
    eos_ids = stop_ids(tokenizer_dir, tokenizer) if tokenizer_dir else None
    if run is not None:
        plain = trained_on_plain_prompts(run, tokenizer)
    else:  # a file shipped out of its run says so by the plain template it carries
        from edgetune.data.render import PLAIN_CHAT_TEMPLATE

        plain = tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    if system is None and not plain:  # away from its run, what the exported file carries
        system = training_system_prompt(run) if run is not None else shipped_system_prompt(artifact)
    # llama.cpp reserves its KV cache up front: the file's trained context, up to CHAT_CONTEXT
    kwargs = {"logits_all": False, "n_ctx": _gguf_context(artifact)} if target.format == "gguf" else {}
    try:
        runner = open_runner(target, threads, **kwargs)
    except EdgetuneError:
        raise
    except Exception as exc:  # a config that does not fit its weights, a graph onnxruntime refuses
        raise ModelError(f"{artifact}: cannot load the model ({short_reason(exc)})") from None
    if eos_ids is None:  # a GGUF on its own: stop where llama.cpp and its front-ends stop
        from edgetune.export.llama_runtime import end_of_generation_ids

        eos_ids = sorted(end_of_generation_ids(runner.llm))
    return ChatSession(runner, tokenizer, eos_ids, system, plain=plain)


CHAT_CONTEXT = 8192


def _is_gguf(path: Path) -> bool:
    """By its extension or its first bytes: Hugging Face repos and Ollama's blob store hold GGUF
    files named .bin or by their hash."""
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _gguf_context(path: Path) -> int:
    """The file's trained context ({arch}.context_length), at most CHAT_CONTEXT, and for a longrope
    model at most its original context."""
    from gguf import GGUFReader

    from edgetune.validate import check_gguf

    check_gguf(path)  # a damaged file: one clear line, not the reader's IndexError
    reader = GGUFReader(str(path))
    arch = reader.fields.get("general.architecture")
    field = reader.fields.get(f"{arch.contents()}.context_length") if arch is not None else None
    trained = int(field.contents()) if field is not None else 2048
    original = reader.fields.get(f"{arch.contents()}.rope.scaling.original_context_length") if arch else None
    if original is not None and any(t.name == "rope_factors_long.weight" for t in reader.tensors):
        # a longrope model (Phi-3.5, Phi-4-mini): past its original context llama.cpp computes every
        # prompt with the long factors, not as the model was tuned and benched (see faithful_context)
        trained = min(trained, int(original.contents()))
    return min(trained, CHAT_CONTEXT)
