"""Recipes: typed dataclasses, YAML loading and `--set section.key=value` overrides.

Precedence: dataclass defaults < recipe YAML < --set overrides. Every problem (unknown key, wrong
type, bad value) is collected with its key path and reported at once in one ConfigError.
Relative paths in a recipe file resolve against the recipe's directory; paths given with --set
resolve against the current directory.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgetune.bench.settings import BenchConfig
from edgetune.errors import ConfigError
from edgetune.export.settings import ExportConfig
from edgetune.overrides import apply_overrides, blame_overrides, override_list
from edgetune.recipe_yaml import name_from_file, read_recipe_yaml, with_lines
from edgetune.typed import at_least, build, not_empty

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "demo"


@dataclass
class ModelConfig:
    base: str = "smollm2-135m-instruct"  # built-in alias, local HF directory, or hub id
    revision: str | None = None
    trust_remote_code: bool = False  # runs Python shipped with the model: only when turned on here
    allow_pickle: bool = False  # .bin/.pt weights (pickles) are refused unless turned on


@dataclass
class DataConfig:
    train: str = ""
    valid: str | None = None
    test: str | None = None
    format: Literal["auto", "messages", "prompt_completion", "text", "alpaca", "sharegpt"] = "auto"
    template: Literal["auto", "chat", "plain"] = "auto"  # auto: the chat template when the model has one
    system_prompt: str | None = None  # added to examples that have no system message
    max_seq_len: int = 1024
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 1234
    # position: a seeded shuffle of the rows' positions (one row removed moves most held-out rows);
    # input: each row's place by a seeded hash of its input, so a row keeps its split while rows
    # are added, removed or their answers corrected (rows asking the same sit side by side)
    split_by: Literal["position", "input"] = "position"
    dedupe: bool = True
    drop_overlap: bool = True  # drop train examples that also appear in valid/test
    truncation: Literal["drop", "truncate"] = "drop"
    skip_bad_rows: bool = False

    def validate(self) -> list[str]:
        problems = []
        if self.max_seq_len < 16:
            problems.append(f"data.max_seq_len: must be >= 16, got {self.max_seq_len}")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                problems.append(f"data.{name}: must be in [0, 0.5), got {value}")
        return problems

    def held_out_too_much(self) -> list[str]:
        """0.49 each had trained on 2% of the rows, unwarned (a new run's check: a run saved with
        them still loads)."""
        carved = (0 if self.valid else self.valid_fraction) + (0 if self.test else self.test_fraction)
        if carved <= 0.5 or max(self.valid_fraction, self.test_fraction) >= 0.5:
            return []  # (one fraction out of range is a problem of its own)
        return [
            f"data.valid_fraction + data.test_fraction: {carved:g} of data.train held out leaves "
            f"{1 - carved:.0%} to train on; at most 0.5 together"
        ]


@dataclass
class LoraConfig:
    r: int = 16
    # the adapter's scale is alpha / r (alpha / sqrt(r) with rslora): any number > 0. An integral one
    # stays an int: in adapter_config.json, and in the run's tune fingerprint (32.0 would retrain)
    alpha: int | float = 32
    dropout: float = 0.05
    target_modules: str | list[str] = (
        "all-linear"  # "all-linear", or names: [q_proj, v_proj] / "q_proj,v_proj"
    )
    rslora: bool = False
    dora: bool = False

    def __post_init__(self) -> None:  # ALL-LINEAR, as other choices are read whatever their case
        if isinstance(self.target_modules, str) and self.target_modules.strip().lower() == "all-linear":
            self.target_modules = "all-linear"

    def validate(self) -> list[str]:
        problems = at_least("train.lora", self, 1, "r")
        if not self.alpha > 0:
            problems.append(f"train.lora.alpha: must be > 0, got {self.alpha}")
        problems += not_empty("train.lora", self, "target_modules")
        if (
            isinstance(self.target_modules, str)
            and self.target_modules
            and not self.target_modules.strip(" ,")
        ):
            problems.append(  # peft said "No target_modules passed but also no target_parameters found"
                f"train.lora.target_modules: {self.target_modules!r} names no module; "
                '"all-linear", or names such as q_proj,v_proj'
            )
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"train.lora.dropout: must be in [0, 1), got {self.dropout}")
        return problems


@dataclass
class TrainConfig:
    method: Literal["auto", "lora", "qlora"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the hardware runs it natively
    lr: float = 2e-4
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_steps: int = 20
    save_steps: int = 20
    early_stopping_patience: int = 3  # evaluations without improvement; 0 disables
    packing: bool = False
    # recompute activations in the backward pass: less memory, ~30% more compute
    gradient_checkpointing: bool | None = None  # None: on for QLoRA on a GPU
    threads: int | None = None
    tensorboard: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> list[str]:
        problems = []
        if not 0.0 < self.lr < 1.0:
            problems.append(f"train.lr: must be in (0, 1), got {self.lr}")
        if self.epochs <= 0 and self.max_steps <= 0:
            problems.append("train.epochs: must be > 0 unless train.max_steps is set")
        problems += at_least(
            "train", self, 1, "batch_size", "grad_accum", "eval_steps", "save_steps", "threads"
        )
        problems += at_least("train", self, 0, "weight_decay", "max_grad_norm", "early_stopping_patience")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"train.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.seed < 2**32:  # numpy's seeds
            problems.append(f"train.seed: must be in [0, 2**32), got {self.seed}")
        return problems + self.lora.validate()


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    source: str | None = field(default=None, metadata={"internal": True})

    def validate(self) -> list[str]:
        problems = []
        # the name becomes a directory under runs/: no separators, no "..", no hidden names
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name) or ".." in self.name:
            problems.append(
                f"name: {self.name!r} must be letters, digits, '.', '_' or '-' (it names the run directory)"
            )
        # the Trainer keeps the best checkpoint by validation loss: without validation, no evaluation
        t, validated = self.train, bool(self.data.valid) or self.data.valid_fraction > 0
        if validated and t.eval_steps >= 1 and t.save_steps % t.eval_steps:
            problems.append(
                f"train.save_steps: must be a multiple of train.eval_steps ({t.eval_steps}) so the "
                f"best checkpoint by validation loss is saved, got {t.save_steps}"
            )
        return (
            problems
            + self.data.validate()
            + self.train.validate()
            + self.export.validate()
            + self.bench.validate()
        )

    def new_run_problems(self) -> list[str]:
        """What a new run must not start with, though a run saved before these checks may hold it
        (its recipe still loads, for bench, export --check and chat)."""
        # (`edgetune data check DATA --recipe R` takes R's settings for DATA: R needs no data of its own)
        problems = (
            [] if self.data.train else ["data.train: required (a .jsonl, .json, .csv, .tsv or .parquet file)"]
        )
        problems += self.data.held_out_too_much() + self.bench.unmeasured_gates()
        # runs/ also holds the latest-run link, plain-model exports and runs set aside by `edgetune run`
        if self.name.lower() in ("latest", "export") or self.name.lower().endswith(".previous"):
            problems.append(
                f"name: {self.name!r} is taken in runs/ (runs/{self.name} is edgetune's own); rename it"
            )
        for fmt in ("gguf", "onnx"):  # an empty list exported nothing, and bench failed for it later
            if fmt in self.export.formats and not getattr(self.export, fmt).quants:
                problems.append(
                    f"export.{fmt}.quants: empty while export.formats has {fmt}; name a type or drop {fmt}"
                )
        return problems

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source", None)
        return out

    def digest(self) -> str:
        """A stable hash of the resolved recipe, recorded in manifests and GGUF metadata: where its
        data files and a local base lie is left out (their bytes are fingerprinted on their own), so
        the same project checked out in two places makes byte-identical files."""
        raw = self.to_dict()
        for key in ("train", "valid", "test"):
            raw["data"][key] = "<file>" if raw["data"][key] else None
        if is_local_base(raw["model"]["base"]):
            raw["model"]["base"] = "<local folder>"
        blob = json.dumps(raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------- overrides, files, bundled recipes


def bundled_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def find_recipe(name_or_path: str | None) -> Path:
    """A recipe argument is a YAML path or the name of a bundled recipe; None means the demo."""
    if name_or_path is None:
        name_or_path = DEFAULT_RECIPE
    path = Path(name_or_path)
    bundled = bundled_recipes()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if path.is_dir():
            raise ConfigError([f"{path} is a directory; give the recipe's YAML file"])
        if not path.is_file():
            # `recipes/demo.yaml`, as the README runs it in a checkout, from anywhere else (a pip
            # install ships the bundled recipes inside the package, under their names)
            hint = f" (the bundled recipe of that name is `{path.stem}`)" if path.stem in bundled else ""
            raise ConfigError([f"recipe file not found: {path}{hint}"])
        return path
    if name_or_path in bundled:  # a directory named like a bundled recipe (runs/demo's parent) is not one
        return bundled[name_or_path]
    if path.is_dir():
        raise ConfigError([f"{path} is a directory; give the recipe's YAML file"])
    raise ConfigError(
        [f"no recipe file or bundled recipe named {name_or_path!r}; bundled: {', '.join(bundled)}"]
    )


_PATH_KEYS = (("data", "train"), ("data", "valid"), ("data", "test"))


def _resolve_paths(raw: dict[str, Any], base_dir: Path) -> None:
    """Make the recipe's relative data paths absolute against base_dir (in place)."""
    for section, key in _PATH_KEYS:
        node = raw.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            p = Path(node[key]).expanduser()
            node[key] = str(p if p.is_absolute() else (base_dir / p).resolve())
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str):
        candidate = Path(model["base"]).expanduser()
        if not candidate.is_absolute() and model["base"].startswith((".", "/", "~")):
            model["base"] = str((base_dir / candidate).resolve())


