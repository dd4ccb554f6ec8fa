"""Hardening: untrusted model files never run code; corrupt files give one clear error.

The crash-safety tests (kill -9 during training and during a checkpoint write, stale temporaries)
and the same-seed test live in test_tune.py; path confinement of ONNX external data in test_onnx.py."""

import json
import os
import shutil
from pathlib import Path

import pytest

from edgetune.errors import ModelError
from edgetune.models import resolve_model


def pickled_model_dir(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model)
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    return model


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_model_dir):
    from click.testing import CliRunner
    from conftest import chat_row, write_jsonl

    from edgetune.cli import main

    model = pickled_model_dir(tmp_path, tiny_model_dir)
    with pytest.raises(ModelError, match="pytorch_model.bin.*model.allow_pickle=true"):
        resolve_model(str(model))
    assert resolve_model(str(model), allow_pickle=True).path == model.resolve()
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(model / "decoy.safetensors"))  # not what transformers loads
    with pytest.raises(ModelError, match="pytorch_model.bin.*model.allow_pickle=true"):
        resolve_model(str(model))
    write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(20)])
    result = CliRunner().invoke(
        main, ["tune", "--set", f"model.base={model}", "--set", f"data.train={tmp_path / 'd.jsonl'}"]
    )
    assert result.exit_code == 2 and "can run code when loaded" in result.output
    # data check has no --allow-pickle: the key it names works there
    checked = CliRunner().invoke(
        main, ["data", "check", str(tmp_path / "d.jsonl"), "--set", f"model.base={model}"]
    )
    assert checked.exit_code == 2 and "data check: --set model.allow_pickle=true" in checked.output, (
        checked.output
    )
    chatted = CliRunner().invoke(
        main, ["chat", str(model), "--prompt", "hi"]
    )  # chat has --allow-pickle, no --set
    assert chatted.exit_code == 2 and "tune and chat: --allow-pickle" in chatted.output, chatted.output
    checked = CliRunner().invoke(
        main,
        [
            "data",
            "check",
            str(tmp_path / "d.jsonl"),
            "--set",
            f"model.base={model}",
            "--set",
            "model.allow_pickle=true",
        ],
    )
    assert checked.exit_code == 0, checked.output
    exported = CliRunner().invoke(main, ["export", str(model)])
    assert exported.exit_code == 2 and "the exporters read only safetensors" in exported.output
    assert "--allow-pickle" not in exported.output  # export has no such option to follow
    chatted = CliRunner().invoke(main, ["chat", str(model), "--prompt", "hi", "--max-new-tokens", "2"])
    assert chatted.exit_code == 2 and "can run code when loaded" in chatted.output


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: _edit_json(d / "config.json", hidden_size=96),
            "cannot load the model (RuntimeError: Error(s)",
        ),
        (lambda d: (d / "config.json").write_text("{}"), "cannot load the model"),
        (lambda d: (d / "tokenizer.json").write_text("{}"), "cannot load the tokenizer"),
        (lambda d: (d / "model.safetensors").unlink(), "cannot load the model"),
        # more layers than the weights hold: transformers started the rest random and chat answered
        (
            lambda d: _edit_json(d / "config.json", num_hidden_layers=4),
            "its weights lack 18 tensor(s) its config.json calls for",
        ),
    ],
)
def test_a_model_directory_that_does_not_load_is_one_line_in_chat(tmp_path, tiny_model_dir, damage, message):
    """Files that pass the structural checks but do not fit together (a config whose sizes are not
    the weights', no weights at all): one line naming the directory, exit 2."""
    from click.testing import CliRunner

    from edgetune.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model)
    result = CliRunner().invoke(main, ["chat", str(model), "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 2, result.output
    assert f"{model}: {message}" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_model_cache_that_is_a_file_or_holds_a_stranger_is_named(tmp_path, monkeypatch):
    from edgetune.models import BUILTINS, builtin_model_dir, cache_dir

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(ModelError, match="afile: not a directory, so EDGETUNE_CACHE"):
        cache_dir()
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    model = next(iter(BUILTINS.values()))
    from edgetune.models import builtin_gguf_path

    stranger = tmp_path / "cache" / "models" / f"{model.alias}-{builtin_gguf_path(model).stat().st_size:x}"
    stranger.parent.mkdir(parents=True)
    stranger.write_text("not a model")
    with pytest.raises(ModelError, match="not a finished conversion"):
        builtin_model_dir(model, quiet=True)


def test_the_built_in_models_cached_conversion_gets_the_umask_modes(tmp_path, monkeypatch):
    """mkdtemp made the cached folder 0700 and safetensors the weights 0600, and the rename into
    the cache kept that: a cache shared by other users (EDGETUNE_CACHE) was unreadable to them."""
    import numpy as np
    from conftest import mode, umask
    from safetensors.numpy import save_file

    from edgetune import models

    def tiny_conversion(gguf_path, out):  # what the real one writes, without its minute of work
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(out / "model.safetensors"))

    monkeypatch.setattr(models, "_convert_gguf_to_hf", tiny_conversion)
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    with umask(0o022):
        target = models.builtin_model_dir(next(iter(models.BUILTINS.values())), quiet=True)
    assert mode(target) == 0o755
    assert mode(target / "model.safetensors") == 0o644
    assert mode(target / "edgetune-source.sha256") == 0o644


def test_a_model_cache_it_cannot_write_names_where_the_cache_can_go(tmp_path, monkeypatch):
    """A read-only HOME: every command said "~/.cache: permission denied", naming no way round it."""
    import tempfile

    from edgetune import models
    from edgetune.errors import ModelError

    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    for error, why in ((PermissionError(13, "Permission denied"), "permission denied"),
                       (OSError(30, "Read-only file system"), "on a read-only file system")):  # fmt: skip

        def refused(prefix, dir, error=error):
            error.filename = str(dir)
            raise error

        monkeypatch.setattr(tempfile, "mkdtemp", refused)
        with pytest.raises(ModelError, match="point EDGETUNE_CACHE .* at a writable directory") as said:
            models.builtin_model_dir(next(iter(models.BUILTINS.values())), quiet=True)
        assert str(said.value).startswith(f"{tmp_path / 'cache' / 'models'}: {why}")


def test_remote_code_in_a_model_dir_never_runs(tmp_path, tiny_model_dir):
    from edgetune.config import TrainConfig
    from edgetune.tune.model import choose_setup, load_for_training

    model = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "pwned"
    (model / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {
        "AutoModelForCausalLM": "modeling_evil.Evil",
        "AutoConfig": "modeling_evil.EvilConfig",
    }
    (model / "config.json").write_text(json.dumps(config))
    train = TrainConfig()
    try:
        load_for_training(resolve_model(str(model)), choose_setup("lora", "fp32"), train.lora)
    except ModelError:
        pass  # refusing is fine too; running the file is not
    assert not marker.exists()


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def artifacts(tiny_model_dir, tmp_path_factory):
    """A tiny model directory, its F16 GGUF and its fp32 ONNX directory, pristine."""
    from edgetune.export.gguf_convert import convert
    from edgetune.export.onnx_export import export_onnx
    from edgetune.export.settings import OnnxExportConfig

    out = tmp_path_factory.mktemp("pristine")
    gguf = convert(tiny_model_dir, out / "tiny.gguf", "f16")
    export_onnx(tiny_model_dir, out / "onnx", ["fp32"], OnnxExportConfig())
    return {"hf": tiny_model_dir, "gguf": gguf, "onnx": out / "onnx" / "fp32"}


CORRUPTIONS = [
    ("hf", "model.safetensors", lambda p: _truncate(p, -100), "model.safetensors: tensor"),
    ("hf", "model.safetensors", lambda p: _truncate(p, 5), "model.safetensors: truncated safetensors"),
    ("hf", "model.safetensors", lambda p: _flip(p, 7), "model.safetensors: corrupt safetensors header"),
    ("hf", "model.safetensors", lambda p: _flip(p, 12), "model.safetensors: corrupt safetensors header"),
    ("hf", "config.json", lambda p: p.write_text('{"model_type": "llama",'), "config.json:1:"),
    ("hf", "config.json", lambda p: p.write_text("[1, 2]"), "config.json: expected a JSON object"),
    ("hf", "tokenizer.json", lambda p: _truncate(p, 300), "tokenizer.json:"),
    (
        "hf",
        "tokenizer_config.json",
        lambda p: p.write_bytes(b"\xff\xfe{"),
        "tokenizer_config.json: not UTF-8",
    ),
    ("gguf", "", lambda p: _truncate(p, -1000), "tiny.gguf: tensor"),
    ("gguf", "", lambda p: _truncate(p, 50), "tiny.gguf: truncated or corrupt GGUF"),
    ("gguf", "", lambda p: _flip(p, 0), "tiny.gguf: not a GGUF file"),
    ("gguf", "", lambda p: _flip(p, 20), "tiny.gguf:"),
    ("onnx", "model.onnx", lambda p: _truncate(p, -5000), "model.onnx"),
    ("onnx", "model.onnx", lambda p: _truncate(p, 100), "model.onnx"),
    ("onnx", "config.json", lambda p: p.write_text("{"), "config.json:1:2: invalid JSON"),
    (
        "hf",
        "config.json",
        lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
        "config.json: JSON nested too deeply",
    ),
]


@pytest.mark.parametrize("kind, name, corrupt, expected", CORRUPTIONS)
def test_corrupt_files_give_one_line_naming_the_file_and_exit_2(
    tmp_path, artifacts, kind, name, corrupt, expected
):
    from click.testing import CliRunner

    from edgetune.cli import main

    source = artifacts[kind]
    target = tmp_path / source.name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    corrupt(target / name if name else target)
    result = CliRunner().invoke(main, ["chat", str(target), "--prompt", "hi", "--max-new-tokens", "2"])
    lines = [line for line in result.output.strip().splitlines() if line.startswith("edgetune: error")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("fmt, quant, named", [("gguf", "f32", "model-f32.gguf"), ("onnx", "fp32", "onnx")])
def test_disk_full_while_exporting_names_the_path_and_keeps_earlier_files(
    tmp_path, tiny_model_dir, fmt, quant, named
):
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as a full disk would: the disk
    is blamed (exit 1), not the model (exit 2)."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "out"
    (out / "gguf").mkdir(parents=True)
    earlier = out / "gguf" / "model-q8_0.gguf"
    earlier.write_bytes(b"an earlier export")
    limit = 64 * 1024  # far below the tiny model's F32 GGUF

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [
        sys.executable,
        "-m",
        "edgetune",
        "export",
        str(tiny_model_dir),
        "--to",
        fmt,
        "--quant",
        quant,
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap, timeout=300, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines[-1].startswith("edgetune: error: ") and f"{named}: disk full" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert earlier.read_bytes() == b"an earlier export"
    assert not list((out / "gguf").glob("*f32*")) and not list((out / "gguf").glob(".*tmp"))
    assert not (out / "onnx" / "fp32").exists()


def test_low_space_warning():
    from edgetune.rundir import low_space_warning

    assert low_space_warning(Path("."), 1, "x") is None
    warning = low_space_warning(Path("does/not/exist/yet"), 10**18, "this export")
    assert "GB free, this export needs about 1000000000.0 GB" in warning
    from edgetune.rundir import _size

    assert (_size(2_500_000), _size(3_200_000_000)) == ("2.5 MB", "3.2 GB")  # not "0.0 GB" for small runs


def test_a_second_process_in_a_busy_run_directory_is_refused_and_writes_nothing(tmp_path, tiny_model_dir):
    """Two `make demo`s, or `edgetune bench` while `edgetune export` writes: the second is refused
    with the first one named, before it writes anything; a holder killed with -9 frees the lock."""
    import os
    import signal
    import subprocess
    import sys

    from click.testing import CliRunner
    from test_tune import make_recipe

    from edgetune.cli import main
    from edgetune.rundir import run_lock

    recipe = make_recipe(tmp_path, tiny_model_dir)
    busy, fresh = tmp_path / "runs" / "busy", tmp_path / "runs" / "fresh"
    other = tmp_path / "runs" / "other"
    busy.mkdir(parents=True)
    fresh.mkdir()
    other.mkdir()
    (busy / "recipe.yaml").write_text(recipe.read_text().replace("data.jsonl", str(tmp_path / "data.jsonl")))
    (other / "recipe.yaml").write_text((busy / "recipe.yaml").read_text())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom edgetune.rundir import run_lock\n"
            "with run_lock(sys.argv[1], 'export'), run_lock(sys.argv[2], 'export'):\n"
            "    print('locked', flush=True)\n    time.sleep(600)\n",
            str(busy),
            str(fresh),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in busy.iterdir())
        for args in (
            ["merge", str(busy)],
            ["export", str(busy)],
            ["export", str(busy / "merged")],  # the run's merged model is the run
            ["bench", str(busy)],
            ["tune", "--resume", "--run-dir", str(busy)],
            ["run", str(recipe), "--run-dir", str(busy)],
            ["tune", str(recipe), "--run-dir", str(fresh)],
            ["export", str(other), "--out", str(busy / "export")],  # another run's files into busy's
        ):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 2, (args, result.output)
            assert (
                f"busy: `edgetune export` (pid {holder.pid}) is working in this run directory"
                in result.output
            )
            assert len(result.output.strip().splitlines()) == 1, result.output
        assert sorted(p.name for p in busy.iterdir()) == before and not list(fresh.iterdir())
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    with run_lock(busy, "bench"), run_lock(busy, "merge"):  # free again, and re-entrant in one process
        pass


def test_another_thread_in_a_busy_run_directory_is_refused_as_another_process_is(tmp_path):
    """The lock's re-entry was per process: a second thread (a service's job pool running merge
    while export works in the same run) went in, and the first one's exit dropped the flock while
    the second still worked. The thread that holds it re-enters it; another is refused."""
    import fcntl
    import os
    import threading

    from edgetune.errors import InputError
    from edgetune.rundir import run_lock

    run = tmp_path / "run"
    run.mkdir()
    entered, leave = threading.Event(), threading.Event()

    def export_job():
        with run_lock(run, "export"), run_lock(run, "export"):  # its own thread re-enters it
            entered.set()
            leave.wait(30)

    job = threading.Thread(target=export_job)
    job.start()
    try:
        assert entered.wait(30)
        with pytest.raises(InputError, match=rf"busy: `edgetune export` \(pid {os.getpid()}\) is working"):
            with run_lock(str(run), "merge"):
                pass
        fd = os.open(tmp_path / ".run.lock", os.O_RDWR)
        try:  # the working thread's flock stays: another process is refused as well
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        leave.set()
        job.join(30)
    with run_lock(run, "merge"):  # free once the thread has left
        pass


def test_a_run_directory_whose_name_is_near_the_limit_is_locked_too(tmp_path):
    """`.NAME.lock` for a NAME of 250 characters or more was over the 255 bytes a name may have: the
    lock file could not be made, the lock was skipped, and two exports in that run both went on."""
    import fcntl
    import os

    from edgetune.rundir import run_lock

    for run in (tmp_path / ("é" * 127), tmp_path / ("a" * 255), tmp_path / ("a" * 254 + "b")):
        run.mkdir()
        with run_lock(run, "export"):
            locks = [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name.endswith(".lock")]
            assert len(locks) == 1 and len(os.fsencode(locks[0].name)) <= 255
            fd = os.open(locks[0], os.O_RDWR)
            try:  # held: another process is refused
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            run.rmdir()  # its lock file goes when it is let go
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".lock")]


@pytest.mark.parametrize(
    "command",
    [
        ["tune", "RECIPE", "--run-dir", "LONG"],
        ["tune", "--resume", "--run-dir", "LONG"],
        ["run", "RECIPE", "--run-dir", "LONG"],
        ["merge", "LONG"],
        ["export", "LONG"],
        ["bench", "LONG"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_run_directory_path_the_system_cannot_take_is_one_line_naming_the_option(
    tmp_path, tiny_model_dir, command
):
    """A --run-dir (or RUN_DIR) over PATH_MAX, or with a name over 255 bytes, ended in "internal
    error: OSError: [Errno 36] File name too long" (exit 1) from whatever touched it first."""
    from click.testing import CliRunner
    from test_tune import make_recipe

    from edgetune.cli import main

    recipe = make_recipe(tmp_path, tiny_model_dir)
    given_as = "--run-dir" if "--run-dir" in command else ("SOURCE" if command[0] == "export" else "RUN_DIR")
    for long, problem in (
        (str(tmp_path) + ("/d" + "c" * 200) * 25, "bytes long (as an absolute path)"),
        (str(tmp_path / "runs" / ("d" * 256)), "is 256 bytes long; this file system allows 255"),
    ):
        args = [{"RECIPE": str(recipe), "LONG": long}.get(a, a) for a in command]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"edgetune: error: {given_as}: the ") and problem in result.output
        assert len(result.output.strip().splitlines()) == 1 and len(result.output) < 400


def test_a_lock_file_its_holder_removes_as_another_opens_it_is_not_held_twice(tmp_path, monkeypatch):
    """A run that fails before it holds anything leaves no lock file: its holder removes it while
    locked. A process that had opened it just then locks a file no longer at the path, where a
    third would lock a new one: both would be in the run. It locks the file at the path instead."""
    import fcntl
    import os

    from edgetune import runlock

    run = tmp_path / "run"
    path = tmp_path / ".run.lock"
    real_flock, removed = fcntl.flock, []

    def flock_after_its_holder_left(fd, op):
        if not removed:  # the holder removed the file between our open and our lock
            removed.append(fd)
            os.unlink(path)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_its_holder_left)
    with runlock.run_lock(run, "tune"):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        fd = os.open(path, os.O_RDWR)  # the file at the path now is the one held
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert removed
    assert not path.exists()  # the run was never made: its lock goes with it
    run.mkdir()
    with runlock.run_lock(run, "tune"):
        pass
    assert path.is_file()  # a run that is there keeps its lock file (a process may be opening it)


def test_a_tune_that_fails_before_training_leaves_no_run_and_keeps_latest(tmp_path, tiny_model_dir):
    """Missing data, a bad row, a model that is not there: the run directory tune made for it goes
    again, and runs/latest still names the last real run (what `edgetune export` would pick)."""
    from click.testing import CliRunner
    from test_tune import make_recipe

    from edgetune.cli import main
    from edgetune.rundir import point_latest

    recipe = make_recipe(tmp_path, tiny_model_dir)
    good = tmp_path / "runs" / "tiny-good"
    good.mkdir(parents=True)
    point_latest(good)
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"text": 1}\n')
    for override, named in (
        ("data.train=missing.jsonl", "missing.jsonl"),
        ("data.train=bad.jsonl", "bad.jsonl"),
        (f"model.base={tmp_path / 'no-model'}", "no-model"),
    ):
        for extra in ([], ["--run-dir", str(tmp_path / "runs" / "named")]):
            result = CliRunner().invoke(main, ["tune", str(recipe), "--set", override, *extra])
            assert result.exit_code == 2 and named in result.output, (override, result.output)
            # no lock file either: `.tiny-20261207-162927.lock` piled up, one per failed tune
            assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["latest", "tiny-good"]
            assert (tmp_path / "runs" / "latest").resolve() == good.resolve()
    kept = tmp_path / "runs" / "kept"  # an earlier attempt's directory stays, whatever it holds
    (kept / "notes").mkdir(parents=True)
    (kept / "recipe.yaml").write_text(recipe.read_text())
    (kept / "checkpoints").mkdir()  # a start that failed before its first save holds no run
    result = CliRunner().invoke(
        main, ["tune", str(recipe), "--set", "data.train=bad.jsonl", "--run-dir", str(kept)]
    )
    assert result.exit_code == 2 and "bad.jsonl" in result.output and (kept / "notes").is_dir()
    (tmp_path / "runs" / "file").write_text("x")
    result = CliRunner().invoke(main, ["tune", str(recipe), "--run-dir", str(tmp_path / "runs" / "file")])
    assert result.exit_code == 2 and "not a directory" in result.output, result.output


def test_a_model_directory_without_tokenizer_files_is_one_line_naming_it(tmp_path, tiny_model_dir):
    """transformers guessed a tokenizer class and failed inside it (a sentencepiece ValueError)."""
    from click.testing import CliRunner

    from edgetune.cli import main

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, bare / name)
    for kept in ([], ["tokenizer_config.json", "chat_template.jinja"]):  # a config names no vocabulary
        for name in kept:
            if (tiny_model_dir / name).is_file():
                shutil.copy(tiny_model_dir / name, bare / name)
        result = CliRunner().invoke(main, ["chat", str(bare), "--prompt", "hi"])
        assert result.exit_code == 2 and f"{bare}: no tokenizer files" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_an_atomic_rewrite_keeps_the_mode_the_file_had(tmp_path):
    """A rewrite (temporary file, rename) gave every file the umask's mode: a manifest or bench
    report the user had made private (chmod 600) was readable to all again after the next stage."""
    from conftest import mode, umask

    from edgetune.rundir import atomic_write_files, atomic_write_json, update_manifest

    (tmp_path / "bench").mkdir()
    private, shared = tmp_path / "manifest.json", tmp_path / "bench" / "report.json"
    atomic_write_json(private, {})
    atomic_write_json(shared, {})
    private.chmod(0o600)
    shared.chmod(0o640)
    with umask(0o022):
        update_manifest(tmp_path, stages={"bench": {"status": "done"}})
        atomic_write_files({shared: b"{}", tmp_path / "bench" / "report.md": b"new"})
    assert mode(private) == 0o600 and json.loads(private.read_text())["stages"]["bench"]["status"] == "done"
    assert mode(shared) == 0o640
    assert mode(tmp_path / "bench" / "report.md") == 0o644  # a new file: the umask's mode


