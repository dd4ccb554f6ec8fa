import copy
import dataclasses
import json
from pathlib import Path

import pytest

from edgetune.config import (
    Recipe,
    bundled_recipes,
    find_recipe,
    load_recipe,
    recipe_from_dict,
)
from edgetune.errors import ConfigError
from edgetune.overrides import parse_override


@pytest.mark.parametrize("name", sorted(bundled_recipes()))
def test_every_bundled_recipe_loads_and_validates(name):
    path = bundled_recipes()[name]
    recipe = load_recipe(name)
    assert recipe.validate() == []
    assert recipe.name == name
    assert recipe.description
    assert Path(recipe.data.train).is_file(), recipe.data.train
    header = path.read_text().splitlines()[0]
    assert header.startswith("# edgetune "), f"{path.name} must open with the command that runs it"


def test_no_argument_means_demo():
    assert find_recipe(None) == bundled_recipes()["demo"]
    assert load_recipe().model.base == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    "text, value",
    [
        ("train.lr=1e-4", 1e-4),
        ("train.lr=0.001", 0.001),
        ("train.max_steps=40", 40),
        ("train.packing=true", True),
        ("train.threads=null", None),
        ("model.base=org/some-model", "org/some-model"),
        ("train.lora.r=8", 8),
    ],
)
def test_overrides_are_coerced_to_the_field_type(text, value):
    keys, _ = parse_override(text)
    recipe = load_recipe("demo", [text])
    node = recipe
    for key in keys:
        node = getattr(node, key)
    assert node == value and type(node) is type(value)


def test_list_override_accepts_commas():
    recipe = load_recipe("demo", ["export.formats=gguf", "export.gguf.quants=Q8_0,q4_k_m"])
    assert recipe.export.formats == ["gguf"]
    assert recipe.export.gguf.quants == ["q8_0", "q4_k_m"]  # as files are named


def test_overrides_given_as_one_string_are_refused_not_read_as_characters():
    """load_recipe(..., overrides="train.lr=1e-4") iterated the str: "--set t: expected KEY=VALUE".
    tune, run_pipeline and check_dataset made it a list of characters before load_recipe saw it."""
    from edgetune.data.report import check_dataset
    from edgetune.pipeline import run_pipeline
    from edgetune.tune.run import tune

    said = r"overrides: a list of KEY=VALUE strings, not one string: pass \['train.lr=1e-4'\]"
    for call in (load_recipe, tune, run_pipeline, lambda *a: check_dataset(*a, {}, tokens=False)):
        with pytest.raises(ConfigError, match=said):
            call("demo", "train.lr=1e-4")
    assert load_recipe("demo", ("train.lr=1e-4",)).train.lr == 1e-4  # any sequence of strings


def test_every_problem_is_reported_with_its_key_path():
    with pytest.raises(ConfigError) as info:
        load_recipe(
            "demo",
            [
                "train.nope=1",
                "train.lr=fast",
                "train.method=magic",
                "train.lora.r=0",
                "data.valid_fraction=0.9",
                "export.gguf.quants=q3_magic",
                "extra=1",
            ],
        )
    text = str(info.value)
    for key in (
        "train.nope",
        "train.lr",
        "train.method",
        "train.lora.r",
        "data.valid_fraction",
        "export.gguf.quants",
        "extra: unknown key",
    ):
        assert key in text, key
    assert len(info.value.problems) == 7


def test_type_errors_in_yaml_name_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  train: x.jsonl\n  max_seq_len: many\ntrain:\n  lora: 5\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path))
    assert "data.max_seq_len: expected an integer, got 'many'" in str(info.value)
    assert "train.lora: expected a mapping" in str(info.value)


