"""edgetune tune on the tiny random model: run directory contract, best adapter, resume, packing."""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import caller_state, chat_row, write_jsonl

from edgetune.cli import main
from edgetune.rundir import sha256_file
from edgetune.tune.callbacks import COMPLETE
from edgetune.tune.run import tune


def make_recipe(tmp_path: Path, model_dir: Path, **train) -> Path:
    rows = [
        chat_row(
            f"log {i}: link down on eth{i % 4} at site {i % 7}", json.dumps({"port": i % 4, "site": i % 7})
        )
        for i in range(120)
    ]
    write_jsonl(tmp_path / "data.jsonl", rows)
    settings = {
        "lr": 1e-3,
        "max_steps": 12,
        "batch_size": 4,
        "eval_steps": 4,
        "save_steps": 4,
        "threads": 1,
        "precision": "fp32",
        "warmup_ratio": 0.0,
        **train,
    }
    text = (
        f"name: tiny\nmodel:\n  base: {model_dir}\ndata:\n  train: data.jsonl\n  max_seq_len: 128\n"
        "train:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in settings.items())
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def train_losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def test_tune_writes_the_run_directory_contract(tmp_path, tiny_model_dir):
    recipe = make_recipe(tmp_path, tiny_model_dir)
    result = tune(str(recipe))
    run = result.run_dir
    assert (tmp_path / "runs" / "latest").resolve() == run
    for name in (
        "recipe.yaml",
        "manifest.json",
        "metrics.jsonl",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/tokenizer.json",
    ):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest) >= {"versions", "device", "recipe", "base_model", "data", "stages"}
    assert manifest["data"]["sha256"]["train"] == sha256_file(tmp_path / "data.jsonl")
    assert len(manifest["base_model"]["sha256"]) == 64 and len(manifest["recipe"]["sha256"]) == 64
    stage = manifest["stages"]["tune"]
    assert stage["status"] == "done" and stage["method"] == "lora" and stage["steps"] == 12
    assert stage["best_eval_loss"] < stage["initial_eval_loss"]
    assert len(train_losses(run)) == 12
    # the adapter kept is the best checkpoint by validation loss
    best = run / "checkpoints" / f"checkpoint-{result.best_step}" / "adapter_model.safetensors"
    assert sha256_file(best) == sha256_file(run / "adapter" / "adapter_model.safetensors")
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
    assert min(e["eval_loss"] for e in evals[1:]) == pytest.approx(result.best_eval_loss)
    # peft writes its set of targets in the process's hash order: the same tune, other bytes
    targets = json.loads((run / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert len(targets) >= 7 and targets == sorted(targets)


def test_same_seed_same_losses_and_adapter_other_seed_differs(tmp_path, tiny_model_dir):
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=6, eval_steps=3, save_steps=3)
    runs = [tune(str(recipe), overrides=[f"train.seed={s}"]).run_dir for s in (1, 1, 2)]
    hashes = [sha256_file(r / "adapter" / "adapter_model.safetensors") for r in runs]
    assert train_losses(runs[0]) == train_losses(runs[1]) and hashes[0] == hashes[1]
    assert train_losses(runs[0]) != train_losses(runs[2]) and hashes[0] != hashes[2]


def test_resume_after_kill_9_continues_the_same_loss_curve(tmp_path, tiny_model_dir):
    recipe = make_recipe(
        tmp_path, tiny_model_dir, max_steps=60, eval_steps=5, save_steps=5, lora={"dropout": 0.1}
    )
    reference = tune(str(recipe), run_dir=tmp_path / "reference").run_dir
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetune", "tune", str(recipe), "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    marker = run_dir / "checkpoints" / "checkpoint-15" / "edgetune-complete.json"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never reached checkpoint 15"
    assert not (run_dir / "adapter").exists(), "the run finished before it was killed; make it longer"

    result = CliRunner().invoke(main, ["tune", "--resume", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "resumed from step" in result.output
    got, want = train_losses(run_dir), train_losses(reference)
    assert sorted(got) == list(range(1, 61))
    for step in range(1, 61):
        assert got[step] == pytest.approx(want[step], abs=1e-5), step
    assert sha256_file(run_dir / "adapter" / "adapter_model.safetensors") == sha256_file(
        reference / "adapter" / "adapter_model.safetensors"
    )


def _signals_as_a_terminal_gives_them() -> None:
    """A child's SIGHUP as a shell in a terminal leaves it, where the tests may run under nohup."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_stops_a_tune_as_ctrl_c_does(tmp_path, tiny_model_dir, signum):
    """`kill`, a CI job's timeout or systemd send SIGTERM, a closed terminal or dropped ssh session
    SIGHUP: edgetune died at once with no word (status 143 or 129 from the signal, a quantiser
    child left writing, a 540 MB temporary file behind); it now stops as Ctrl-C does, saying how
    to go on, with the shell's status for the signal."""
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=400, eval_steps=5, save_steps=5)
    run_dir = tmp_path / "terminated"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetune", "tune", str(recipe), "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_signals_as_a_terminal_gives_them,  # not nohup's ignored SIGHUP (CI runs that way)
    )
    marker = run_dir / "checkpoints" / "checkpoint-5" / "edgetune-complete.json"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never reached checkpoint 5"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert "error: interrupted; continue with: edgetune tune --resume" in stderr, stderr
    assert "Traceback" not in stderr and not (run_dir / "adapter").exists()


def test_a_sighup_ignored_on_purpose_stays_ignored():
    """`nohup edgetune run ...` ignores SIGHUP so that the run outlives its terminal."""
    from edgetune.cli import _signals_interrupt

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        _, before = _signals_interrupt()
        assert signal.SIGHUP not in before and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.SIGTERM in before
        for signum, handler in before.items():
            signal.signal(signum, handler)
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_after_one_signal_a_second_of_either_kind_kills_at_once(monkeypatch):
    """SIGHUP, then SIGTERM during the cleanup: the second raised Terminated again inside the
    cleanup, where the docstring says a second signal kills at once."""
    from edgetune.cli import _signals_interrupt
    from edgetune.errors import Terminated

    monkeypatch.setattr("edgetune.cli._off_the_terminal", lambda fds: None)  # pytest's own terminal
    ignored = signal.signal(
        signal.SIGHUP, signal.SIG_DFL
    )  # as a terminal gives it (the tests may run under nohup)
    _, before = _signals_interrupt()
    try:
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        signal.signal(signal.SIGHUP, ignored)


def test_incomplete_checkpoints_are_ignored_and_removed(tmp_path, tiny_model_dir):
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=8)
    run = tune(str(recipe)).run_dir
    ckpts = run / "checkpoints"
    # a finished run has nothing to resume: training on would pass max_steps and rotate checkpoints
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    finished = CliRunner().invoke(main, ["tune", "--resume", "--run-dir", str(run)])
    assert finished.exit_code == 2 and "finished at step 8 of 8; nothing to resume" in finished.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    shutil.rmtree(run / "adapter")  # killed after its last checkpoint, before the adapter was saved
    # simulate a crash while checkpoint-12 was being written, plus a stale atomic-write temporary
    (ckpts / "checkpoint-12").mkdir()
    (ckpts / "checkpoint-12" / "adapter_model.safetensors").write_bytes(b"partial")
    (run / ".manifest.json.123.tmp").write_text("{")
    result = CliRunner().invoke(main, ["tune", "--resume", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert "resumed from step 8" in result.output
    assert not (ckpts / "checkpoint-12").exists() and not (run / ".manifest.json.123.tmp").exists()


def test_resume_refuses_data_or_a_base_model_changed_since_the_run_started(tmp_path, tiny_model_dir):
    """--resume went on with other data (or base weights) than the checkpoints learned from, and
    rewrote the manifest's hashes as if the whole run had trained on them."""
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    run = tune(str(make_recipe(tmp_path, base, max_steps=8))).run_dir
    shutil.rmtree(run / "adapter")  # killed after its last checkpoint
    manifest = (run / "manifest.json").read_bytes()
    data = tmp_path / "data.jsonl"
    rows = data.read_bytes()
    data.write_bytes(rows + rows[: rows.index(b"\n") + 1])  # one row more
    resume = ["tune", "--resume", "--run-dir", str(run)]
    refused = CliRunner().invoke(main, resume)
    assert refused.exit_code == 2, refused.output
    assert f"data.train ({data}) changed since this run started" in refused.output
    data.unlink()  # moved away: one line, exit 2 (it was an internal FileNotFoundError)
    gone = CliRunner().invoke(main, resume)
    assert gone.exit_code == 2 and f"data.train ({data}: gone) changed" in gone.output, gone.output
    data.write_bytes(rows)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "note": "edited in place"}))
    refused = CliRunner().invoke(main, resume)
    assert refused.exit_code == 2 and f"model.base ({base}) changed" in refused.output, refused.output
    assert (run / "manifest.json").read_bytes() == manifest
    shutil.copy(tiny_model_dir / "config.json", base / "config.json")
    # the run's recipe.yaml edited: a new learning rate or batch size was ignored, a LoRA rank
    # failed inside torch, and the manifest took the edited recipe's hash
    saved = (run / "recipe.yaml").read_text()
    for edit in (("lr: 0.001", "lr: 0.1"), ("batch_size: 4", "batch_size: 2"), ("r: 16", "r: 4")):
        assert edit[0] in saved, edit
        (run / "recipe.yaml").write_text(saved.replace(*edit, 1))
        refused = CliRunner().invoke(main, resume)
        assert refused.exit_code == 2, (edit, refused.output)
        assert (
            "recipe.yaml: its model, train or data settings changed since this run started" in refused.output
        )
    assert (run / "manifest.json").read_bytes() == manifest
    (run / "recipe.yaml").write_text(saved)
    resumed = CliRunner().invoke(main, resume)
    assert resumed.exit_code == 0 and "resumed from step 8" in resumed.output, resumed.output
    # a hub or built-in base is not the user's to put back: a warning, and the resume goes on
    from types import SimpleNamespace

    from edgetune.config import load_recipe
    from edgetune.errors import InputError
    from edgetune.tune.resume import refuse_changed_inputs

    warned = []
    recipe = load_recipe(str(run / "recipe.yaml"))
    refuse_changed_inputs(run, recipe, SimpleNamespace(kind="hub"), "another hash", warned.append)
    assert len(warned) == 1 and "resuming on them" in warned[0]
    with pytest.raises(InputError, match="model.base"):
        refuse_changed_inputs(run, recipe, SimpleNamespace(kind="local"), "another hash", warned.append)


