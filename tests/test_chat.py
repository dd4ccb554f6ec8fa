"""edgetune chat: the same answer from the merged model, its GGUF file and its ONNX directory."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune.cli import main


@pytest.fixture(scope="module")
def exported_run(tiny_model_dir, tmp_path_factory):
    import os

    from test_tune import make_recipe

    from edgetune.export.run import export
    from edgetune.tune.run import tune

    tmp = tmp_path_factory.mktemp("chat")
    os.chdir(tmp)
    run = tune(str(make_recipe(tmp, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2))).run_dir
    export(run, ["gguf", "onnx"], ["f32", "fp32"])
    return run


def test_one_shot_answers_agree_across_artifacts(exported_run):
    run = exported_run
    answers = {}
    for artifact in (run, run / "export" / "gguf" / "model-f32.gguf", run / "export" / "onnx" / "fp32"):
        result = CliRunner().invoke(
            main, ["chat", str(artifact), "--prompt", "log 3: link down", "--max-new-tokens", "12"]
        )
        assert result.exit_code == 0, result.output
        answers[artifact.name] = result.stdout
    assert len(set(answers.values())) == 1, repr(answers)
    assert len(answers[run.name]) > 1  # greedy tokens were printed, not only the final newline


def test_session_keeps_history_and_uses_the_template(exported_run):
    from edgetune.chat import open_chat

    session = open_chat(exported_run / "export" / "onnx" / "fp32", system="be brief")
    first = session.reply("hello", max_new_tokens=5)
    assert session.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first}]
    ids = session.prompt_ids(
        [{"role": "system", "content": "be brief"}, *session.history, {"role": "user", "content": "again"}]
    )
    text = session.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>") and text.endswith(
        "<|im_start|>assistant\n"
    )


def test_a_gguf_file_is_known_by_its_magic_whatever_its_name(exported_run, tmp_path):
    """Hugging Face repos ship GGUF files named .bin and Ollama stores them by hash: chat refused them."""
    import shutil

    source = exported_run / "export" / "gguf" / "model-f32.gguf"
    args = ["--prompt", "log 3: link down", "--max-new-tokens", "6"]
    want = CliRunner().invoke(main, ["chat", str(source), *args])
    renamed = shutil.copy(source, tmp_path / "ggml-model.bin")
    got = CliRunner().invoke(main, ["chat", str(renamed), *args])
    assert got.exit_code == 0 and want.exit_code == 0, got.output
    assert got.stdout == want.stdout and len(got.stdout) > 1


def test_bad_artifact_is_one_clear_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(main, ["chat", str(tmp_path / "notes.txt"), "--prompt", "hi"])
    assert result.exit_code == 2
    assert "not a run directory, a .gguf file, an ONNX directory or an HF model directory" in result.output


@pytest.mark.parametrize("artifact", ["gguf/model-f32.gguf", "onnx/fp32", "merged"])
def test_a_conversation_past_the_context_drops_its_oldest_turns_and_a_long_prompt_is_one_line(
    exported_run, artifact
):
    """The tiny model holds 512 positions: llama.cpp crashed past its n_ctx, torch and ONNX ran past
    what the model learned."""
    from edgetune.chat import open_chat
    from edgetune.errors import InputError

    path = exported_run / artifact if artifact == "merged" else exported_run / "export" / artifact
    session = open_chat(path)
    assert session.runner.context == 512
    words = "link down on eth0 at the north site " * 4  # about 100 tokens
    turns = [session.reply(f"{i}: {words}", max_new_tokens=4) for i in range(6)]
    assert session.dropped_turns >= 1 and len(session.history) < 2 * len(turns)
    assert session.history[-1] == {"role": "assistant", "content": turns[-1]}
    prompt, budget = session.fitted_prompt("next", 4)
    assert len(prompt) + budget <= 512
    _, capped = open_chat(path).fitted_prompt(words * 3, 256)  # no history left to drop
    assert 0 < capped < 256
    kept = list(session.history)
    with pytest.raises(
        InputError, match=r"the prompt is \d+ tokens, and the model's context is 512"
    ):  # no system prompt
        session.fitted_prompt(words * 6, 4)  # about 600
    assert session.history == kept  # a refused prompt costs the conversation nothing
    session.reply("short", max_new_tokens=8192)  # a quarter of the context is held back, not 8192
    assert len(session.history) > 2


def test_a_one_shot_prompt_past_the_context_exits_2(exported_run):
    gguf = exported_run / "export" / "gguf" / "model-f32.gguf"
    result = CliRunner().invoke(
        main, ["chat", str(gguf), "--prompt", "word " * 3000, "--max-new-tokens", "3"]
    )
    assert result.exit_code == 2 and "the model's context is 512" in result.output, result.output


def test_a_mistyped_command_is_not_sent_but_a_path_and_a_double_slash_are(exported_run, monkeypatch):
    import edgetune.chat

    sent, real_open = [], edgetune.chat.open_chat

    def recording_open(*args, **kwargs):
        session = real_open(*args, **kwargs)
        real_reply = session.reply
        session.reply = lambda text, *a, **k: sent.append(text) or real_reply(text, *a, **k)
        return session

    monkeypatch.setattr(edgetune.chat, "open_chat", recording_open)
    lines = "/hlep\n/help\n/var/log/syslog is full\n//reset\n/EXIT\n"
    result = CliRunner().invoke(
        main,
        ["chat", str(exported_run / "export" / "gguf" / "model-f32.gguf"), "--max-new-tokens", "2"],
        input=lines,
    )
    assert result.exit_code == 0, result.output
    assert sent == ["/var/log/syslog is full", "/reset"]
    assert "unknown command /hlep; /reset clears the conversation" in result.stderr
    assert result.stderr.count("/exit or Ctrl-D leaves") == 2  # /hlep and /help


def test_a_message_of_several_lines_and_ctrl_c_in_an_answer(exported_run, monkeypatch):
    """A pasted log of several lines went to the model as one message per line (433 of the demo's
    900 prompts are several lines); Ctrl-C in a long answer ended the whole session."""
    import edgetune.chat

    sent, real_open = [], edgetune.chat.open_chat
    interrupt = {"left": 1}

    def recording_open(*args, **kwargs):
        session = real_open(*args, **kwargs)
        real_reply = session.reply

        def reply(text, *a, **k):
            sent.append(text)
            if interrupt["left"]:
                interrupt["left"] -= 1
                raise KeyboardInterrupt
            return real_reply(text, *a, **k)

        session.reply = reply
        return session

    monkeypatch.setattr(edgetune.chat, "open_chat", recording_open)
    lines = (
        'stopped\n"""\nJun 27 05:02:54 cron[13418]: ok\n//kept as written\n  """  \nafter\n"""\nunclosed\n'
    )
    result = CliRunner().invoke(
        main,
        ["chat", str(exported_run / "export" / "gguf" / "model-f32.gguf"), "--max-new-tokens", "2"],
        input=lines,
    )
    assert result.exit_code == 0, result.output
    assert sent == ["stopped", "Jun 27 05:02:54 cron[13418]: ok\n//kept as written", "after"]
    assert "(answer stopped; it is not kept in the conversation)" in result.stderr
    # SIGTERM (edgetune's Terminated) ends the session: it stops no single answer
    from edgetune.errors import Terminated

    def terminated(*args, **kwargs):
        raise Terminated

    monkeypatch.setattr(
        edgetune.chat,
        "open_chat",
        lambda *a, **k: type("S", (), {"plain": False, "dropped_turns": 0, "reply": terminated})(),
    )
    result = CliRunner().invoke(
        main, ["chat", str(exported_run), "--max-new-tokens", "2"], input="hello\nagain\n"
    )
    assert result.exit_code == 130 and "edgetune: error: interrupted" in result.stderr