def load_recipe(
    name_or_path: str | None = None, overrides: list[str] | None = None, new_run: bool = False
) -> Recipe:
    """Load, override and validate a recipe; raise one ConfigError listing every problem.
    `new_run`: a tune or run starts from it (Recipe.new_run_problems too)."""
    overrides = override_list(overrides)
    path = find_recipe(name_or_path)
    raw, lines = read_recipe_yaml(path)
    if "name" not in raw:  # runs/<name>: recipes without one each get their own, not one runs/custom
        raw["name"] = name_from_file(path)
    _resolve_paths(raw, path.resolve().parent)
    in_file = copy.deepcopy(raw)
    over_raw: dict[str, Any] = {}
    apply_overrides(over_raw, overrides)
    _resolve_paths(over_raw, Path.cwd())
    _merge_overrides(raw, over_raw, Recipe)
    problems: list[str] = []
    recipe = build(Recipe, raw, "", problems)
    # fields that failed conversion kept their defaults: a check across fields would blame those
    failed = [
        re.compile(rf"(?<![\w.]){re.escape(p.split(':')[0])}(?![\w.])")
        for p in problems
        if "." in p.split(":")[0]
    ]
    problems += [p for p in recipe.validate() if not any(f.search(p) for f in failed)]
    problems += recipe.new_run_problems() if new_run else []
    if problems:
        problems = blame_overrides(problems, overrides, in_file)
        raise ConfigError(*with_lines(problems, lines, path))
    recipe.source = str(path)
    return recipe