def test_value_problems_name_the_line_of_their_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: x\ndefaults: &d\n  lr: 9\ndata:\n  train: x.jsonl\ntrain:\n  <<: *d\n  lora:\n    r: 0\n"
        "export:\n  gguf:\n    quants:\n      - q8_0\n      - q9_0\n"
    )
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path))
    assert info.value.problems == [
        "line 2: defaults: unknown key (known here: name, description, model, data, train, export, bench)",
        "line 3: train.lr: must be in (0, 1), got 9.0",  # where the anchor `<<` merged it from holds it
        "line 9: train.lora.r: must be >= 1, got 0",
        "line 12: export.gguf.quants: unknown quant 'q9_0'; supported: "
        "f32, f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q4_0, iq4_xs",
    ]
    path.write_text("data:\n  train: x.jsonl\n\ntrain:\n  batch_size: none\n")  # one problem: file:line
    with pytest.raises(
        ConfigError, match=f"^{path}:5: invalid recipe: train.batch_size: expected an integer"
    ):
        load_recipe(str(path))
    # a --set value's problem is not the file's: no line, and the file's own problems keep theirs
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path), ["train.lr=3"])
    assert info.value.problems == [
        "line 5: train.batch_size: expected an integer, got 'none'",
        "train.lr: must be in (0, 1), got 3.0 (from --set)",
    ]
    # a --set that made the file's number a mapping, or gave a list's bad item, is to blame as well
    path.write_text("data:\n  train: x.jsonl\ntrain:\n  lr: 0.001\nfoo:\n  a: 1\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path), ["train.lr.x=1", "bench.devices=cpu,tpu", "foo.b=2"])
    assert info.value.problems == [
        "train.lr: expected a number, got {'x': '1'} (from --set)",
        "line 5: foo: unknown key (known here: name, description, model, data, train, export, bench)",
        "bench.devices[1]: expected one of 'cpu', 'cuda', got 'tpu' (from --set)",
    ]


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  train: x.jsonl\n  format: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path))
    assert f"{path}:" in str(info.value)


def test_missing_recipe_file_and_unknown_name():
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("nowhere.yaml")
    with pytest.raises(ConfigError, match="bundled: "):
        load_recipe("no-such-recipe")


def test_recipe_paths_are_relative_to_the_recipe_and_set_paths_to_cwd(tmp_path):
    sub = tmp_path / "project"
    sub.mkdir()
    (sub / "r.yaml").write_text("data:\n  train: data/train.jsonl\n")
    recipe = load_recipe(str(sub / "r.yaml"))
    assert recipe.data.train == str(sub / "data" / "train.jsonl")
    recipe = load_recipe(str(sub / "r.yaml"), ["data.valid=v.jsonl"])
    assert recipe.data.valid == str(Path.cwd() / "v.jsonl")


def test_digest_changes_with_content():
    a = recipe_from_dict({"data": {"train": "a.jsonl"}})
    b = recipe_from_dict({"data": {"train": "a.jsonl"}, "train": {"lr": 1e-4}})
    assert a.digest() != b.digest()
    assert a.digest() == recipe_from_dict({"data": {"train": "a.jsonl"}}).digest()
    assert isinstance(a, Recipe)


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ".hidden", "x..y", ""])
def test_recipe_names_cannot_escape_the_runs_directory(name):
    from edgetune.config import load_recipe
    from edgetune.errors import ConfigError

    with pytest.raises(ConfigError, match="name: .* names the run directory"):
        load_recipe("demo", [f"name={name}"])


@pytest.mark.parametrize("name", ["latest", "Latest", "export", "tiny.previous"])
def test_recipe_names_edgetune_uses_in_runs_are_refused(name):
    """A recipe named `latest` took over whichever run runs/latest pointed at."""
    from edgetune.config import load_recipe
    from edgetune.errors import ConfigError

    with pytest.raises(ConfigError, match=f"name: '{name}' is taken in runs/"):
        load_recipe("demo", [f"name={name}"], new_run=True)
    assert load_recipe("demo", [f"name={name}"]).name == name  # a run saved so still loads


def test_a_key_given_twice_non_utf8_bytes_and_a_directory_are_refused_by_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntrain:\n  lr: 1.0e-4\n  batch_size: 2\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError, match=rf"{path}:5: .*'lr' is given twice in one section"):
        load_recipe(str(path))
    path.write_text("defaults: &d\n  lr: 1.0e-4\n  batch_size: 2\ntrain:\n  <<: *d\n  lr: 2.0e-4\n")
    with pytest.raises(ConfigError, match="defaults: unknown key"):  # a merge key may be overridden
        load_recipe(str(path))
    path.write_bytes(b"name: x\ntrain:\n  lr: \xff\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: .*not UTF-8 text"):
        load_recipe(str(path))
    (tmp_path / "recipes").mkdir()
    with pytest.raises(ConfigError, match="recipes is a directory; give the recipe's YAML file"):
        load_recipe(str(tmp_path / "recipes"))
    (tmp_path / "demo").mkdir()  # a directory named like a bundled recipe does not hide it
    assert load_recipe("demo").name == "demo"