@pytest.mark.parametrize(
    "model_fixture", ["tiny_model_dir", "tiny_gemma3_dir"]
)  # Gemma 3: sliding window too
def test_packed_batches_match_unpacked_logits(request, model_fixture, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example
    from edgetune.tune.batches import make_collator

    model_dir = request.getfixturevalue(model_fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    r = Renderer(tiny_tokenizer)
    encoded = [
        r.encode(Example("messages", messages=(("user", u), ("assistant", a))))
        for u, a in [
            ("short one", "ok"),
            ("a much longer question about the router battery", "replace it"),
            ("hi", "hello"),
        ]
    ]
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    packed = make_collator(tiny_tokenizer.pad_token_id, packing=True)(features)
    padded = make_collator(tiny_tokenizer.pad_token_id, packing=False)(features)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        p = model(
            input_ids=packed["input_ids"],
            position_ids=packed["position_ids"],
            labels=packed["labels"],
            use_cache=False,
        )
        u = model(**padded)
    offset = 0
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        torch.testing.assert_close(p.logits[0, offset : offset + n], u.logits[i, :n], atol=1e-4, rtol=1e-4)
        offset += n
    torch.testing.assert_close(p.loss, u.loss, atol=1e-5, rtol=1e-5)


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["tune", "--resume"])
    assert result.exit_code == 2
    assert "runs/latest does not exist" in result.output
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").symlink_to("demo")  # the run was deleted, the link left
    result = CliRunner().invoke(main, ["tune", "--resume"])
    assert result.exit_code == 2 and "runs/latest points to demo, which is gone" in result.output


def test_resume_with_allow_pickle_follows_the_saved_recipe(tmp_path):
    """--allow-pickle arrives as an override, so `tune --resume --allow-pickle` was told to "drop
    RECIPE and --set", neither of which it had given."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: r\nmodel:\n  base: smollm2-135m-instruct\n")
    result = CliRunner().invoke(main, ["tune", "--resume", "--allow-pickle", "--run-dir", str(run)])
    assert result.exit_code == 2 and "drop RECIPE" not in result.output, result.output
    assert "does not allow pickle weights" in result.output and "--allow-pickle" in result.output
    result = CliRunner().invoke(main, ["tune", "--resume", "--set", "train.lr=1", "--run-dir", str(run)])
    assert result.exit_code == 2 and "drop RECIPE and --set" in result.output
    (run / "recipe.yaml").write_text("name: r\nmodel:\n  base: smollm2-135m-instruct\n  allow_pickle: true\n")
    result = CliRunner().invoke(main, ["tune", "--resume", "--allow-pickle", "--run-dir", str(run)])
    assert "allow pickle" not in result.output and "drop RECIPE" not in result.output, result.output


def strict_json(text: str):
    """json.loads as jq or JavaScript read: NaN and Infinity are not JSON."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_run_that_diverges_stops_at_its_first_nan_and_ships_no_adapter(
    tmp_path, tiny_model_dir, monkeypatch
):
    """The weights turn to NaN after step 3 (as a too-high learning rate makes them): the run
    stops at step 4, its first NaN loss, with one clear line, and metrics.jsonl stays strict JSON
    that still says NaN. The Trainer's own logging had shown the mean of the earlier losses."""
    import torch
    from transformers import TrainerCallback

    import edgetune.tune.run as tune_run

    class Diverge(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    for p in model.parameters():
                        if p.requires_grad:
                            p.fill_(float("nan"))

    made = tune_run.tune_callbacks
    monkeypatch.setattr(tune_run, "tune_callbacks", lambda *a, **k: [*made(*a, **k), Diverge()])
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=12, eval_steps=2, save_steps=2)
    result = CliRunner().invoke(main, ["tune", str(recipe)])
    assert result.exit_code == 2, result.output
    assert "training diverged at step 4: the training loss is nan" in result.output
    assert "a lower train.lr (it was 0.001)" in result.output and "Traceback" not in result.output
    run = (tmp_path / "runs" / "latest").resolve()
    assert not (run / "adapter").exists()
    # step 4 was a save step: no checkpoint of its NaN weights (a resume would have finished with it)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]
    records = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r for r in records if "loss" in r}
    assert max(losses) == 4 and losses[4]["loss"] is None and losses[4]["loss_not_finite"] == "nan"
    assert all(isinstance(losses[s]["loss"], float) for s in (1, 2, 3))
    manifest = strict_json((run / "manifest.json").read_text())
    assert manifest["stages"]["tune"]["status"] == "diverged"
    again = CliRunner().invoke(main, ["tune", "--resume", "--run-dir", str(run)])  # or `edgetune run`
    assert again.exit_code == 2 and "diverged at step 4" in again.output
    assert "resuming would repeat the same steps" in again.output
    for command in (["merge", str(run)], ["export", str(run)], ["bench", str(run)], ["chat", str(run)]):
        later = CliRunner().invoke(main, command)
        assert later.exit_code == 2 and "diverged at step 4" in later.output, (command, later.output)
        assert "--resume" not in later.output


def test_overfit_watch_warns_once():
    from types import SimpleNamespace

    from edgetune.tune.callbacks import OverfitWatch

    seen = []
    watch = OverfitWatch(seen.append)
    args = SimpleNamespace(eval_steps=1)
    for step, (train, val) in enumerate([(3.0, 2.0), (2.0, 2.1), (1.0, 2.2), (0.5, 2.3)], start=1):
        watch.on_log(args, None, None, logs={"loss": train})
        watch.on_evaluate(args, SimpleNamespace(global_step=step), None, metrics={"eval_loss": val})
    assert len(seen) == 1 and "overfitting" in seen[0] and "step 1" in seen[0]
    # a rise within noise (5.714 -> 5.719 on two validation rows) is no overfitting
    seen.clear()
    watch = OverfitWatch(seen.append)
    for step, (train, val) in enumerate([(3.0, 5.714), (2.0, 5.7149), (1.0, 5.7191), (0.5, 5.706)], start=1):
        watch.on_log(args, None, None, logs={"loss": train})
        watch.on_evaluate(args, SimpleNamespace(global_step=step), None, metrics={"eval_loss": val})
    assert seen == []


def test_a_training_loss_that_climbs_past_twice_the_first_steps_is_warned_once():
    """train.lr 1e-2 took the demo's training loss from 1.41 to 4.99 by step 8, its validation loss
    still fell from there, and the run said nothing beyond the start's "lr is high"."""
    from types import SimpleNamespace

    from edgetune.tune.callbacks import LossSpikeWatch

    def logged(watch, losses, history=()):
        state = SimpleNamespace(global_step=0, log_history=[{"loss": x} for x in history])
        for loss in losses:  # the Trainer appends a log to the history before the callbacks see it
            state.global_step += 1
            state.log_history.append({"loss": loss})
            watch.on_log(None, state, None, logs={"loss": loss})

    seen = []
    logged(LossSpikeWatch(seen.append, 1e-2), [1.41, 1.2, 2.9, 4.99, 6.0, float("nan")])
    assert len(seen) == 1 and "training loss 4.9900 at step 4 is 3.5x the first step's (1.4100)" in seen[0]
    assert "usual range" in seen[0]
    logged(LossSpikeWatch(seen.append, 2e-4), [1.41, 0.9, 3.0, 0.5, 2.0])  # one noisy batch is no climb
    # resumed late in a run: the run's first loss, not the resumed process's, is the measure
    logged(LossSpikeWatch(seen.append, 2e-4), [0.09, 0.11, 0.19, 0.2], history=[1.41, 0.5, 0.1])
    assert len(seen) == 1