def test_files_and_folders_written_atomically_get_the_umask_mode_not_a_private_one(tmp_path):
    """mkstemp and mkdtemp make 0600 files and 0700 folders, and the rename kept that: a shipped
    ONNX directory, merged model or Modelfile was unreadable to a model server running as another
    user, where the GGUF beside it was 0644."""
    import os
    import stat

    from edgetune.rundir import _umask, atomic_dir, atomic_write_text

    old = os.umask(0o022)
    _umask.cache_clear()  # read once per process
    try:
        atomic_write_text(tmp_path / "manifest.json", "{}")
        with atomic_dir(tmp_path / "merged") as staging:
            import numpy as np
            from safetensors.numpy import save_file

            save_file({"w": np.zeros(2, dtype=np.float32)}, str(staging / "model.safetensors"))
            (staging / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
        _umask.cache_clear()
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "merged" / "sub").stat().st_mode) == 0o755
    # safetensors writes its files 0600 itself
    assert stat.S_IMODE((tmp_path / "merged" / "model.safetensors").stat().st_mode) == 0o644


def test_an_export_into_a_users_folder_removes_only_its_own_leftovers(tmp_path, tiny_model_dir):
    """`export MODEL --out DIR` removed every .*.tmp anywhere under DIR (a project's, a user's)."""
    from click.testing import CliRunner

    from edgetune.cli import main

    out = tmp_path / "out"
    (out / "project" / ".cache.tmp").mkdir(parents=True)
    (out / "project" / "sub").mkdir()
    (out / "project" / "sub" / ".notes.tmp").write_text("mine")
    (out / "gguf").mkdir()
    (out / "gguf" / ".model-f16.gguf.4242.tmp").write_bytes(b"GGUF")  # a killed export's
    args = ["export", str(tiny_model_dir), "--out", str(out), "--to", "gguf", "--quant", "f16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "project" / ".cache.tmp").is_dir() and (out / "project" / "sub" / ".notes.tmp").is_file()
    assert not (out / "gguf" / ".model-f16.gguf.4242.tmp").exists()


def test_a_folder_replaced_between_its_two_renames_comes_back_not_away(tmp_path, monkeypatch):
    """atomic_dir moves the old folder aside, then puts the new one in: killed (or Ctrl-C) between,
    merged/ or onnx/<quant>/ was gone, and the next merge or export deleted the one set aside too."""
    import os

    from edgetune.export.layout import remove_leftovers
    from edgetune.rundir import atomic_dir, remove_stale_staging

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_text("old")
    real_replace = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(KeyboardInterrupt), atomic_dir(merged) as staging:
        (staging / "model.safetensors").write_text("new")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (merged / "model.safetensors").read_text() == "old"  # Ctrl-C: put back at once
    # kill -9 between the renames: only the one set aside is there; the next writer puts it back
    aside = tmp_path / f".merged.old-{os.getpid()}"
    os.replace(merged, aside)
    remove_stale_staging(merged)
    assert (merged / "model.safetensors").read_text() == "old" and not aside.exists()
    int8 = tmp_path / "export" / "onnx" / "int8"
    int8.mkdir(parents=True)
    (int8 / "model.onnx").write_text("old")
    os.replace(int8, int8.with_name(".int8.old-123"))
    (int8.parent / ".fp32.old-7").mkdir()  # replaced and put in: only its removal was left
    (int8.parent / "fp32").mkdir()
    remove_leftovers(tmp_path / "export")
    assert sorted(p.name for p in int8.parent.iterdir()) == ["fp32", "int8"]
    assert (int8 / "model.onnx").read_text() == "old"
    # a removal killed midway (after a replace that succeeded) is never put back as the folder
    shutil.rmtree(int8)
    (int8.parent / ".int8.removing-5").mkdir()
    remove_leftovers(tmp_path / "export")
    assert sorted(p.name for p in int8.parent.iterdir()) == ["fp32"]
    with atomic_dir(merged) as staging:  # a replace that succeeds leaves nothing beside
        (staging / "model.safetensors").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "merged"]