def test_counts_and_limits_out_of_range_are_refused_with_their_key():
    bad = {
        "train.weight_decay": -0.1,
        "train.max_grad_norm": -1,
        "train.lora.alpha": 0,
        "train.lora.target_modules": "[]",
        "export.formats": "[]",
        "export.parity_examples": 0,
        "bench.devices": "[]",
        "bench.max_examples": 0,
        "bench.max_new_tokens": 0,
        "bench.few_shot_k": -1,
        "bench.kl_examples": -1,
        "bench.latency_repeats": 0,
        "bench.baseline_examples": 0,
        "bench.forgetting_kl_warn": 0,
    }
    with pytest.raises(ConfigError) as info:
        load_recipe("demo", [f"{key}={value}" for key, value in bad.items()])
    assert sorted(p.split(":")[0] for p in info.value.problems) == sorted(bad)
    load_recipe("demo", ["bench.few_shot_k=0", "bench.kl_examples=0", "train.max_grad_norm=0"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=nan", "train.epochs: expected a finite number, got 'nan'"),
        ("train.epochs=.inf", "train.epochs: expected a finite number, got inf"),
        ("train.max_grad_norm=nan", "train.max_grad_norm: expected a finite number"),
        ("bench.gates.max_kl=.nan", "bench.gates.max_kl: expected a number or null"),
        (
            "bench.gates.min_retention.q8_0=high",
            "bench.gates.min_retention.q8_0: expected a number, got 'high'",
        ),
        ("bench.gates.min_retention={q8_0: null}", "min_retention.q8_0: expected a number, got None"),
        ("train.seed=-1", "train.seed: must be in [0, 2**32), got -1"),  # an internal error in numpy
        ("train.seed=4294967296", "train.seed: must be in [0, 2**32)"),
        (  # one type in two cases: the gates would read one of the two minimums, unsaid which
            "bench.gates.min_retention={q8_0: 0.9, Q8_0: 0.99}",
            "bench.gates.min_retention.Q8_0: q8_0 is given too",
        ),
    ],
)
def test_nan_infinity_and_bad_entries_are_refused_not_kept(override, message):
    """NaN passes every range test (all its comparisons are false); a bad mapping entry is reported
    once, not kept as null for a later comparison to trip on."""
    with pytest.raises(ConfigError) as info:
        load_recipe("demo", [override])
    assert message in str(info.value) and len(info.value.problems) == 1, info.value.problems


def test_lora_alpha_takes_any_positive_number_and_keeps_an_integral_one_an_int():
    from edgetune.tune.model import lora_config

    half = load_recipe("demo", ["train.lora.alpha=8.5", "train.lora.r=4"]).train.lora
    assert lora_config(half).lora_alpha == 8.5
    demo = load_recipe("demo", ["train.lora.alpha=32.0"]).train.lora
    whole = lora_config(demo).lora_alpha
    assert whole == 32 and isinstance(whole, int)  # adapter_config.json says 32, as peft writes it
    # and a run's tune fingerprint (a hash of the train section) is what it was with integer alphas
    assert json.dumps(dataclasses.asdict(demo)["alpha"]) == "32"
    with pytest.raises(ConfigError, match=r"train.lora.alpha: must be > 0, got -1"):
        load_recipe("demo", ["train.lora.alpha=-1"])


def test_an_empty_quant_list_for_an_exported_format_is_refused():
    """export.gguf.quants: [] exported nothing and bench failed for it minutes later."""
    from edgetune.config import load_recipe
    from edgetune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"export.gguf.quants: empty while export.formats has gguf"):
        load_recipe("demo", ["export.gguf.quants=[]"], new_run=True)
    assert load_recipe("demo", ["export.gguf.quants=[]", "export.formats=[onnx]"], new_run=True)
    assert load_recipe("demo", ["export.gguf.quants=[]"]).export.gguf.quants == []  # a saved run loads