def test_metrics_are_made_durable_with_each_committed_checkpoint_not_each_step(tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    from edgetune.tune import callbacks

    synced = []  # what was fsynced, in order: the metrics file, checkpoint files, the marker
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)  # rundir.fsync_file and fsync_tree call it
    metrics = tmp_path / "metrics.jsonl"
    log, commit = callbacks.MetricsLog(metrics), callbacks.CommitCheckpoints(metrics)
    state = SimpleNamespace(global_step=0, epoch=0.0, num_input_tokens_seen=0, is_world_process_zero=True)
    log.on_train_begin(None, state, None)
    for step in (1, 2):
        state.global_step, state.num_input_tokens_seen = step, 100 * step
        log.on_log(None, state, None, logs={"loss": 1.0 / step})
    assert synced == [] and len(metrics.read_text().splitlines()) == 2  # written and flushed, no fsync
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "adapter_model.safetensors").write_bytes(b"x")
    monkeypatch.setattr(callbacks, "wait_for_every_rank", lambda: None)
    commit.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert synced[0] == "metrics.jsonl" and (ckpt / callbacks.COMPLETE).is_file()
    synced.clear()
    log.on_train_end(None, state, None)
    assert synced == ["metrics.jsonl"]


def test_a_committed_checkpoint_gets_the_umask_modes(tmp_path, monkeypatch):
    """peft saves a checkpoint's adapter with safetensors, which makes it 0600: it was the one
    file of a run that other users could not read under umask 022."""
    from types import SimpleNamespace

    from conftest import mode, umask

    from edgetune.tune import callbacks

    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir(mode=0o700)
    (ckpt / "adapter_model.safetensors").write_bytes(b"x")
    (ckpt / "adapter_model.safetensors").chmod(0o600)
    monkeypatch.setattr(callbacks, "wait_for_every_rank", lambda: None)
    state = SimpleNamespace(global_step=2, is_world_process_zero=True)
    with umask(0o022):
        callbacks.CommitCheckpoints().on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert mode(ckpt) == 0o755 and mode(ckpt / "adapter_model.safetensors") == 0o644
    assert mode(ckpt / callbacks.COMPLETE) == 0o644


@pytest.mark.parametrize("packing", [False, True])
def test_supervised_logits_loss_equals_the_models_own_loss(tiny_model_dir, tiny_tokenizer, packing):
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example
    from edgetune.tune.batches import make_collator
    from edgetune.tune.trainer import SupervisedLogitsTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    r = Renderer(tiny_tokenizer)
    feats = [
        r.encode(
            Example("messages", messages=(("user", f"question {i} " * (i + 1)), ("assistant", f"answer {i}")))
        )
        for i in range(4)
    ]
    batch = make_collator(tiny_tokenizer.pad_token_id, packing)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in feats]
    )
    trainer = SupervisedLogitsTrainer(
        model=model, args=TrainingArguments(output_dir="out", report_to=[], use_cpu=True)
    )
    n_items = (batch["labels"] != -100).sum()
    for num_items in (None, n_items):
        model.zero_grad()
        ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        ours.backward()
        ours_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
        model.zero_grad()
        reference = model(**batch, use_cache=False).loss
        reference.backward()
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            ours_grad, model.model.layers[0].mlp.up_proj.weight.grad, atol=1e-6, rtol=1e-4
        )


@pytest.mark.parametrize("packing", [False, True])
def test_the_lm_head_sees_one_row_per_supervised_token(tiny_model_dir, tiny_tokenizer, packing):
    """Not the batch's padded positions, nor the union of the rows' supervised positions."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from edgetune.data.render import Renderer
    from edgetune.data.rows import Example
    from edgetune.tune.batches import make_collator
    from edgetune.tune.trainer import SupervisedLogitsTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    r = Renderer(tiny_tokenizer)
    # prompts of different lengths: each row's reply sits at other positions
    feats = [
        r.encode(Example("messages", messages=(("user", "q " * (3 * i + 1)), ("assistant", "a " * (i + 1)))))
        for i in range(4)
    ]
    batch = make_collator(tiny_tokenizer.pad_token_id, packing)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in feats]
    )
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    trainer = SupervisedLogitsTrainer(
        model=model, args=TrainingArguments(output_dir="out", report_to=[], use_cpu=True)
    )
    trainer.compute_loss(model, dict(batch))
    predicting = batch["labels"][:, 1:] != -100
    assert int(predicting.sum()) == sum(e.n_supervised for e in feats)
    assert seen == [(int(predicting.sum()), model.config.vocab_size)]
    if not packing:  # the union of the rows' positions would have kept more
        assert predicting.any(dim=0).sum() * len(feats) > predicting.sum()


def test_gradient_checkpointing_is_recorded_and_keeps_the_losses(tmp_path, tiny_model_dir):
    plain = tune(str(make_recipe(tmp_path, tiny_model_dir, max_steps=3)), run_dir=tmp_path / "plain")
    recomputed = tune(
        str(make_recipe(tmp_path, tiny_model_dir, max_steps=3, gradient_checkpointing=True)),
        run_dir=tmp_path / "recomputed",
    )
    stages = [
        json.loads((r.run_dir / "manifest.json").read_text())["stages"]["tune"] for r in (plain, recomputed)
    ]
    assert [s["gradient_checkpointing"] for s in stages] == [False, True]
    assert train_losses(recomputed.run_dir) == pytest.approx(train_losses(plain.run_dir), rel=1e-5)


LAUNCH_TIMEOUT_S = 420  # a 2-rank run of the tiny model takes 20-70 s on 2 cores


def signal_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # gone already
        pass


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first (from /proc: Linux)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def launch_two(launcher: str, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """Two CPU processes (gloo) under torchrun or under accelerate launch with the shipped ddp.yaml."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    else:  # two processes; the config's mixed_precision bf16 gives way to the recipe's precision
        config = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "ddp.yaml"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += ["--num_processes", "2"]
        cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    process = subprocess.Popen(
        cmd + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
    )
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # a run that hangs says where before it is stopped whole (torchrun starts each rank in a
        # session of its own, so the launcher's process group does not hold them)
        ranks = descendants(process.pid)
        tree = subprocess.run(
            [
                "ps",
                "-o",
                "pid,ppid,stat,wchan:32,etime,args",
                "-p",
                ",".join(map(str, [process.pid, *ranks])),
            ],
            capture_output=True,
            text=True,
        ).stdout
        try:  # each edgetune rank prints its threads' stacks, one at a time: they share stderr
            for pid in ranks:
                signal_quietly(pid, signal.SIGUSR1)
                time.sleep(1.5)
        finally:
            for pid in [process.pid, *ranks]:
                signal_quietly(pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(
            f"{launcher} still running after {LAUNCH_TIMEOUT_S} s\n{tree}\nstderr:\n{stderr[-12000:]}"
        )
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate", "torchrun+checkpointing"])
def test_two_processes_under_a_launcher_average_their_gradients(tmp_path, tiny_model_dir, launcher):
    """Both ranks hold the same weights after every step (DDP really wraps the model: a validation
    pass before train() once left it bare, and each rank trained alone), one summary, one adapter,
    and checkpoints committed after every rank wrote its part."""
    from safetensors.torch import load_file

    extra = {"gradient_checkpointing": True} if "checkpointing" in launcher else {}
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=4, eval_steps=2, save_steps=2, **extra)
    run_dir = tmp_path / "ddp"
    digests = tmp_path / "digests"
    digests.mkdir()
    probe = Path(__file__).with_name("rank_probe.py")
    result = launch_two(launcher.split("+")[0], [str(probe), "tune", str(recipe), "--run-dir", str(run_dir)],
                        RANK_PROBE_DIR=str(digests))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["device"]["world_size"] == 2
    assert manifest["stages"]["tune"]["steps"] == 4
    assert manifest["stages"]["tune"]["processes"] == 2
    assert manifest["stages"]["tune"]["examples_per_step"] == 8  # batch_size 4 on each of two ranks
    assert "8 examples per step (4 x 2 processes)" in result.stdout
    assert manifest["stages"]["tune"]["initial_eval_loss"] > 0
    if launcher == "torchrun":  # two ranks pad their last batches with repeats; none may count twice
        alone = tune(str(recipe), run_dir=tmp_path / "alone").initial_eval_loss
        assert manifest["stages"]["tune"]["initial_eval_loss"] == pytest.approx(alone, abs=1e-6)
    rank0 = json.loads((digests / "rank0.json").read_text())["steps"]
    rank1 = json.loads((digests / "rank1.json").read_text())["steps"]
    assert len(rank0) == 4 and len(set(rank0)) == 4  # the weights change every step
    assert rank0 == rank1
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    assert result.stdout.count("edgetune tune") == 1  # one summary, from rank 0
    assert result.stderr.count("validation loss before training") == 1
    if launcher == "accelerate":  # ddp.yaml's bf16 against the recipe's fp32: fp32 trains, said once
        assert result.stderr.count("the launcher's mixed_precision bf16 is not used") == 1
    # a checkpoint is marked complete only once every rank's share is written (rank 1 writes late)
    for step in (2, 4):
        checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}"
        marked = json.loads((checkpoint / COMPLETE).read_text())["time"]
        assert marked >= (checkpoint / "rng_state_1.pth").stat().st_mtime