def test_a_recipe_above_a_plain_model_export_is_not_its_run(exported_run, tmp_path):
    """chat took any recipe.yaml in any parent folder as the artifact's run: a project's system
    prompt was applied to an unrelated export, and another tool's recipe.yaml failed chat."""
    import shutil

    from edgetune.chat import _run_of, open_chat

    project = tmp_path / "project"
    onnx = shutil.copytree(exported_run / "export" / "onnx" / "fp32", project / "exports" / "fp32")
    (project / "recipe.yaml").write_text("foo: bar\n")
    assert _run_of(onnx) is None
    model = shutil.copytree(exported_run / "merged", project / "model")
    (model / "recipe.yaml").write_text("foo: bar\n")  # a model folder that holds another tool's recipe
    assert open_chat(model).system is None
    result = CliRunner().invoke(main, ["chat", str(onnx), "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert open_chat(onnx).system is None
    for inside in ("export/onnx/fp32", "export/gguf/model-f32.gguf", "merged", "."):  # a run's own files
        assert _run_of((exported_run / inside).resolve()) == exported_run.resolve(), inside


def test_the_trained_system_prompt_is_kept_once_the_data_has_moved(tmp_path, tiny_model_dir):
    """chat found the system prompt every training chat shared by reading the data again: with the
    data moved (a project checked out elsewhere) it chatted without it, and said nothing."""
    from conftest import chat_row, write_jsonl
    from test_tune import make_recipe

    from edgetune.chat import open_chat
    from edgetune.merge import merge
    from edgetune.tune.run import tune

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2)
    rows = [chat_row(f"log {i}: link down", f'{{"port": {i}}}', system="Reply with JSON.") for i in range(40)]
    write_jsonl(tmp_path / "data.jsonl", rows)
    run = tune(str(recipe)).run_dir
    merge(run)
    (tmp_path / "data.jsonl").rename(tmp_path / "moved.jsonl")
    assert open_chat(run, threads=1).system == "Reply with JSON."
    # the merged model copied out of its run carries it, as every exported file does (it answered
    # with its template's default system prompt, unlike the shipped GGUF and ONNX)
    import shutil

    from edgetune.export.run import export

    away = shutil.copytree(run / "merged", tmp_path / "dist" / "merged")
    assert open_chat(away, threads=1).system == "Reply with JSON."
    exported = export(away, ["gguf"], ["f32"], out=tmp_path / "dist" / "files")
    assert open_chat(exported["gguf"].artifacts[0].path, threads=1).system == "Reply with JSON."


def test_bytes_that_are_not_utf8_are_one_line_and_the_session_goes_on(exported_run):
    """A Latin-1 byte in --prompt or on stdin had ended chat with an internal error (exit 1)."""
    import subprocess
    import sys

    gguf = str(exported_run / "export" / "gguf" / "model-f32.gguf")
    one = CliRunner().invoke(main, ["chat", gguf, "--prompt", "caf\udce9 ?", "--max-new-tokens", "2"])
    assert one.exit_code == 2 and "--prompt: not UTF-8 text (byte e9 at character 3)" in one.output, (
        one.output
    )
    # stdin from a file, as a shell gives it (the test runner's own stdin echoes what it reads)
    piped = subprocess.run(
        [sys.executable, "-m", "edgetune", "chat", gguf, "--max-new-tokens", "2"],
        input=b"caf\xe9 ?\n/reset\n",
        capture_output=True,
        timeout=300,
    )
    stderr = piped.stderr.decode()
    assert piped.returncode == 0, stderr
    assert "not UTF-8 text (byte e9 at character 3); the message was not sent" in stderr
    assert "conversation cleared" in stderr  # the next line was read
    assert piped.stdout == b"" and stderr.count("you> ") == 3  # prompts on stderr, no answer given


def test_a_file_shipped_out_of_its_run_keeps_the_trained_system_prompt(tmp_path, tiny_model_dir):
    """A GGUF or ONNX folder copied out of its run (the examples' Makefile ships dist/model.gguf)
    answered under the template's default system prompt, not the trained one; and on a run, chat
    used data.system_prompt although every training chat had its own (the Modelfile had that one)."""
    import shutil

    from conftest import chat_row, write_jsonl
    from test_tune import make_recipe

    from edgetune.chat import open_chat
    from edgetune.export.run import export
    from edgetune.tune.run import tune

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2)
    recipe.write_text(recipe.read_text().replace("data:\n", "data:\n  system_prompt: Answer in one word.\n"))
    rows = [chat_row(f"log {i}: link down", f'{{"port": {i}}}', system="Reply with JSON.") for i in range(40)]
    write_jsonl(tmp_path / "data.jsonl", rows)
    run = tune(str(recipe)).run_dir
    export(run, ["gguf", "onnx"], ["f32", "fp32"])
    assert open_chat(run, threads=1).system == "Reply with JSON."
    dist = tmp_path / "dist"
    gguf = shutil.copy(run / "export" / "gguf" / "model-f32.gguf", dist.mkdir() or dist)
    onnx = shutil.copytree(run / "export" / "onnx" / "fp32", dist / "fp32")
    assert open_chat(Path(gguf), threads=1).system == "Reply with JSON."
    assert open_chat(onnx, threads=1).system == "Reply with JSON."
    assert 'SYSTEM """Reply with JSON."""' in (run / "export" / "gguf" / "model-f32.Modelfile").read_text()