def test_export_types_spelled_otherwise_are_the_recipes_own_files():
    """export.gguf.quants: [Q8_0, q8_0, q4_k_m] changed the export fingerprint: the files made
    already (model-q8_0.gguf) were exported again."""
    from edgetune.fingerprints import hashed_settings

    default = load_recipe("demo")
    spelled = load_recipe(
        "demo",
        [
            "export.gguf.quants=[Q8_0,q8_0,Q4_K_M]",
            "export.onnx.quants=[FP32,int8,INT8,int4]",
        ],
    )
    assert spelled.export.gguf.quants == ["q8_0", "q4_k_m"]
    assert spelled.export.onnx.quants == default.export.onnx.quants
    assert load_recipe("demo", ["export.gguf.f16_output=[Q8_0,q8_0]"]).export.gguf.f16_output == ["q8_0"]
    assert hashed_settings("export", spelled.export) == hashed_settings("export", default.export)


@pytest.mark.parametrize("command", ["run", "tune"])
def test_tune_and_run_refuse_what_a_new_run_must_not_start_with(command):
    from click.testing import CliRunner

    from edgetune.cli import main

    result = CliRunner().invoke(main, [command, "--set", "name=latest", "--set", "export.onnx.quants=[]"])
    assert result.exit_code == 2, result.output
    assert (
        "name: 'latest' is taken in runs/" in result.output and "export.onnx.quants: empty" in result.output
    )


def test_set_keeps_the_text_of_a_string_setting_that_yaml_would_read_otherwise():
    """`--set` values are YAML scalars: a comment was cut off a system prompt, `12:30` became 750,
    a revision `0123` became 83, and `1.10` became 1.1. Quoted values and numbers stay as YAML reads them."""
    sets = {
        "data.system_prompt=Reply in JSON #v2 schema": ("data", "system_prompt", "Reply in JSON #v2 schema"),
        "data.system_prompt=12:30": ("data", "system_prompt", "12:30"),
        "data.system_prompt='quoted #x'": ("data", "system_prompt", "quoted #x"),
        "model.revision=0123": ("model", "revision", "0123"),
        "name=1.10": (None, "name", "1.10"),
        "data.system_prompt=Answer: yes or no": ("data", "system_prompt", "Answer: yes or no"),
        "data.system_prompt=No": ("data", "system_prompt", "No"),
        "data.system_prompt=null": ("data", "system_prompt", None),
        "data.system_prompt=~": ("data", "system_prompt", None),
        # a Markdown header reads as a YAML comment, so as null: it had trained with no system prompt
        "data.system_prompt=# Role: reply with JSON only": (
            "data",
            "system_prompt",
            "# Role: reply with JSON only",
        ),
        "model.revision=2024-01-01": ("model", "revision", "2024-01-01"),
        "train.packing=true": ("train", "packing", True),
        "train.max_steps=0x10": ("train", "max_steps", 16),
        "train.max_steps=0012": ("train", "max_steps", 12),  # not YAML 1.1's octal 10
        "train.lora.target_modules=[q_proj, v_proj]": ("train", "lora", None),
        "bench.gates.min_retention={}": ("bench", "gates", None),
        "train.epochs=1.50": ("train", "epochs", 1.5),
        "train.lr=1e-4": ("train", "lr", 1e-4),
    }
    for text, (section, key, expected) in sets.items():
        recipe = load_recipe("demo", [text])
        if expected is not None or key == "system_prompt":
            assert getattr(getattr(recipe, section) if section else recipe, key) == expected, text
    assert load_recipe("demo", ["train.lora.target_modules=[q_proj, v_proj]"]).train.lora.target_modules == [
        "q_proj",
        "v_proj",
    ]
    assert load_recipe("demo", ["bench.gates.min_retention={}"]).bench.gates.min_retention == {}
    # a mapping given a whole section merges into it: the demo's retention gates and its 60 steps stay
    gates = load_recipe("demo", ["bench.gates={max_kl: 0.5}"]).bench.gates
    assert gates.max_kl == 0.5 and gates.min_retention["q8_0"] == 0.99
    assert load_recipe("demo", ["train={lr: 1e-4}"]).train.max_steps == 60
    assert (
        load_recipe("demo", ["bench.gates.min_retention.q8_0=0.9"]).bench.gates.min_retention["q8_0"] == 0.9
    )