def test_gguf_tokenizer_metadata_of_the_wrong_types_is_one_error_naming_the_file(tmp_path):
    """Token strings stored as integers passed the file's structural check, then failed inside the
    tokenizers library as an internal error."""
    import gguf
    import numpy as np

    from edgetune.tokenizer_gguf import tokenizer_from_gguf

    path = tmp_path / "ints.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_array("tokenizer.ggml.tokens", [1, 2, 3])
    writer.add_array("tokenizer.ggml.token_type", [1, 1, 1])
    writer.add_tensor("t", np.zeros((4,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match=r"ints.gguf: its tokenizer metadata cannot be read \(TypeError"):
        tokenizer_from_gguf(path)


def test_escape_sequences_in_what_edgetune_prints_back_are_shown_not_sent(tmp_path, capsys, tiny_model_dir):
    """A dataset's field name, a bad row in a report, a model's answer in a terminal: ESC ] 0 ;
    set the window title, ESC [ 2J cleared the screen."""
    from click.testing import CliRunner

    from edgetune import console
    from edgetune.cli import main

    hostile, tiny = "\x1b]0;PWNED\x07\x1b[2J\x9b31m", tiny_model_dir
    (tmp_path / "d.jsonl").write_text(json.dumps({hostile: "x"}) + "\n")
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "d.jsonl"), "--no-tokens"])
    assert result.exit_code == 2 and "\\x1b]0;PWNED\\x07\\x1b[2J\\x9b31m" in result.output, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    from conftest import chat_row, write_jsonl

    write_jsonl(tmp_path / "ok.jsonl", [chat_row(f"q{i} {hostile}", f"a{i} {hostile}") for i in range(20)])
    shown = CliRunner().invoke(
        main, ["data", "check", str(tmp_path / "ok.jsonl"), "--set", f"model.base={tiny}"]
    )
    assert shown.exit_code == 0 and "\\x1b]0;PWNED" in shown.output and "\x1b]" not in shown.output, (
        shown.output
    )
    console.err.print(f"first bad row: {hostile}")
    console.print_rows(console.out, "t", ["row", "why"], [["d.jsonl:1", hostile]])
    out, err = capsys.readouterr()
    assert "\x1b]" not in out + err and "\\x1b]0;PWNED" in err and "\\x1b]0;PWNED" in out