def _merge_overrides(raw: dict[str, Any], over: dict[str, Any], cls: type | None) -> None:
    """--set values into the recipe's mapping. A recipe section (`cls`'s dataclass fields: train,
    bench.gates) merges, given key by key or whole (`train={lr: 1e-4}`); so does a mapping setting
    given key by key (`bench.gates.min_retention.q8_0=0.9`); one given whole
    (`bench.gates.min_retention={}`, overrides.Replacing) replaces the recipe's; anything else replaces."""
    from edgetune.overrides import Replacing

    hints = typing.get_type_hints(cls) if cls is not None else {}
    for key, value in over.items():
        section = hints.get(key) if dataclasses.is_dataclass(hints.get(key)) else None
        whole = isinstance(value, Replacing) and section is None
        if isinstance(value, dict) and not whole and isinstance(raw.get(key), dict):
            _merge_overrides(raw[key], value, section)
        else:
            raw[key] = dict(value) if isinstance(value, dict) else value


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    problems: list[str] = []
    recipe = build(Recipe, raw, "", problems)
    problems += recipe.validate()
    if problems:
        raise ConfigError(problems)
    return recipe


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge extra into base in place: nested mappings merge, anything else replaces."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value


def is_local_base(base: str) -> bool:
    """Whether model.base names a folder on disk (not a built-in alias or a hub id)."""
    from edgetune.models import BUILTINS

    return base not in BUILTINS and Path(base).expanduser().is_dir()