@pytest.mark.slow
def test_two_processes_resume_to_the_same_adapter(tmp_path, tiny_model_dir):
    """A crash after checkpoint 4 (simulated: the later checkpoint and the adapter removed); resuming
    under the launcher reloads optimizer, scheduler, both ranks' RNG and data position."""
    recipe = make_recipe(
        tmp_path, tiny_model_dir, max_steps=8, eval_steps=4, save_steps=4, lora={"dropout": 0.1}
    )
    run_dir = tmp_path / "ddp"
    first = launch_two("torchrun", ["-m", "edgetune", "tune", str(recipe), "--run-dir", str(run_dir)])
    assert first.returncode == 0, first.stderr[-3000:]
    want_losses = train_losses(run_dir)
    want_adapter = sha256_file(run_dir / "adapter" / "adapter_model.safetensors")
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-8")
    shutil.rmtree(run_dir / "adapter")

    resumed = launch_two("torchrun", ["-m", "edgetune", "tune", "--resume", "--run-dir", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 4" in resumed.stdout
    assert train_losses(run_dir) == pytest.approx(want_losses, abs=1e-6)
    assert sha256_file(run_dir / "adapter" / "adapter_model.safetensors") == want_adapter


@pytest.mark.slow
@pytest.mark.parametrize("config,method", [("fsdp.yaml", "lora"), ("fsdp_qlora.yaml", "qlora")])
def test_fsdp_on_two_ranks_trains_and_saves_the_whole_adapter(tmp_path, tiny_model_dir, config, method):
    """The shipped FSDP configs' settings on two CPU ranks: the model (4-bit stored as bf16 for
    QLoRA) wraps under full sharding, trains a step, and the adapter written is gathered from both
    ranks: every tensor with the unsharded shape, lora_B moved off zero (peft's own selection wrote
    an empty adapter here: it cannot see through nested FSDP module names). A checkpoint reads back
    into the sharded model, sharded or full (through accelerate and peft it loaded nothing)."""
    import torch
    from safetensors.torch import load_file

    from edgetune.config import LoraConfig
    from edgetune.models import resolve_model
    from edgetune.tune.model import choose_setup, load_for_training

    config_path = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / config
    probe = Path(__file__).with_name("fsdp_probe.py")
    out = tmp_path / "adapter"
    result = launch_two("torchrun", [str(probe), str(tiny_model_dir), str(config_path), method, str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_file(out / "adapter_model.safetensors")
    plain = load_for_training(resolve_model(str(tiny_model_dir)), choose_setup("lora", "fp32"), LoraConfig())
    plain.save_pretrained(tmp_path / "plain")
    want = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert all(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)
    # a training checkpoint (accelerate's adapter-only FSDP state dict) holds the same adapter keys
    in_checkpoint = (tmp_path / "checkpoint_keys.txt").read_text().split()
    assert sorted(k.replace(".default", "") for k in in_checkpoint) == sorted(saved)
    resumed = (tmp_path / "resumed.txt").read_text().split()
    assert resumed == [
        str(len(saved)),
        "adapter",
        "tensors",
        "from",
        "SHARDED_STATE_DICT",
        "and",
        "FULL_STATE_DICT",
    ]
    # peft reads it back as written (key names and adapter_config.json in its format)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    params = dict(loaded.named_parameters())
    for key, tensor in saved.items():
        torch.testing.assert_close(params[key.replace(".weight", ".default.weight")].float(), tensor.float())


@pytest.mark.slow
def test_qlora_runs_on_cpu_with_a_warning(tmp_path, tiny_model_dir):
    recipe = make_recipe(tmp_path, tiny_model_dir, method="qlora", max_steps=2, eval_steps=2, save_steps=2)
    result = tune(str(recipe))
    assert result.method == "qlora" and result.device == "cpu"
    assert any("30x slower" in w for w in result.warnings)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["stages"]["tune"]["dtype"] == "nf4"
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_a_qlora_tune_prints_no_warning_of_peft_the_user_cannot_act_on(tmp_path, tiny_model_dir):
    """peft 0.22 printed on every tune, merge and bench "Please upgrade to Transformers >= 5.6" (which
    edgetune's pins forbid) and, for QLoRA, that edgetune's gradient_checkpointing_kwargs is deprecated."""
    recipe = make_recipe(tmp_path, tiny_model_dir, method="qlora", max_steps=1, eval_steps=1, save_steps=1)
    proc = subprocess.run(
        [sys.executable, "-m", "edgetune", "tune", str(recipe), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "30x slower" in proc.stderr  # edgetune's own warnings still come through
    for noise in ("deprecated in PEFT", "upgrade to Transformers", "gradient_checkpointing_kwargs"):
        assert noise not in proc.stderr, proc.stderr


def test_qlora_gradients_on_cpu_survive_a_validation_pass(tiny_model_dir):
    """bitsandbytes repacks 4-bit weights for a backward-less CPU kernel on the first eval-mode forward
    (CPUs with AVX512-BF16); the validation loss before training must not change the gradients after."""
    import warnings

    import torch

    from edgetune.config import LoraConfig
    from edgetune.models import resolve_model
    from edgetune.tune.model import choose_setup, load_for_training

    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))

    def lora_grads(validate_first: bool) -> dict:
        torch.manual_seed(0)
        model = load_for_training(
            resolve_model(str(tiny_model_dir)), choose_setup("qlora", "fp32"), LoraConfig()
        )
        if validate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
        model.train()
        with torch.no_grad():  # lora_B starts at zero; make the gradient reach lora_A and the layers below
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*autograd kernel was not registered")
            model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, after_eval = lora_grads(False), lora_grads(True)
    assert plain.keys() == after_eval.keys() and plain
    for name in plain:
        torch.testing.assert_close(after_eval[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_qlora_under_fsdp_wraps_with_uniform_dtypes(tiny_model_dir, monkeypatch):
    """FSDP flattens each unit's parameters into one tensor: under an FSDP launch the 4-bit weights
    are stored as bf16 and nothing (no peft k-bit preparation) casts the norms back to fp32."""
    import socket

    import torch
    import torch.distributed as dist
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from edgetune.config import LoraConfig
    from edgetune.models import resolve_model
    from edgetune.tune.model import TrainSetup, load_for_training

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(ACCELERATE_USE_FSDP="true", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0")
    for key, value in {**env, "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    setup = TrainSetup("qlora", "cpu", "nf4", False, "adamw_torch", [])  # fp32 asked: FSDP needs bf16
    model = load_for_training(
        resolve_model(str(tiny_model_dir)), setup, LoraConfig(), gradient_checkpointing=True
    )
    layer = model.base_model.model.model.layers[0]
    assert {p.dtype for n, p in layer.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    assert model.base_model.model.is_gradient_checkpointing
    dist.init_process_group("gloo")
    try:
        wrapped = FSDP(model, auto_wrap_policy=fsdp_auto_wrap_policy(model), device_id=torch.device("cpu"))
        assert len(FSDP.fsdp_modules(wrapped)) > 1
    finally:
        dist.destroy_process_group()


def test_sharded_runs_save_the_gathered_adapter(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Under FSDP/ZeRO-3 the adapter written is the one gathered from all ranks (accelerate's full
    state dict, keys as the unsharded model's), not the main rank's local shard."""
    from types import SimpleNamespace

    import torch
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file

    from edgetune.config import LoraConfig
    from edgetune.models import resolve_model
    from edgetune.tune.distributed import save_adapter
    from edgetune.tune.model import choose_setup, load_for_training

    model = load_for_training(resolve_model(str(tiny_model_dir)), choose_setup("lora", "fp32"), LoraConfig())
    gathered = {k: (v + 1.0 if "lora_" in k else v) for k, v in model.state_dict().items()}
    calls = []
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        get_state_dict=lambda wrapped: calls.append(wrapped) or gathered,
        unwrap_model=lambda m: m,
    )
    trainer = SimpleNamespace(accelerator=accelerator, model=model, model_wrapped="the FSDP module")
    save_adapter(trainer, tiny_tokenizer, tmp_path / "adapter", main=False)
    assert calls == ["the FSDP module"] and not (tmp_path / "adapter").exists()  # gathered on every rank
    save_adapter(trainer, tiny_tokenizer, tmp_path / "adapter", main=True)
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    want = gathered["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    torch.testing.assert_close(saved[name], want)
    assert (tmp_path / "adapter" / "tokenizer.json").is_file()


def test_fsdp_with_one_process_is_refused_before_training(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "1")
    result = CliRunner().invoke(main, ["tune", str(make_recipe(tmp_path, tiny_model_dir)), "--run-dir", "r"])
    assert result.exit_code == 2 and "FSDP with one process shards nothing" in result.output
    assert not (tmp_path / "r").exists()


def test_dora_under_fsdp_is_refused_before_training(tmp_path, tiny_model_dir, monkeypatch):
    """On two CPU ranks peft's DoRA failed at the first step under FSDP (IndexError: lora_A's weight
    is flat there)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = make_recipe(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(
        main, ["tune", str(recipe), "--set", "train.lora.dora=true", "--run-dir", "r"]
    )
    assert result.exit_code == 2 and "train.lora.dora does not train under FSDP" in result.output
    assert not (tmp_path / "r").exists()


def test_deepspeed_launch_trains_lora_and_refuses_qlora(monkeypatch):
    from edgetune.errors import InputError
    from edgetune.tune.model import choose_setup

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert choose_setup("auto").method == "lora"
    with pytest.raises(InputError, match="fsdp_qlora.yaml"):
        choose_setup("qlora")


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    recipe = make_recipe(tmp_path, tiny_model_dir, tensorboard=True)
    result = CliRunner().invoke(main, ["tune", str(recipe)])
    assert result.exit_code == 2
    assert "pip install tensorboard" in result.output


def test_settings_that_train_but_defeat_themselves_are_warned_about(tmp_path, tiny_model_dir):
    """Truncation that cuts every EOS off, a batch bigger than the data, evaluation that never comes."""
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=4, save_steps=4, batch_size=64)
    result = tune(
        str(recipe),
        ["data.max_seq_len=50", "data.truncation=truncate", "train.grad_accum=2", "train.epochs=1"],
    )
    text = "\n".join(result.warnings)
    assert "train.epochs 1 is not used: train.max_steps 2 sets the run's length" in text
    assert "training examples learn a reply that does not end in EOS" in text
    assert "train.batch_size x train.grad_accum = 128 is more than the" in text
    assert "train.eval_steps 4 > train.max_steps 2" in text
    from edgetune.config import load_recipe
    from edgetune.tune.checks import planned_steps

    # a run by epochs: 96 examples, 4 a step, accumulated 2 at a time = 12 steps an epoch
    by_epochs = load_recipe(
        str(recipe), ["train.max_steps=0", "train.epochs=2", "train.batch_size=4", "train.grad_accum=2"]
    )
    assert planned_steps(by_epochs, 96) == 24 and planned_steps(by_epochs, 97) == 26
    result = tune(
        str(recipe), ["train.max_steps=0", "train.epochs=1", "train.eval_steps=100", "train.save_steps=100"]
    )
    assert "train.eval_steps 100 > the 2 steps of train.epochs 1" in "\n".join(result.warnings)
    assert result.steps == 2  # what the Trainer took (96 examples, 64 a step)


def test_examples_longer_than_the_models_positions_are_warned_about_in_data_check_and_tune(
    tmp_path, tiny_model_dir
):
    """The tiny model holds 512 positions: a max_seq_len of 2048 let 700-token examples train silently."""
    from conftest import chat_row, write_jsonl

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=1, eval_steps=1, save_steps=1)
    rows = [chat_row(f"log {i}: " + "link down on eth0 " * 60, "{}") for i in range(10)]
    write_jsonl(tmp_path / "long.jsonl", rows + [chat_row(f"q{i}", "a") for i in range(30)])
    sets = ["--set", "data.max_seq_len=2048", "--set", f"data.train={tmp_path / 'long.jsonl'}"]
    checked = CliRunner().invoke(
        main, ["data", "check", "--recipe", str(recipe), *sets, str(tmp_path / "long.jsonl")]
    )
    assert checked.exit_code == 0, checked.output
    warning = "longer than the model's 512 positions (max_position_embeddings): set data.max_seq_len to 512"
    assert warning in " ".join(checked.output.split()), checked.output
    tuned = CliRunner().invoke(main, ["tune", str(recipe), *sets])
    assert tuned.exit_code == 0 and warning in " ".join(tuned.output.split()), tuned.output
    fits = CliRunner().invoke(main, ["data", "check", "--recipe", str(recipe), str(tmp_path / "data.jsonl")])
    assert fits.exit_code == 0 and "max_position_embeddings" not in fits.output


def test_the_trainer_methods_edgetune_overrides_for_fsdp_checkpoints_still_exist():
    """They are transformers' private methods: a rename upstream would leave ours never called and
    FSDP checkpoints read back through the path that loads nothing."""
    from transformers import Trainer

    from edgetune.tune.trainer import SupervisedLogitsTrainer

    for name in ("_load_from_checkpoint", "_load_best_model", "_load_optimizer_and_scheduler"):
        assert callable(getattr(Trainer, name, None)), name
        assert name in vars(SupervisedLogitsTrainer), name
    # and peft's private map from checkpoint names back to the model's, which our loader applies
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    assert callable(getattr(PEFT_TYPE_TO_TUNER_MAPPING["LORA"], "_remap_adapter_state_dict_for_load", None))


def test_an_fsdp_checkpoint_without_its_model_file_is_one_clear_error(tmp_path):
    """transformers says "Can't find a valid checkpoint" for a folder that is not one; our loader,
    which replaces its path under FSDP, names the file that is missing instead of a raw DCP error."""
    from types import SimpleNamespace

    from edgetune.errors import ModelError
    from edgetune.tune.fsdp_checkpoint import FULL, SHARDED, load_fsdp_adapter

    for kind, missing in ((SHARDED, "pytorch_model_fsdp_0"), (FULL, "pytorch_model_fsdp.bin")):
        plugin = SimpleNamespace(state_dict_type=SimpleNamespace(name=kind))
        with pytest.raises(ModelError, match=f"not an FSDP checkpoint \\({missing} is missing"):
            load_fsdp_adapter(plugin, model=None, checkpoint_dir=tmp_path)
    plugin = SimpleNamespace(state_dict_type=SimpleNamespace(name="LOCAL_STATE_DICT"))
    with pytest.raises(ModelError, match="LOCAL_STATE_DICT is not one edgetune reads back"):
        load_fsdp_adapter(plugin, model=None, checkpoint_dir=tmp_path)


def test_latest_lives_in_runs_and_never_replaces_somebodys_file(tmp_path, tiny_model_dir):
    """--run-dir elsewhere/x wrote a `latest` symlink into elsewhere/ (replacing a user's file named
    so) while `edgetune export` with no RUN_DIR still read runs/latest."""
    import os

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=1, eval_steps=1, save_steps=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "latest").write_text("my notes")
    first = CliRunner().invoke(main, ["tune", str(recipe), "--run-dir", str(elsewhere / "x")])
    assert first.exit_code == 0 and "runs/latest does not point at this run" in first.output, first.output
    assert (elsewhere / "latest").read_text() == "my notes"
    assert not (tmp_path / "runs").exists()  # not made here for a run kept elsewhere
    (tmp_path / "runs").mkdir()
    again = CliRunner().invoke(main, ["tune", str(recipe), "--run-dir", str(elsewhere / "x2")])
    assert again.exit_code == 0, again.output
    link = tmp_path / "runs" / "latest"
    assert os.readlink(link) == str(elsewhere / "x2") and link.resolve() == elsewhere / "x2"
    second = CliRunner().invoke(main, ["tune", str(recipe), "--run-dir", "runs/y"])
    assert second.exit_code == 0 and os.readlink(link) == "y", second.output  # relative inside runs/
    link.unlink()
    link.mkdir()  # a folder of the user's called latest: tune used to fail after training (exit 1)
    third = CliRunner().invoke(main, ["tune", str(recipe), "--run-dir", "runs/z"])
    assert third.exit_code == 0 and "runs/latest does not point at this run" in third.output, third.output
    assert link.is_dir() and not link.is_symlink()


def test_the_best_evaluation_is_saved_and_shipped_even_between_save_steps(tmp_path, tiny_model_dir):
    """eval_steps 2, save_steps 6: validation loss is lowest at step 2 or 4, where no checkpoint was
    due. The Trainer can only ship a saved checkpoint, so the last (worst) adapter shipped while
    the manifest reported step 2's loss. Now every improving evaluation is saved."""
    import hashlib

    from edgetune.tune.run import tune

    recipe = make_recipe(
        tmp_path, tiny_model_dir, lr=5e-3, eval_steps=2, save_steps=6, early_stopping_patience=0
    )
    valid = [
        chat_row(f"What is the capital of France? {i}", "ABCDEFGHIJKLMNOPQRSTUVWXYZ !#$%&()*+" * 2)
        for i in range(8)
    ]
    write_jsonl(tmp_path / "valid.jsonl", valid)
    text = recipe.read_text().replace("  train: data.jsonl\n", "  train: data.jsonl\n  valid: valid.jsonl\n")
    recipe.write_text(text)
    result = tune(str(recipe), run_dir=tmp_path / "run")
    evals = {
        r["step"]: r["eval_loss"]
        for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
        if "eval_loss" in r
    }
    best_step = min((s for s in evals if s > 0), key=evals.get)
    assert best_step % 6 != 0, evals  # the case under test: the best falls between save steps
    assert result.best_step == best_step and result.best_eval_loss == pytest.approx(evals[best_step])

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    shipped = digest(result.run_dir / "adapter" / "adapter_model.safetensors")
    best = result.run_dir / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors"
    assert shipped == digest(best)


def add_a_valid_set_unlike_training(tmp_path: Path, recipe: Path) -> None:
    """A validation split the training data does not teach: its loss soon rises, early stopping stops."""
    valid = [
        chat_row(f"What is the capital of France? {i}", "ABCDEFGHIJKLMNOPQRSTUVWXYZ !#$%&()*+" * 2)
        for i in range(8)
    ]
    write_jsonl(tmp_path / "valid.jsonl", valid)
    recipe.write_text(
        recipe.read_text().replace("  train: data.jsonl\n", "  train: data.jsonl\n  valid: valid.jsonl\n")
    )


@contextlib.contextmanager
def interrupted_after_checkpoint(monkeypatch, step: int):
    """Ctrl-C (a kill, as far as the run directory goes) once checkpoint-`step` is committed."""
    import edgetune.tune.callbacks as callbacks

    commit = callbacks.CommitCheckpoints.on_save

    def interrupted(self, args, state, control, **kwargs):
        out = commit(self, args, state, control, **kwargs)
        if state.global_step == step:
            raise KeyboardInterrupt
        return out

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.CommitCheckpoints, "on_save", interrupted)
        yield


def test_a_resumed_run_stops_early_where_the_uninterrupted_one_does(tmp_path, tiny_model_dir, monkeypatch):
    """Early stopping counts evaluations without improvement; the Trainer did not restore that
    count from the checkpoint, so a run interrupted while counting trained on for `patience` more
    evaluations than the same run left alone."""
    from edgetune.errors import Interrupted

    recipe = make_recipe(
        tmp_path, tiny_model_dir, lr=5e-3, max_steps=40, eval_steps=2, save_steps=2, early_stopping_patience=3
    )
    add_a_valid_set_unlike_training(tmp_path, recipe)
    reference = tune(str(recipe), run_dir=tmp_path / "reference")
    assert reference.stopped_early and reference.steps - reference.best_step == 6, reference
    stop_at = reference.steps - 2  # two evaluations into the count
    with interrupted_after_checkpoint(monkeypatch, stop_at), pytest.raises(Interrupted):
        tune(str(recipe), run_dir=tmp_path / "interrupted")
    resumed = tune(run_dir=tmp_path / "interrupted", resume=True)
    assert (resumed.steps, resumed.best_step, resumed.stopped_early) == (
        reference.steps,
        reference.best_step,
        True,
    )


@pytest.mark.parametrize("early", [True, False], ids=["early stop", "max_steps, no validation"])
def test_a_run_killed_after_its_last_checkpoint_resumes_to_the_same_adapter(
    tmp_path, tiny_model_dir, monkeypatch, early
):
    """Killed once the checkpoint where training ended was committed, before adapter/ was written:
    the resumed Trainer took a step more before looking, past the early stop (76 steps for 52, another
    adapter) or past max_steps (13 of 12). It now only finishes the run."""
    from edgetune.errors import Interrupted

    settings = dict(lr=5e-3, max_steps=40, eval_steps=2, save_steps=2, early_stopping_patience=2)
    if not early:
        settings = dict(max_steps=6, eval_steps=2, save_steps=2, scheduler="constant")
    recipe = make_recipe(tmp_path, tiny_model_dir, **settings)
    if early:
        add_a_valid_set_unlike_training(tmp_path, recipe)
    else:
        recipe.write_text(
            recipe.read_text().replace("  max_seq_len: 128\n", "  max_seq_len: 128\n  valid_fraction: 0\n")
        )
    reference = tune(str(recipe), run_dir=tmp_path / "reference")
    assert reference.stopped_early == early and (reference.best_step is None) == (not early), reference
    with interrupted_after_checkpoint(monkeypatch, reference.steps), pytest.raises(Interrupted):
        tune(str(recipe), run_dir=tmp_path / "killed")
    assert not (tmp_path / "killed" / "adapter").exists()
    resumed = tune(run_dir=tmp_path / "killed", resume=True)
    assert (resumed.steps, resumed.best_step) == (reference.steps, reference.best_step), resumed
    assert train_losses(tmp_path / "killed") == train_losses(tmp_path / "reference")
    if early:  # the best checkpoint deleted by hand: the last one ships, said, as the Trainer does
        shutil.copytree(tmp_path / "killed", tmp_path / "gone")
        shutil.rmtree(tmp_path / "gone" / "adapter")
        shutil.rmtree(tmp_path / "gone" / "checkpoints" / f"checkpoint-{reference.best_step}")
        manifest = json.loads((tmp_path / "gone" / "manifest.json").read_text())
        manifest["stages"]["tune"]["status"] = "running"
        (tmp_path / "gone" / "manifest.json").write_text(json.dumps(manifest))
        last = tune(run_dir=tmp_path / "gone", resume=True)
        assert last.best_step is None and last.steps == reference.steps
        shipped = tmp_path / "gone" / "adapter" / "adapter_model.safetensors"
        assert sha256_file(shipped) == sha256_file(
            tmp_path / "gone" / "checkpoints" / f"checkpoint-{reference.steps}" / "adapter_model.safetensors"
        )
    digest = [
        sha256_file(r / "adapter" / "adapter_model.safetensors")
        for r in (tmp_path / "reference", tmp_path / "killed")
    ]
    assert digest[0] == digest[1]


def test_a_run_moved_before_its_resume_still_ships_its_best_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    """The Trainer keeps the best checkpoint's absolute path: resumed from it in a moved run, it found
    nothing there at the end and shipped the last weights, while the manifest named the best step."""
    from edgetune.errors import Interrupted

    recipe = make_recipe(tmp_path, tiny_model_dir, lr=5e-3, max_steps=40, eval_steps=2, save_steps=6)
    recipe.write_text(recipe.read_text() + "  early_stopping_patience: 2\n")
    add_a_valid_set_unlike_training(tmp_path, recipe)
    reference = tune(str(recipe), run_dir=tmp_path / "reference")
    assert reference.stopped_early and reference.steps > reference.best_step, reference
    with interrupted_after_checkpoint(monkeypatch, reference.best_step), pytest.raises(Interrupted):
        tune(str(recipe), run_dir=tmp_path / "first")
    (tmp_path / "first").rename(tmp_path / "moved")
    resumed = tune(run_dir=tmp_path / "moved", resume=True)
    assert (resumed.steps, resumed.best_step) == (reference.steps, reference.best_step)
    digest = [
        sha256_file(r / "adapter" / "adapter_model.safetensors")
        for r in (tmp_path / "reference", tmp_path / "moved")
    ]
    assert digest[0] == digest[1]


def test_a_start_again_after_one_stopped_before_its_first_checkpoint_records_only_its_own_inputs(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Ctrl-C before the first checkpoint had advised a --resume that cannot work; started again
    in the same directory on other data, the run kept the first start's data.valid in its manifest,
    and its own --resume was refused as "data.valid changed"."""
    import edgetune.tune.callbacks as callbacks
    from edgetune.errors import Interrupted

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=6, eval_steps=2, save_steps=2)
    write_jsonl(tmp_path / "valid.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(6)])
    run = tmp_path / "r"
    log = callbacks.MetricsLog.on_log

    def stop_at_step_1(self, args, state, control, **kwargs):
        if state.global_step == 1:
            raise KeyboardInterrupt
        return log(self, args, state, control, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.MetricsLog, "on_log", stop_at_step_1)
        with pytest.raises(
            Interrupted, match="before the first checkpoint: nothing to resume; start the run again"
        ):
            tune(str(recipe), [f"data.valid={tmp_path / 'valid.jsonl'}"], run_dir=run)
    with (
        interrupted_after_checkpoint(monkeypatch, 2),
        pytest.raises(Interrupted, match="continue with: edgetune"),
    ):
        tune(str(recipe), run_dir=run)
    assert "valid" not in json.loads((run / "manifest.json").read_text())["data"]["sha256"]
    resumed = tune(run_dir=run, resume=True)
    assert resumed.steps == 6 and resumed.resumed_from == 2


def test_progress_in_a_log_is_plain_lines_printed_as_training_goes(tmp_path, tiny_model_dir, monkeypatch):
    """stderr not a terminal (make > log, CI): rich's live bar drew nothing until training ended,
    so a 10-minute tune was silent in the log."""
    from io import StringIO

    from rich.console import Console

    import edgetune.tune.callbacks as callbacks

    monkeypatch.setattr(callbacks.Progress, "LOG_EVERY_S", 0.0)  # a line a step (30 s in use)
    log = StringIO()
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=4, eval_steps=2, save_steps=2)
    tune(str(recipe), console=Console(file=log, width=200))
    lines = [line for line in log.getvalue().splitlines() if line.startswith("tune ")]
    # a step's loss, then its evaluation; the end says nothing the last evaluation did not
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "2/4", "3/4", "4/4", "4/4"], lines
    assert (
        "ETA" in lines[0] and "loss -" not in lines[0] and lines[1] != lines[2]
    )  # step 2, then its validation
    assert "\x1b" not in log.getvalue() and "━" not in log.getvalue()


def test_how_often_a_run_evaluates_does_not_change_what_it_trains(tmp_path, tiny_model_dir):
    """With LoRA dropout, each evaluation's DataLoader drew from torch's global generator and moved
    every later dropout mask: eval_steps 2 and 4 trained different adapters from one seed."""
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=8, save_steps=4)
    runs = [
        tune(str(recipe), [f"train.eval_steps={n}", "train.lora.dropout=0.1"], run_dir=tmp_path / f"e{n}")
        for n in (2, 4)
    ]
    assert train_losses(runs[0].run_dir) == train_losses(runs[1].run_dir)


def test_a_run_whose_validation_loss_never_fell_is_warned_about(tmp_path, tiny_model_dir, monkeypatch):
    """The best checkpoint no better than the base model before training: only the overfit watch
    (a loss rising twice while training's fell) had said anything, and only in that shape. The
    tiny random model's loss always falls a little, so the loss before training is made lower."""
    import edgetune.tune.callbacks as callbacks
    from edgetune.tune.checks import no_gain

    record = callbacks.InitialEval.on_evaluate

    def lower_before(self, args, state, control, metrics=None, **kwargs):
        return record(self, args, state, control, metrics={**(metrics or {}), "eval_loss": 0.5}, **kwargs)

    monkeypatch.setattr(callbacks.InitialEval, "on_evaluate", lower_before)
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=4, eval_steps=2, save_steps=2)
    result = tune(str(recipe))
    said = [w for w in result.warnings if w.startswith("no checkpoint lowered the validation loss")]
    assert said and "against 0.5000 before training" in said[0], result.warnings
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert said[0] in manifest["stages"]["tune"]["warnings"]
    assert no_gain(dataclasses.replace(result, initial_eval_loss=result.best_eval_loss + 0.01)) is None
    assert no_gain(dataclasses.replace(result, initial_eval_loss=None)) is None


def test_a_constant_schedule_warms_up_like_the_others(tmp_path):
    """transformers' "constant" ignores warmup_ratio: the 5% default warmup was silently dropped."""
    from types import SimpleNamespace

    from edgetune.config import load_recipe
    from edgetune.tune.trainer import training_args

    setup = SimpleNamespace(optim="adamw_torch", bf16=False, device="cpu")
    for schedule, expected in (
        ("constant", "constant_with_warmup"),
        ("cosine", "cosine"),
        ("linear", "linear"),
    ):
        recipe = load_recipe("demo", [f"train.scheduler={schedule}", "train.warmup_ratio=0.25"])
        args = training_args(recipe, tmp_path, setup, has_valid=True)
        assert args.lr_scheduler_type.value == expected and args.warmup_ratio == 0.25
        assert args.restore_callback_states_from_checkpoint  # early stopping's count survives a resume


def test_the_validation_loss_is_a_mean_over_tokens_whatever_the_batch_size(tmp_path, tiny_model_dir):
    """Answers of 1 to 23 words: the Trainer's mean of batch means weighed short answers' tokens
    more and moved with batch_size. The loss before training (a fresh LoRA changes nothing) must be
    the base model's mean over every supervised token, at batch 1 and at batch 4."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune.config import load_recipe
    from edgetune.data.prepare import prepare
    from edgetune.data.render import IGNORE
    from edgetune.models import ResolvedModel, load_tokenizer

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=1, eval_steps=1, save_steps=1)
    valid = [chat_row(f"log {i}: link down", " ".join(["site"] * (1 + (i * 7) % 23))) for i in range(9)]
    write_jsonl(tmp_path / "valid.jsonl", valid)
    recipe.write_text(
        recipe.read_text().replace("  train: data.jsonl\n", "  train: data.jsonl\n  valid: valid.jsonl\n")
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = load_tokenizer(ResolvedModel("tiny", tiny_model_dir, "local"))
    total, count = 0.0, 0
    for ex in prepare(load_recipe(str(recipe)).data, tokenizer).encoded["valid"].examples:
        with torch.no_grad():
            logits = model(torch.tensor([ex.input_ids])).logits[0, :-1]
        labels = torch.tensor(ex.labels[1:])
        keep = labels != IGNORE
        total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
        count += int(keep.sum())
    for batch, packing in ((1, False), (4, False), (4, True)):
        text = recipe.read_text().replace("batch_size: 4", f"batch_size: {batch}")
        (tmp_path / f"b{batch}{packing}.yaml").write_text(text + f"  packing: {str(packing).lower()}\n")
        result = tune(str(tmp_path / f"b{batch}{packing}.yaml"), run_dir=tmp_path / f"run{batch}{packing}")
        assert result.initial_eval_loss == pytest.approx(total / count, abs=1e-5), (batch, packing)


def test_packed_training_counts_every_token_it_trains_on(tmp_path, tiny_model_dir):
    """Packed batches carry no attention mask; counting "non-padding" tokens there dropped every
    EOS where pad == EOS (the tokens/s a run reports was low by that share)."""
    from edgetune.tune.resume import tokens_before

    recipe = make_recipe(
        tmp_path, tiny_model_dir, max_steps=0, epochs=1, packing=True, eval_steps=100, save_steps=100
    )
    result = tune(str(recipe), run_dir=tmp_path / "run")
    last = max((result.run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert tokens_before(last) == result.train_tokens  # one epoch: each example's tokens once
    assert tokens_before(None) == 0


def test_a_target_module_name_that_matches_nothing_is_refused(tmp_path, tiny_model_dir):
    """peft refuses a target_modules list none of whose names match, but adapts the rest of a list
    with a typo in it (or a Llama list on Phi-3's fused qkv_proj) without a word."""
    recipe = str(make_recipe(tmp_path, tiny_model_dir, max_steps=2))
    result = CliRunner().invoke(main, ["tune", recipe, "--set", "train.lora.target_modules=q_proj,v_prj"])
    assert result.exit_code == 2, result.output
    assert "train.lora.target_modules: v_prj names no module of this model (adapted: q_proj)" in result.output


def test_a_tokenizer_without_an_eos_token_is_refused_before_a_run_is_made(tmp_path, tiny_tokenizer):
    """Padding had nothing to pad with (an internal TypeError, exit 1), and with packing the model
    trained without any end to its answers."""
    import copy

    from conftest import build_tiny_model

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token, tokenizer.pad_token = None, None
    model = build_tiny_model(tmp_path, tokenizer, "LlamaForCausalLM")
    recipe = str(make_recipe(tmp_path, model, max_steps=2))
    for packing in ("false", "true"):
        result = CliRunner().invoke(main, ["tune", recipe, "--set", f"train.packing={packing}"])
        assert result.exit_code == 2, result.output
        assert "the tokenizer has no EOS token" in " ".join(result.output.split())
    assert not any((tmp_path / "runs").glob("tiny-*"))


def test_a_large_validation_split_is_warned_about(tmp_path, tiny_model_dir, monkeypatch):
    """10% of 50k rows is 5,000 validation examples, scored before training and at every eval_steps:
    an estimated 12-15 minutes each for SmolLM2 on a 2-core CPU."""
    import edgetune.tune.checks

    monkeypatch.setattr(edgetune.tune.checks, "LARGE_VALID", 5)
    result = tune(str(make_recipe(tmp_path, tiny_model_dir, max_steps=1, eval_steps=1, save_steps=1)))
    assert any("12 validation examples: every evaluation" in w for w in result.warnings), result.warnings


def crashed_run(tmp_path: Path, model_dir: Path) -> Path:
    """A run killed after checkpoint 4 of 8 (simulated: the later checkpoint and the adapter removed)."""
    recipe = make_recipe(tmp_path, model_dir, max_steps=8, eval_steps=4, save_steps=4)
    run_dir = tune(str(recipe), run_dir=tmp_path / "crashed").run_dir
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-8")
    shutil.rmtree(run_dir / "adapter")
    return run_dir


def test_a_resume_under_other_processes_or_fsdp_alone_is_refused(tmp_path, tiny_model_dir, monkeypatch):
    """A 2-process run resumed in one process had trained on at 4 examples a step instead of 8, its
    manifest then saying 1 process throughout; Ctrl-C's hint had named no launcher. FSDP's one-process
    refusal was skipped on --resume."""
    run_dir = crashed_run(tmp_path, tiny_model_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["device"]["world_size"] = 2  # as a run launched with 2 processes records
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["tune", "--resume", "--run-dir", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert (
        "started with 2 process(es), resumed with 1: each step would see 4 examples, not 8" in result.output
    )
    assert f"torchrun --nproc_per_node 2 -m edgetune tune --resume --run-dir {run_dir}" in result.output
    merged = CliRunner().invoke(main, ["merge", str(run_dir)])
    assert merged.exit_code == 2 and "torchrun --nproc_per_node 2 -m edgetune tune --resume" in merged.output
    manifest["device"]["sharding"] = "fsdp"  # an FSDP run: torchrun would resume it as plain DDP
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    merged = CliRunner().invoke(main, ["merge", str(run_dir)])
    assert "accelerate launch --config_file CONFIG --num_processes 2 -m edgetune tune" in merged.output
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    result = CliRunner().invoke(main, ["tune", "--resume", "--run-dir", str(run_dir)])
    assert result.exit_code == 2 and "FSDP with one process shards nothing" in result.output, result.output


def test_the_recipes_precision_wins_over_the_launchers(tmp_path, tiny_model_dir, monkeypatch):
    """The shipped accelerate configs say mixed_precision bf16: transformers kept it wherever its own
    bf16 was off, so an fp32 recipe trained in bf16 autocast while its summary and manifest said fp32."""
    import edgetune.tune.trainer as trainer_module

    precisions = []
    original = trainer_module.build_trainer

    def build(*args, **kwargs):
        trainer = original(*args, **kwargs)
        # read while the tune runs: accelerate's state is the caller's again once it returns
        precisions.append(trainer.accelerator.mixed_precision)
        return trainer

    monkeypatch.setattr(trainer_module, "build_trainer", build)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch` with ddp.yaml sets
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2)
    result = tune(str(recipe))
    assert precisions == ["no"]
    assert any("the launcher's mixed_precision bf16 is not used" in w for w in result.warnings), (
        result.warnings
    )


def test_a_tune_called_from_python_leaves_the_callers_process_as_it_was(
    tmp_path, tiny_model_dir, callers_settings
):
    """tune left ACCELERATE_MIXED_PRECISION set, and torch's threads, transformers' verbosity, a
    warnings filter and the reseeded RNGs changed: after a bf16 tune the caller's own bare
    Accelerator() trained in bf16, and a second, fp32 tune in the process warned that "the
    launcher's mixed_precision bf16 is not used" (saved in its manifest) with no launcher at all."""
    from accelerate import Accelerator

    before = caller_state()
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, eval_steps=2, save_steps=2)
    tune(str(recipe), overrides=["train.precision=bf16"])
    after = caller_state()
    assert [name for name in before if after[name] != before[name]] == []
    assert Accelerator().mixed_precision == "no"
    second = tune(str(recipe), run_dir=tmp_path / "second")
    assert not any("mixed_precision" in w for w in second.warnings), second.warnings
    manifest = json.loads((second.run_dir / "manifest.json").read_text())
    assert not any("mixed_precision" in w for w in manifest["stages"]["tune"]["warnings"])
    assert manifest["device"]["torch_threads"] == 1  # the recipe's threads, while it trained


def test_a_stage_that_fails_still_gives_the_caller_its_process_state_back(callers_settings):
    """What tune, merge and bench change for themselves is put back when they raise, too (a refused
    input, a divergence, Ctrl-C): a failed tune in a notebook left its threads and seeds behind."""
    import warnings

    import torch
    import transformers

    from edgetune.process_state import kept_process_state

    before = caller_state()
    with pytest.raises(KeyboardInterrupt), kept_process_state():
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
        os.environ.pop("EDGETUNE_CACHE")
        torch.set_num_threads(1)
        transformers.logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=UserWarning, module=r"transformers\.trainer")
        transformers.set_seed(42)
        raise KeyboardInterrupt
    after = caller_state()
    assert [name for name in before if after[name] != before[name]] == []


def test_a_stage_ending_beside_another_leaves_that_one_its_state(callers_settings):
    """Two stages in two threads (a service, each in its own run): the first to end put back the
    process as it had found it, under the one still running: that one's Accelerator lost its
    state, its ACCELERATE_MIXED_PRECISION went, and its seeded generator drew another number. The
    last stage to end now puts the caller's back."""
    import threading

    import torch
    from accelerate import Accelerator

    from edgetune.process_state import kept_process_state

    before = caller_state()
    first_in, first_out, seen = threading.Event(), threading.Event(), {}

    def short_stage():
        with kept_process_state():
            first_in.wait(10)
        first_out.set()

    def long_stage():
        with kept_process_state():
            os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
            torch.manual_seed(0)
            accelerator = Accelerator(cpu=True)
            first_in.set()
            first_out.wait(10)
            seen["state"] = accelerator.distributed_type.value  # the old code: AttributeError here
            seen["environ"] = os.environ.get("ACCELERATE_MIXED_PRECISION")
            seen["draw"] = torch.rand(1).item()

    threads = [threading.Thread(target=short_stage), threading.Thread(target=long_stage)]
    threads[0].start()
    threads[1].start()
    for t in threads:
        t.join(30)
    assert seen == {
        "state": "NO",
        "environ": "bf16",
        "draw": torch.rand(1, generator=torch.Generator().manual_seed(0)).item(),
    }
    after = caller_state()
    assert [name for name in before if after[name] != before[name]] == []


def test_a_kill_between_save_and_commit_resumes_from_the_last_committed_checkpoint(tmp_path, tiny_model_dir):
    """The Trainer rotates (save_total_limit) before the new checkpoint is marked complete: killed
    between the two, the last committed checkpoint was gone, the new one uncommitted, and a resume
    went back to the best one, however old (here step 2's, the validation loss rising after it)."""
    recipe = make_recipe(
        tmp_path, tiny_model_dir, max_steps=12, eval_steps=2, save_steps=2, early_stopping_patience=0
    )
    run_dir = tmp_path / "killed"
    probe = Path(__file__).with_name("commit_probe.py")
    proc = subprocess.run(
        [sys.executable, str(probe), "tune", str(recipe), "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "KILL_AT": "10", "BEST_AT": "2"},
        timeout=600,
    )
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert (run_dir / "checkpoints" / "checkpoint-8" / COMPLETE).is_file()
    result = CliRunner().invoke(main, ["tune", "--resume", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "resumed from step 8" in result.output
    # the end of training rotates too: the best and the last, as after any run
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-2"]


def test_a_sharded_runs_hints_and_precision_stay_with_its_accelerate_config(monkeypatch, tmp_path):
    """torchrun would resume an FSDP or ZeRO-3 run as plain DDP against sharded checkpoints; and
    under FSDP the config's mixed precision stays (its 4-bit base is stored in bf16), said."""
    from edgetune.tune.distributed import follow_recipe_precision, resume_command, sharding

    assert resume_command(tmp_path, 1) == f"edgetune tune --resume --run-dir {tmp_path}"
    assert resume_command(tmp_path, 2).startswith("torchrun --nproc_per_node 2 -m edgetune tune --resume")
    # as merge reads it from the manifest, unlaunched
    sharded = resume_command(tmp_path, 2, "fsdp")
    assert sharded.startswith("accelerate launch --config_file CONFIG --num_processes 2 -m edgetune tune")
    assert sharding() is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharding() == "fsdp"  # what tune records in the manifest (device.sharding)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert "is not used under FSDP or DeepSpeed" in follow_recipe_precision(False)
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "bf16"
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert "the launcher's mixed_precision bf16 is not used" in follow_recipe_precision(False)
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"


def test_a_lora_rank_past_the_narrowest_adapted_layer_is_refused_before_peft_builds_it(tiny_model_dir):
    """train.lora.r=100000 filled 23 GB before the kernel killed the process with no message; a
    rank past min(in, out) adds memory and no capacity."""
    from transformers import AutoModelForCausalLM

    from edgetune.errors import InputError
    from edgetune.tune.model import refuse_a_rank_past_its_layers

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # k_proj and v_proj: 64 -> 32
    refuse_a_rank_past_its_layers(base, "all-linear", 32)
    with pytest.raises(InputError, match="train.lora.r: 33 is more than 32, the narrowest layer it adapts"):
        refuse_a_rank_past_its_layers(base, "all-linear", 33)
    refuse_a_rank_past_its_layers(base, ["q_proj", "o_proj"], 64)  # 64 x 64: the head's width is no limit
    with pytest.raises(InputError, match="65 is more than 64"):
        refuse_a_rank_past_its_layers(base, ["q_proj"], 65)


def test_a_warmup_as_long_as_the_run_or_many_epochs_long_is_warned_about():
    """`train.max_steps 1` took its one step at a learning rate of 0; `train.epochs 1e9` warmed up
    for 3e8 steps, trained at 1e-12 until early stopping ended it, and exited 0."""
    from edgetune.config import load_recipe
    from edgetune.tune.checks import warn_about_warmup

    def said(sets, examples=120):
        warnings = []
        recipe = load_recipe("demo", sets)
        from edgetune.tune.checks import planned_steps

        warn_about_warmup(recipe, planned_steps(recipe, examples), examples, warnings.append)
        return " ".join(warnings)

    assert "the whole run warms up, its first step at a learning rate of 0" in said(["train.max_steps=1"])
    assert said(["train.max_steps=1", "train.warmup_ratio=0"]) == ""
    assert said([]) == ""  # the demo: 60 steps, 3 of them warming up
    long = said(["train.max_steps=-1", "train.epochs=1e9"])
    assert "the learning-rate warmup lasts 750,000,000 steps" in long and "early stopping" in long, long
    assert said(["train.max_steps=-1", "train.epochs=1e9", "train.early_stopping_patience=0"]) == ""


def test_a_divergence_names_the_setting_far_from_usual_not_only_the_learning_rate(tmp_path):
    """lora.alpha 1e30 or weight_decay 1e30 diverged at step 1 or 2 with "start again with a lower
    train.lr": the one setting that was fine."""
    from types import SimpleNamespace

    from edgetune.config import load_recipe
    from edgetune.errors import InputError
    from edgetune.tune.callbacks import StopOnNonFinite
    from edgetune.tune.checks import refuse_divergence

    stop = StopOnNonFinite()
    stop.found = (2, "grad_norm", float("inf"))
    trainer = SimpleNamespace(
        callback_handler=SimpleNamespace(callbacks=[stop]), args=SimpleNamespace(bf16=False)
    )
    for sets, named in (
        (["train.lora.alpha=1e6"], "a lower train.lora.alpha (alpha / r scales the update 62500x"),
        (["train.weight_decay=1e30"], "a train.weight_decay below 1 (it was 1e+30"),
        ([], "start again with a lower train.lr (it was 0.001)"),  # the demo's, and usual settings else
    ):
        with pytest.raises(InputError) as diverged:
            refuse_divergence(trainer, load_recipe("demo", sets), tmp_path, main=False)
        assert named in str(diverged.value), str(diverged.value)