def test_a_recipe_file_keeps_the_text_of_a_string_setting_as_set_does(tmp_path):
    """In a recipe file `revision: 0123` became '83', `name: 1.10` named the run 1.1 and a date was
    refused as a description, where --set kept each as written; `max_steps: 1e3` (a string to YAML
    1.1) was refused where `lr: 1e-4` is read, and `--set train.threads=` could not go back to null."""
    from edgetune.recipe_yaml import read_recipe_yaml

    path = tmp_path / "r.yaml"
    path.write_text(
        "name: 1.10\ndescription: 2024-01-01\nmodel:\n  revision: 0123\ndata:\n  system_prompt: 12:30\n"
        "train:\n  max_steps: 1e3\n  batch_size: 0012\n  lr: 2e-4\n  epochs: 1.50\n  threads: 2\n"
        "bench:\n  gates:\n    max_kl: .5\n"
    )
    recipe = load_recipe(str(path))
    assert (recipe.name, recipe.description) == ("1.10", "2024-01-01")
    assert (recipe.model.revision, recipe.data.system_prompt) == ("0123", "12:30")
    assert (recipe.train.max_steps, recipe.train.batch_size, recipe.train.lr) == (1000, 12, 2e-4)
    assert (recipe.train.epochs, recipe.bench.gates.max_kl, recipe.train.threads) == (1.5, 0.5, 2)
    assert load_recipe(str(path), ["train.threads="]).train.threads is None
    raw, _ = read_recipe_yaml(path)
    assert copy.deepcopy(raw) == raw  # the mapping load_recipe keeps a copy of
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer, got 1.5"):
        load_recipe(str(path), ["train.max_steps=1.5"])


def test_held_out_fractions_that_leave_less_than_half_to_train_on_are_refused():
    """valid 0.49 and test 0.49 trained on 4 of 200 rows without a word."""
    with pytest.raises(ConfigError, match="0.98 of data.train held out leaves 2% to train on"):
        load_recipe("demo", ["data.valid_fraction=0.49", "data.test_fraction=0.49"], new_run=True)
    # a file given for a split carves nothing from data.train
    sets = ["data.valid_fraction=0.49", "data.test_fraction=0.49", "data.test=x.jsonl"]
    assert load_recipe("demo", sets, new_run=True).data.valid_fraction == 0.49
    load_recipe("demo", sets[:2])  # a run saved with them still loads


def test_a_check_across_keys_that_a_set_broke_says_so_next_to_the_files_line(tmp_path):
    """`--set train.eval_steps=7` against the file's save_steps 6 was blamed on the file's line
    alone, as if the file were wrong by itself."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  train: x.jsonl\ntrain:\n  eval_steps: 2\n  save_steps: 6\n")
    with pytest.raises(ConfigError) as failed:
        load_recipe(str(path), ["train.eval_steps=7"])
    assert str(failed.value).startswith(f"{path}:6: invalid recipe: train.save_steps: must be a multiple")
    assert str(failed.value).endswith("got 6 (with --set train.eval_steps)")
    with pytest.raises(ConfigError, match=r"goes without \(with --set bench.baselines\)$"):
        load_recipe("demo", ["bench.baselines=false"])


def test_lora_target_modules_all_linear_in_any_case_and_a_list_of_no_names():
    """`ALL-LINEAR` failed after the model loaded with peft's "Target modules {'ALL-LINEAR'} not
    found" (choices are read whatever their case elsewhere), and `,,` with "No target_modules passed"."""
    assert (
        load_recipe("demo", ["train.lora.target_modules=ALL-LINEAR"]).train.lora.target_modules
        == "all-linear"
    )
    with pytest.raises(ConfigError, match="train.lora.target_modules: ',,' names no module"):
        load_recipe("demo", ["train.lora.target_modules=',,'"])