def test_torch_save_running_out_of_room_counts_as_a_full_disk(tmp_path):
    """A checkpoint's optimizer.pt (twice the adapter) is the likeliest file to meet a full disk:
    torch's zip writer said "unexpected pos 8128 vs 8016", an internal error naming no file."""
    import resource

    import torch

    from edgetune.errors import DiskFull, is_disk_full, writing

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(DiskFull, match=r"optimizer.pt: disk full"):
            with writing(tmp_path / "optimizer.pt"):
                torch.save({"state": torch.zeros(256 * 1024)}, tmp_path / "optimizer.pt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not is_disk_full(RuntimeError("size mismatch for lora_A.weight"))


def test_the_digests_a_long_running_process_keeps_are_bounded(tmp_path, monkeypatch):
    """sha256_file kept the digest of every file a process ever hashed: a service exporting runs
    all day grew without end. It keeps the latest, and a file still hashes the same."""
    from edgetune import rundir

    monkeypatch.setattr(rundir, "_file_digests", {})
    monkeypatch.setattr(rundir, "_KEPT_DIGESTS", 5)
    files = []
    for i in range(12):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(bytes([i]) * 10)
        rundir.sha256_file(files[-1])
    assert len(rundir._file_digests) == 5
    import hashlib

    assert rundir.sha256_file(files[0]) == hashlib.sha256(bytes([0]) * 10).hexdigest()
    assert rundir.sha256_file(files[-1]) == hashlib.sha256(bytes([11]) * 10).hexdigest()


def test_a_lock_taken_on_a_full_disk_is_let_go_and_taken_again(tmp_path, monkeypatch):
    """Writing the holder's name into the lock file on a full disk raised before the lock was
    registered: its descriptor stayed open, holding the flock, and every later stage in that run
    of the process was refused as "busy: another process" until the process ended."""
    import errno
    import os

    from edgetune import runlock

    run = tmp_path / "run"
    run.mkdir()

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    written = os.pwrite
    monkeypatch.setattr(os, "pwrite", full)
    with runlock.run_lock(run, "export"):
        pass
    monkeypatch.setattr(os, "pwrite", written)
    with runlock.run_lock(run, "bench"):
        assert (tmp_path / ".run.lock").read_text().startswith("`edgetune bench`")


def test_a_thread_count_past_the_cores_this_process_may_use_is_warned_about(monkeypatch):
    """train.threads and bench.threads are checked against the process's CPU affinity (a container's
    cpuset, taskset), not the machine's count, by one rule."""
    import os

    from edgetune.cores import more_than_the_cores

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert more_than_the_cores("train.threads", 2) is None
    assert more_than_the_cores("bench.threads", None) is None
    assert more_than_the_cores("train.threads", 8) == (
        "train.threads 8 is more than the 2 cores this process may use: threads contend"
    )


def test_omp_num_threads_sets_every_runtimes_threads(monkeypatch):
    """OMP_NUM_THREADS=1: training (torch) took 1 thread and the same run's llama.cpp, onnxruntime
    and bench took every core, the report saying 2 threads."""
    from edgetune.cores import default_threads, usable_cores
    from edgetune.export.onnx_runtime import session_options

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1 and session_options().intra_op_num_threads == 1
    for unset in ("", "0", "four", "\u00b2"):  # "²" is a digit to str.isdigit, not to int
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert default_threads() == usable_cores(), unset
    monkeypatch.setenv("OMP_NUM_THREADS", "1,1")  # OpenMP's list form: the outer level's first
    assert default_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert session_options().intra_op_num_threads == usable_cores()


def test_reading_the_cpus_name_and_flags_leaves_no_file_open():
    """Under PYTHONWARNINGS=error (or -W default) a run printed "Exception ignored ... ResourceWarning:
    unclosed file '/proc/cpuinfo'" with its traceback."""
    import gc
    import warnings

    from edgetune.cores import cpu_name
    from edgetune.tune.model import cpu_has_fast_bf16

    gc.collect()  # what earlier tests left unreachable is theirs, not these readers'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        cpu_has_fast_bf16()
        cpu_name()
        gc.collect()
    assert not [
        w for w in caught if issubclass(w.category, ResourceWarning) and "/proc/" in str(w.message)
    ], [str(w.message) for w in caught]


def test_hub_downloads_fetch_only_safetensors_json_tokenizer_and_template_files(tmp_path, monkeypatch):
    """A hub repo may hold pickles (.bin, .pt) and Python beside its safetensors: the download's
    patterns must not admit them, so nothing that can run code lands in the cache."""
    import fnmatch

    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):  # no network here: what it was asked for is kept
        calls.append(kwargs)
        (tmp_path / "snapshot").mkdir(exist_ok=True)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model("some-org/some-model").kind == "hub"
    assert len(calls) == 1 and not calls[0].get("ignore_patterns")
    patterns = calls[0].get("allow_patterns")
    assert patterns, "no allow_patterns: the whole repository would be downloaded"
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)

    def admitted(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    code = [
        "pytorch_model.bin",
        "pytorch_model-00001-of-00002.bin",
        "training_args.bin",
        "model.pt",
        "optimizer.pt",
        "weights.pth",
        "weights.pkl",
        "model.ckpt",
        "modeling_evil.py",
        "configuration_evil.py",
        "sub/modeling_evil.py",
        "original/consolidated.00.pth",
    ]
    assert not [n for n in code if admitted(n)], patterns
    wanted = [
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ]
    assert all(admitted(n) for n in wanted), [n for n in wanted if not admitted(n)]


class _TouchOnLoad:
    """Unpickled, it creates `path`: what a malicious pytorch_model.bin would do instead."""

    def __init__(self, path):
        self.path = Path(path)

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_an_allowed_pickle_is_loaded_with_weights_only_and_cannot_run_code(tmp_path, tiny_model_dir):
    """--allow-pickle lets transformers read a .bin, with torch's weights-only unpickler: a pickle
    that calls a function when loaded is refused, and the function never runs."""
    import torch
    from click.testing import CliRunner

    from edgetune.cli import main
    from edgetune.models import load_causal_lm

    model = pickled_model_dir(tmp_path, tiny_model_dir)
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _TouchOnLoad(marker)}, model / "pytorch_model.bin")
    with pytest.raises(
        ModelError, match=r"cannot load the model \(OSError: Unable to load weights from pytorch"
    ):
        load_causal_lm(resolve_model(str(model), allow_pickle=True).path, dtype=torch.float32)
    assert not marker.exists(), "the pickle ran code when loaded"
    args = ["chat", str(model), "--allow-pickle", "--prompt", "hi", "--max-new-tokens", "2"]
    chatted = CliRunner().invoke(main, args)
    assert chatted.exit_code == 2 and "cannot load the model" in chatted.output, chatted.output
    assert not marker.exists(), "the pickle ran code when loaded"