def test_export_holds_each_file_to_the_recipes_parity_kl(exported_run, tmp_path):
    """export.parity_kl reaches the verdicts of both formats' parity checks (an F32 file held to a
    goal below its float rounding fails; the ONNX fp32 folder likewise)."""
    import shutil

    import yaml

    run = shutil.copytree(exported_run, tmp_path / "run", symlinks=True)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["export"]["parity_kl"] = {"f32": 1e-30, "FP32": 1e-30}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["export", str(run), "--check"])
    assert result.exit_code == 3, result.output
    assert "model-f32.gguf" in result.output and "onnx/fp32" in result.output
    assert result.output.count("FAIL KL") == 2 and "> 1e-30" in result.output, result.output


def test_a_model_computing_nan_is_said_not_answered_with_an_empty_line(exported_run):
    """A GGUF with damaged weights computed NaN logits: their argmax is token 0 (SmolLM2's EOS),
    and chat printed an empty answer without a word."""
    import numpy as np

    from edgetune.chat import open_chat
    from edgetune.errors import ModelError

    session = open_chat(exported_run / "export" / "onnx" / "fp32")
    real = session.runner.prefill
    session.runner.prefill = lambda ids: real(ids) * np.nan
    with pytest.raises(ModelError, match="the model computes NaN or infinite logits"):
        session.reply("hello", max_new_tokens=5)
    assert session.history == []