def test_one_type_spelled_two_ways_is_exported_once():
    from edgetune.export.run import split_quants

    recipe = load_recipe("demo", ["export.gguf.quants=q8_0,Q8_0", "export.onnx.quants=fp32,FP32"])
    assert split_quants(None, recipe) == (["q8_0"], ["fp32"])
    assert split_quants(["Q4_K_M", "q4_k_m", "INT8"], recipe) == (["q4_k_m"], ["int8"])


def test_a_recipe_without_a_name_is_named_by_its_file(tmp_path):
    """Every recipe without `name:` had been "custom": two of them in one project shared runs/custom,
    each run of one setting the other's aside (and retraining it the next time)."""
    for file, expected in (
        ("my exp.yaml", "my-exp"),
        ("b.yaml", "b"),
        ("latest.yaml", "custom"),
        ("_.yaml", "custom"),
        ("v1...final.yaml", "v1.final"),
        ("exp-b/recipe.yaml", "exp-b"),  # one folder per experiment: named by the folder
    ):
        path = tmp_path / file
        path.parent.mkdir(exist_ok=True)
        path.write_text("train:\n  lr: 1.0e-4\n")
        assert load_recipe(str(path)).name == expected, file
    assert load_recipe(str(tmp_path / "b.yaml"), ["name=mine"]).name == "mine"


def test_a_bad_value_is_not_blamed_again_by_a_check_that_read_its_default(tmp_path):
    """--set train.eval_steps=1.5 also said "save_steps must be a multiple of train.eval_steps (20)":
    20 is the default the bad value left in place, not anything the user wrote."""
    with pytest.raises(ConfigError) as info:
        load_recipe("demo", ["train.eval_steps=1.5", "train.save_steps=30"])
    assert "train.eval_steps" in str(info.value) and "multiple" not in str(info.value)
    # with no validation split there is no evaluation: save_steps is free
    recipe = load_recipe("demo", ["data.valid_fraction=0", "train.eval_steps=20", "train.save_steps=30"])
    assert recipe.train.save_steps == 30
    with pytest.raises(ConfigError, match="must be a multiple of train.eval_steps \\(20\\)"):
        load_recipe("demo", ["train.save_steps=30"])
    # only the field that failed is spared: a problem that merely holds its letters is still said
    with pytest.raises(ConfigError) as info:
        load_recipe("demo", ["train.eval_steps=1.5", "train.warmup_ratio=2"])
    assert "train.warmup_ratio: must be in [0, 1)" in str(info.value)


def test_a_recipe_whose_aliases_expand_without_end_is_refused_at_once(tmp_path):
    """Nine anchors, each ten aliases of the one before (a "billion laughs"): every command that
    read it ran on for minutes, gigabytes growing."""
    import time

    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ndata:\n  train: d.jsonl\n")
    started = time.monotonic()
    with pytest.raises(
        ConfigError, match=r"bomb.yaml: invalid recipe: its anchors and aliases expand to 100,001"
    ):
        load_recipe(str(bomb))
    assert time.monotonic() - started < 5
    deep = tmp_path / "deep.yaml"
    deep.write_text("data: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="deep.yaml: invalid recipe: invalid YAML: nested too deeply"):
        load_recipe(str(deep))


def test_the_recipes_digest_is_the_same_for_a_project_checked_out_elsewhere(tmp_path, tiny_model_dir):
    """It hashed the data files' and the local base's absolute paths, and the GGUF records it: the
    same project in two folders made GGUF files that differed in that one field."""
    import shutil

    digests = []
    for where in ("a", "b"):
        project = tmp_path / where
        shutil.copytree(tiny_model_dir, project / "model")
        (project / "d.jsonl").write_text('{"text": "x"}\n')
        (project / "r.yaml").write_text("model:\n  base: ./model\ndata:\n  train: d.jsonl\n")
        digests.append(load_recipe(str(project / "r.yaml")).digest())
    assert digests[0] == digests[1]
    changed = load_recipe(str(tmp_path / "a" / "r.yaml"), ["train.lr=1e-4"]).digest()
    held_out = load_recipe(str(tmp_path / "a" / "r.yaml"), [f"data.test={tmp_path / 'a' / 'd.jsonl'}"])
    assert changed != digests[0] and held_out.digest() != digests[0]
    assert load_recipe("demo").digest() != load_recipe("demo", ["model.base=smollm2-360m-instruct"]).digest()