def test_chat_takes_allow_pickle_and_answers_from_a_pickled_model(tmp_path, tiny_model_dir):
    """Without the flag chat refuses a model stored as pickles
    (test_pickle_weights_are_refused_unless_allowed); with it, the model answers."""
    from click.testing import CliRunner

    from edgetune.cli import main

    model = pickled_model_dir(tmp_path, tiny_model_dir)
    args = ["chat", str(model), "--allow-pickle", "--prompt", "hi", "--max-new-tokens", "2"]
    chatted = CliRunner().invoke(main, args)
    assert chatted.exit_code == 0, chatted.output


def test_the_onnx_exporter_never_imports_a_model_directorys_python(tmp_path, tiny_model_dir):
    """A model directory whose config.json names Python of its own in auto_map exports with
    transformers' own classes: the file (which would create a marker when imported) is never run."""
    from click.testing import CliRunner

    from edgetune.cli import main

    model = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "pwned"
    evil = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    (model / "configuration_evil.py").write_text(evil)
    (model / "modeling_evil.py").write_text(evil)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    args = ["export", str(model), "--out", str(out), "--to", "onnx", "--quant", "fp32"]
    result = CliRunner().invoke(main, args)
    assert not marker.exists(), "the exporter imported the model directory's Python"
    assert result.exit_code == 0, result.output  # it did export, with transformers' own classes
    assert (out / "onnx" / "fp32" / "model.onnx").is_file()