def test_export_check_says_a_file_changed_since_its_last_check(exported_run, tmp_path):
    """A byte flipped in a GGUF that still met its goal: --check said "ok" and recorded the new
    bytes as the checked ones, without a word that the file was not the one export wrote."""
    import shutil

    run = shutil.copytree(exported_run, tmp_path / "run")
    gguf = run / "export" / "gguf" / "model-f32.gguf"
    data = bytearray(gguf.read_bytes())
    data[-1001] ^= 0x01  # the low mantissa byte of a weight near the end: a change far inside the goal
    gguf.write_bytes(bytes(data))
    checked = CliRunner().invoke(main, ["export", str(run), "--check", "--to", "gguf"])
    assert checked.exit_code == 0, checked.output
    assert "gguf/model-f32.gguf: changed since its last parity check" in " ".join(checked.output.split())
    again = CliRunner().invoke(main, ["export", str(run), "--check", "--to", "gguf"])
    assert again.exit_code == 0 and "changed since" not in again.output  # the new bytes are the checked ones


def test_an_answer_cut_before_eos_is_said_to_be(exported_run):
    """An answer cut at --max-new-tokens (or the context's end) read as a finished one."""
    result = CliRunner().invoke(
        main,
        ["chat", str(exported_run / "export" / "onnx" / "fp32"), "--prompt", "hi", "--max-new-tokens", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "(the answer was cut at 2 tokens, --max-new-tokens, before it ended)" in result.stderr


def test_an_empty_one_shot_prompt_is_refused_as_a_blank_line_is_not_sent(exported_run):
    for empty in ("", "   "):
        result = CliRunner().invoke(
            main, ["chat", str(exported_run / "export" / "onnx" / "fp32"), "--prompt", empty]
        )
        assert result.exit_code == 2 and "--prompt is empty" in result.output, result.output
