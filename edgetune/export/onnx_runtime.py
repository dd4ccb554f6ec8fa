"""A decoder exported by optimum (text-generation-with-past) driven directly through onnxruntime.

Used through edgetune.bench.runners.OnnxRunner by the parity check, bench and chat. The same directory also loads with optimum's ORTModelForCausalLM; this class exists so that
each step is explicit and timed, and so that external data is checked before onnxruntime opens it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgetune.cores import default_threads
from edgetune.errors import InputError, ModelError
from edgetune.export.onnx_graph import LOGITS_FROM

MODEL_FILE = "model.onnx"


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # as llama.cpp's: the user's OMP_NUM_THREADS, else the usable cores (onnxruntime's own default
    # counts the machine's physical cores, past a container's cpuset)
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3  # errors only: no "initializer appears in graph inputs" chatter
    return options


def load_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that onnxruntime's CUDA provider links by name before a
    session opens: torch's wheels ship them (importing torch loads most), and onnxruntime's own
    preload_dlls finds the rest, cuDNN among them, in the nvidia packages beside it."""
    import contextlib

    import onnxruntime as ort
    import torch  # noqa: F401

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21; a CPU build returns at once
    if preload is not None:
        with contextlib.suppress(Exception):
            preload(msvc=False)


def check_onnx_dir(model_dir: Path) -> dict:
    """An ONNX export directory's config, once its graph, JSON files, weights' external data and the
    config's cache dimensions are checked: bench names a damaged one before it measures anything."""
    from edgetune.export.onnx_graph import external_data_files
    from edgetune.validate import check_model_dir

    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise InputError(f"{model_dir}: no {MODEL_FILE}; not an ONNX export directory")
    check_model_dir(Path(model_dir))
    external_data_files(path)
    from edgetune.models import has_tokenizer_files

    if not has_tokenizer_files(Path(model_dir)):  # what a front-end reads text with
        raise InputError(
            f"{model_dir}: no tokenizer files (tokenizer.json, ...): the folder is incomplete; export it again"
        )
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        OnnxDecoder._kv_dims(config)
    except (OSError, ValueError) as e:
        raise InputError(f"{Path(model_dir) / 'config.json'}: cannot read it ({e})") from e
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{Path(model_dir) / 'config.json'}: no attention shape in it ({e})") from None
    return config


class OnnxDecoder:
    def __init__(self, model_dir: Path, threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort

        self.dir = Path(model_dir)
        path = self.dir / MODEL_FILE
        config = check_onnx_dir(self.dir)
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            load_cuda_libraries()
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError(
                    "onnxruntime here has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        except Exception as e:
            raise ModelError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # onnxruntime falls back to the CPU by itself when the CUDA provider cannot start (missing
            # CUDA or cuDNN libraries): numbers measured now would be CPU numbers labelled cuda
            raise ModelError(
                f"{path}: onnxruntime's CUDA provider did not start (CUDA/cuDNN libraries missing or "
                f"mismatched?); the session runs on {self.session.get_providers()[0]}"
            )
        # an optional input (one with a default, like logits_from) is an overridable initializer
        self.input_names = {i.name for i in self.session.get_inputs()} | {
            i.name for i in self.session.get_overridable_initializers()
        }
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values")]
        if not self._past_inputs:  # each step would see one token and nothing before it
            raise InputError(
                f"{path}: a decoder without a key/value cache (past_key_values inputs); export it with "
                "the cache (`edgetune export`, or optimum's task text-generation-with-past)"
            )
        self._kv_shape = self._kv_dims(config)
        self.max_positions = self.context_of(config)

    @staticmethod
    def context_of(config: dict) -> int | None:
        """The positions the graph answers as torch does: a longrope model's (Phi-3.5, Phi-4-mini)
        graph holds only the short factors, so its original context; others' whole one."""
        scaling = config.get("rope_scaling") or {}
        if scaling.get("type", scaling.get("rope_type")) == "longrope":
            return config.get("original_max_position_embeddings") or config.get("max_position_embeddings")
        return config.get("max_position_embeddings")

    @staticmethod
    def _kv_dims(config: dict) -> tuple[int, int]:
        """(kv heads, head dim) from config.json: the ONNX shapes of past_key_values are symbolic."""
        heads = config.get("num_key_value_heads") or config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        return int(heads), int(head_dim)

    def _past_dtype(self, name: str):
        kind = next(i.type for i in self._past_inputs if i.name == name)
        return np.float16 if "float16" in kind else np.float32

    def empty_past(self) -> dict[str, np.ndarray]:
        heads, dim = self._kv_shape
        return {i.name: np.zeros((1, heads, 0, dim), self._past_dtype(i.name)) for i in self._past_inputs}

    def forward(
        self, ids: list[int], past: dict[str, np.ndarray] | None, start: int, last_only: bool = False
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [len(ids), vocab] for `ids` placed after `start` cached tokens, and the new cache;
        with `last_only`, logits of the last position only ([1, vocab]) where the graph has the
        `logits_from` input (edgetune's exports since it was added; older ones compute every row)."""
        n = len(ids)
        feeds = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, start + n), dtype=np.int64),
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
            **(past if past is not None else self.empty_past()),
        }
        if last_only:
            feeds[LOGITS_FROM] = np.array([n - 1], dtype=np.int64)
        outputs = self.session.run(
            self.output_names, {k: v for k, v in feeds.items() if k in self.input_names}
        )
        named = dict(zip(self.output_names, outputs))
        present = {
            k.replace("present", "past_key_values", 1): v for k, v in named.items() if k.startswith("present")
        }
        return named["logits"][0], present

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.forward(ids, None, 0)[0].astype(np.float64)


def model_files(model_dir: Path) -> list[Path]:
    path = Path(model_dir) / MODEL_FILE
    from edgetune.export.onnx_graph import external_data_files

    return [path, *external_data_files(path)]


def directory_size(model_dir: Path) -> int:
    return sum(os.path.getsize(p) for p in model_files(model_dir))