HOSTILE_TEXT = "ok \x1b]0;pwned\x07 done"  # ESC ] 0 ; ... BEL sets a terminal's window title


def _chat_answering(monkeypatch, text):
    """`edgetune chat` with a session whose answer is `text`, as a model's could be."""
    from edgetune import chat as chat_module

    class Session:
        plain, cut_at, dropped_turns = False, None, 0

        def reply(self, user, max_new_tokens=256, on_text=None):
            on_text(text)
            return text

    monkeypatch.setattr(chat_module, "open_chat", lambda *args, **kwargs: Session())


def test_a_models_answer_in_a_terminal_shows_escape_sequences_not_sends_them(tmp_path, monkeypatch):
    import os
    import sys

    from edgetune.cli import main

    _chat_answering(monkeypatch, HOSTILE_TEXT)
    leader, follower = os.openpty()
    terminal = open(follower, "w", encoding="utf-8")
    try:
        monkeypatch.setattr(sys, "stdout", terminal)
        with pytest.raises(SystemExit) as exited:
            main.main(["chat", str(tmp_path), "--prompt", "hi"])
        terminal.flush()
        shown = os.read(leader, 65536).decode("utf-8")
    finally:
        terminal.close()
        os.close(leader)
    assert exited.value.code in (0, None)
    assert "ok \\x1b]0;pwned\\x07 done" in shown and "\x1b" not in shown and "\x07" not in shown, shown


def test_a_models_answer_piped_elsewhere_is_written_as_it_is(tmp_path, monkeypatch):
    """CliRunner's output is not a terminal: the answer is data for the next program, unchanged."""
    from click.testing import CliRunner

    from edgetune.cli import main

    _chat_answering(monkeypatch, HOSTILE_TEXT)
    result = CliRunner().invoke(main, ["chat", str(tmp_path), "--prompt", "hi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == HOSTILE_TEXT + "\n"


def test_a_models_answer_piped_elsewhere_keeps_its_csi_sequences(tmp_path, monkeypatch):
    """click.echo strips CSI sequences (ESC [ ... letter) from output that is not a terminal: an
    answer piped elsewhere lost them, where SECURITY.md says it is written as it is."""
    from click.testing import CliRunner

    from edgetune.cli import main

    answer = "red \x1b[31mtext\x1b[0m"
    _chat_answering(monkeypatch, answer)
    result = CliRunner().invoke(main, ["chat", str(tmp_path), "--prompt", "hi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == answer + "\n"


def test_escape_sequences_in_a_gguf_files_metadata_are_shown_not_sent(tmp_path, tiny_model_dir):
    """A GGUF's chat template (tokenizer.chat_template) raising a message of its own: the message,
    shown as chat's one-line error, has its escape sequences shown as \\x1b."""
    from click.testing import CliRunner
    from conftest import model_with_template

    from edgetune.cli import main
    from edgetune.export.gguf_convert import convert

    model = model_with_template(
        tmp_path, tiny_model_dir, "{{ raise_exception('title \x1b]0;pwned\x07 set') }}"
    )
    gguf = convert(model, tmp_path / "hostile.gguf", "f32")
    result = CliRunner().invoke(main, ["chat", str(gguf), "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 2, result.output
    assert "title \\x1b]0;pwned\\x07 set" in result.output, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="drops root to make a folder unsearchable"
)
def test_a_run_folder_that_cannot_be_searched_at_release_lets_the_lock_go(request):
    """Checking at release whether the run folder exists raised EACCES (its parent made
    unsearchable meanwhile) before the lock's descriptor was closed: the failure replaced the
    stage's own, and the next stage in the process was "busy" with its own pid."""
    import subprocess
    import sys
    import tempfile
    import textwrap

    base = Path(tempfile.mkdtemp(prefix="edgetune-unsearchable-"))  # pytest's tmp_path is root's alone
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    (base / "runs").mkdir()
    os.chmod(base, 0o777)
    os.chmod(base / "runs", 0o777)
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        import fcntl  # before root goes: the interpreter's library may sit in /root
        from edgetune.runlock import run_lock
        os.setgid(65534); os.setuid(65534)
        sub = Path({str(base)!r}) / "runs" / "sub"
        sub.mkdir()
        run = sub / "demo"
        try:
            with run_lock(run, "tune"):
                os.chmod(sub, 0o666)  # no longer searchable
                raise RuntimeError("the stage failed")
        except BaseException as exc:
            print(type(exc).__name__)
        os.chmod(sub, 0o777)
        with run_lock(run, "bench"):
            print("taken again")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.stdout.split() == ["RuntimeError", "taken", "again"], (result.stdout, result.stderr)


def test_a_folder_or_gguf_written_again_keeps_the_modes_the_user_gave_it(tmp_path, tiny_model_dir):
    """Only single-file rewrites kept a user's chmod: a re-export gave a GGUF made private (0600),
    and every file of a replaced folder (an ONNX variant, merged/, dist/), the umask's mode again."""
    from conftest import mode, umask

    from edgetune.export.gguf_export import export_gguf
    from edgetune.rundir import _umask, atomic_dir

    _umask.cache_clear()
    target = tmp_path / "onnx-fp32"
    with umask(0o022):
        with atomic_dir(target) as staging:
            (staging / "sub").mkdir()
            for name in ("model.onnx", "sub/kept.json", "sub/other.json"):
                (staging / name).write_text("1")
        (target / "model.onnx").chmod(0o600)
        (target / "sub").chmod(0o700)
        target.chmod(0o750)
        (target / "sub" / "other.json").unlink()
        (target / "sub" / "other.json").mkdir()  # a folder where the new one has a file: not its mode
        with atomic_dir(target) as staging:
            (staging / "sub").mkdir()
            for name in ("model.onnx", "sub/kept.json", "sub/other.json", "new.json"):
                (staging / name).write_text("2")
        assert (mode(target), mode(target / "model.onnx"), mode(target / "sub")) == (0o750, 0o600, 0o700)
        assert mode(target / "sub" / "kept.json") == mode(target / "sub" / "other.json") == 0o644
        assert mode(target / "new.json") == 0o644 and (target / "model.onnx").read_text() == "2"

        files = [
            a.path
            for a in export_gguf(tiny_model_dir, tmp_path / "gguf", ["f16", "q8_0"], None, {}).artifacts
        ]
        assert [mode(f) for f in files] == [0o644, 0o644]
        for f in files:
            f.chmod(0o600)
        inodes = [f.stat().st_ino for f in files]
        again = [
            a.path
            for a in export_gguf(tiny_model_dir, tmp_path / "gguf", ["f16", "q8_0"], None, {}).artifacts
        ]
        assert again == files and [f.stat().st_ino for f in files] != inodes  # written again
        assert [mode(f) for f in files] == [0o600, 0o600]
    _umask.cache_clear()
