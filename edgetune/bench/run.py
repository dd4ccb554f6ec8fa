"""`edgetune bench`: every target of a run on the same held-out prompts -> bench/report.{json,md,png}."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgetune.bench.accuracy import (
    Accuracy,
    build_cases,
    context_for,
    coverage_warnings,
    evaluate,
    example_id,
    refuse_unscorable,
)
from edgetune.bench.confidence import attach_intervals
from edgetune.bench.gates import apply_gates, attach_export_parity, refuse_blind_pick
from edgetune.bench.prompting import prompting_baselines
from edgetune.bench.reference import ReferenceLogprobs, remove_stale_spills
from edgetune.bench.report import write_report
from edgetune.bench.runners import Target, open_runner
from edgetune.bench.targets import check_devices, discover_targets, refuse_another_vocabulary
from edgetune.console import StageProgress
from edgetune.cores import default_threads, more_than_the_cores
from edgetune.data.render import reply_text
from edgetune.errors import InputError, ModelError, require
from edgetune.export.parity_record import checked_digest
from edgetune.merged_record import rendered
from edgetune.process_state import kept_process_state
from edgetune.run_recipe import load_run_recipe
from edgetune.rundir import (
    RECIPE_FILE,
    read_manifest,
    refuse_unwritable,
    resolve_run_dir,
    run_lock,
    update_manifest,
)


def measure_each(targets: list[Target], measure, skipped: list[dict]) -> list[tuple[Target, Any]]:
    """measure(target) for each target. A CUDA target that fails (a runtime whose CUDA path cannot
    run this file on this machine: a missing kernel, library or driver feature) is listed in
    `skipped` with the error and the rest of the report stands; on the CPU a failure stops bench."""
    done = []
    for target in targets:
        try:
            done.append((target, measure(target)))
        except Exception as e:
            if target.device != "cuda":
                raise
            reason = f"failed on this machine: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            skipped.append({"name": target.name, "device": "cuda", "reason": reason})
    return done


def _target_entry(target: Target, acc: Accuracy, reference_value: float | None) -> dict[str, Any]:
    retention = None
    if acc.value is not None and reference_value:
        retention = acc.value / reference_value
    return {
        "name": target.name,
        "format": target.format,
        "quant": target.quant,
        "runtime": target.runtime,
        "device": target.device,
        "path": str(target.path),
        # the bytes measured: a file exported again since fails the gates until it is benched
        "sha256": checked_digest(target.path) if target.format in ("gguf", "onnx") else None,
        "size_bytes": target.size_bytes,
        "task_metric": {"name": acc.metric, "value": acc.value},
        "retention": retention,
        "retention_interval": None,  # attach_intervals, from the scores below
        "retention_confidence": None,
        "ppl": acc.ppl,
        "kld_mean": acc.kld_mean,
        "kl_interval": None,  # attach_intervals, from kl_scores
        "kl_scores": acc.kl_scores,  # per example: the mean over its positions of KL(reference || target)
        "top1_agreement": acc.top1_agreement,
        "eos_rate": acc.eos_rate,
        "mean_output_tokens": acc.mean_output_tokens,
        "examples": acc.examples,
        "sample_outputs": acc.outputs[:3],
        "scores": acc.scores,  # per held-out example, in order: the interval's input
        "accuracy_wall_s": acc.wall_s,
        # the latency step's, in the target's own process; null where it did not run or failed
        **dict.fromkeys(("load_s", "ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb")),
    }


def bench(
    run_dir: Path | str | None = None, devices: list[str] | None = None, console=None, pick: bool = False
) -> dict[str, Any]:
    """`pick`: the report is for --pick, which the recipe's gates must allow before anything is measured."""
    from edgetune.models import ResolvedModel, load_tokenizer

    started = time.time()
    run_dir = resolve_run_dir(run_dir)
    with run_lock(run_dir, "bench"), kept_process_state():  # TorchRunner's threads: the caller's after
        if not (run_dir / RECIPE_FILE).is_file():
            raise InputError(f"{run_dir}: not a run directory (no {RECIPE_FILE})")
        recipe = load_run_recipe(run_dir)
        refuse_unwritable(run_dir / "bench", "bench would measure, then fail to save its report")
        remove_stale_spills(run_dir)
        cfg = recipe.bench
        if pick:
            refuse_blind_pick(cfg.gates)
        check_devices(devices or cfg.devices, "--device" if devices else "bench.devices")
        devices = list(dict.fromkeys(devices or cfg.devices))  # cpu,cpu: each measured once
        manifest = read_manifest(run_dir)  # a corrupt one fails now, not after the measurements
        skipped: list[dict] = []
        targets = _checked_targets(run_dir, recipe, devices, manifest, skipped, console)
        merged = run_dir / "merged"
        tokenizer = load_tokenizer(ResolvedModel(str(merged), merged, "local"))
        prepared, split, cases, coverage = _held_out_cases(run_dir, recipe, tokenizer, console)
        renderer = prepared.renderer
        eos_ids = sorted(renderer.stop_ids)  # the merged model's: the renderer uses its tokenizer
        threads = cfg.threads or default_threads()
        setting = "bench.threads" if cfg.threads else "OMP_NUM_THREADS"  # where the number came from
        if console is not None and (said := more_than_the_cores(setting, threads)):
            console.print(f"[yellow]warning:[/] {said}, and the latency rows measure that contention")
        progress = StageProgress(console)

        def decode(ids: list[int]) -> str:
            return reply_text(tokenizer, ids)

        def run_accuracy(
            target: Target, reference=None, target_cases=None, perplexity=True, runner=None, keep=None
        ):
            target_cases = target_cases if target_cases is not None else cases
            # llama.cpp holds a context of n_ctx tokens and fails past it: room for the longest case
            room = {"n_ctx": context_for(target_cases, cfg.max_new_tokens)} if target.format == "gguf" else {}
            runner = runner or open_runner(target, threads, **room)
            with progress.stage(f"accuracy {target.name}", len(target_cases)) as tick:
                acc = evaluate(
                    runner,
                    target_cases,
                    cfg.metric,
                    decode,
                    eos_ids,
                    cfg.max_new_tokens,
                    reference,
                    tick,
                    perplexity,
                    keep,
                )
            return acc, runner

        reference_target = targets[0]
        # large (positions x vocab each): past 1 GiB on disk in the run dir, and freed before latency
        with ReferenceLogprobs(run_dir) as reference:

            def keep(i: int, logprobs) -> None:  # the first kl_examples, as the reference computes them
                if i < cfg.kl_examples:
                    reference.append(logprobs)

            ref_acc, ref_runner = run_accuracy(reference_target, keep=keep)
            ref_acc.kld_mean, ref_acc.top1_agreement = 0.0, 1.0
            entries = [_target_entry(reference_target, ref_acc, ref_acc.value)]
            measured = measure_each(
                targets[1:], lambda t: _target_entry(t, run_accuracy(t, reference)[0], ref_acc.value), skipped
            )
        targets = [reference_target, *(t for t, _ in measured)]
        entries += [entry for _, entry in measured]

        report: dict[str, Any] = {
            "run": run_dir.name,
            "reference": {
                "name": reference_target.name,
                "metric": cfg.metric,
                "value": ref_acc.value,
                "examples": len(cases),
                "split": split,  # "valid" when there is no test split: the one that chose the checkpoint
                # which held-out example each score is (in `scores` order): what --compare pairs on
                "example_ids": [example_id(c.example) for c in cases if c.answered],
                # which example each target's kl_scores entry is: the first kl_examples cases
                "kl_example_ids": [example_id(c.example) for c in cases[: cfg.kl_examples]],
            },
            "targets": entries,
            "baselines": {},
            "forgetting": {},
            "skipped_targets": skipped,
            "warnings": coverage,  # what the score leaves out (coverage_warnings)
        }
        base_runner = None
        if cfg.baselines or cfg.forgetting:
            from edgetune.models import resolve_model

            base = Target(
                "torch/base",
                "torch",
                "base",
                "torch",
                "cpu",
                resolve_model(
                    recipe.model.base,
                    recipe.model.revision,
                    quiet=True,
                    allow_pickle=recipe.model.allow_pickle,
                ).path,
            )
            base_runner = open_runner(base, threads)
        if cfg.baselines:

            def warn(said: str) -> None:  # in the report, with what its score leaves out, and said
                report["warnings"].append(said)
                if console is not None:
                    console.print(f"[yellow]warning:[/] {escape(said)}", soft_wrap=True)

            report["baselines"] = prompting_baselines(
                base, base_runner, prepared, cases, cfg, run_accuracy, ref_acc, recipe.data.split_seed, warn
            )
            compared = [b for b in report["baselines"].values() if b["tuned_on_these"] is not None]
            report["tuning_beats_prompting"] = (  # None: no answer to compare (text rows)
                all(
                    b["tuned_on_these"] is not None
                    and b["tuned_on_these"] > (b["task_metric"]["value"] or 0.0)
                    for b in report["baselines"].values()
                )
                if compared
                else None
            )
        if cfg.forgetting:
            from edgetune.bench.forgetting import measure_forgetting

            with progress.stage("forgetting probes", 1) as tick:
                f = measure_forgetting(base_runner, ref_runner, renderer, eos_ids)
                tick()
            report["forgetting"] = _forgetting_entry(f, cfg)
        del ref_runner, base_runner
        report["machine"], report["settings"] = _latency(targets, entries, cases, cfg, threads, progress)
        report["settings"].update(
            {"max_new_tokens": cfg.max_new_tokens, "kl_examples": min(cfg.kl_examples, len(cases))}
        )
        attach_intervals(report, cfg.gates.confidence)
        attach_export_parity(report, read_manifest(run_dir), run_dir)
        apply_gates(report, cfg.gates)
        report["wall_s"] = round(time.time() - started, 1)
        paths = write_report(report, run_dir / "bench")
        update_manifest(
            run_dir,
            stages={
                "bench": {
                    "status": "done",
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "wall_s": report["wall_s"],
                    "report": str(paths["json"].relative_to(run_dir)),
                }
            },
        )
        report["paths"] = {k: str(v) for k, v in paths.items()}
        return report


def _checked_targets(run_dir: Path, recipe, devices, manifest, skipped: list[dict], console) -> list[Target]:
    """The run's targets on `devices`, each file checked and each runtime there: a missing runtime
    or a damaged file is named now, not after the minutes the torch targets take."""
    from edgetune.export.layout import missing_exports
    from edgetune.export.onnx_runtime import check_onnx_dir
    from edgetune.export.parity_record import unchecked_exports
    from edgetune.models import embedding_rows
    from edgetune.validate import check_gguf

    targets = discover_targets(run_dir, devices, recipe, skipped)
    formats = {t.format for t in targets}
    for module, fmt in (("llama_cpp", "gguf"), ("onnxruntime", "onnx")):
        if fmt in formats:
            require(module, f"bench's {fmt.upper()} targets")
    require("matplotlib", "bench's report.png")
    for gguf in sorted({t.path for t in targets if t.format == "gguf"}):
        check_gguf(gguf)
    for onnx in sorted({t.path for t in targets if t.format == "onnx"}):
        check_onnx_dir(onnx)
    if (rows := embedding_rows(run_dir / "merged")) is not None:
        files = sorted({(t.format, t.path) for t in targets if t.format in ("gguf", "onnx")})
        refuse_another_vocabulary(files, rows)
    exported = sorted({(t.format, t.quant, t.path) for t in targets if t.format in ("gguf", "onnx")})
    for problem in unchecked_exports(manifest, exported) if console is not None else []:
        console.print(f"[yellow]warning:[/] {escape(problem)}", soft_wrap=True)
    if console is not None and (missing := missing_exports(run_dir, recipe)):
        console.print(
            f"[yellow]warning:[/] the recipe exports {', '.join(missing)}, which this run does not have "
            f"(an export interrupted, or none since the recipe changed): `edgetune export {escape(str(run_dir))}` "
            "first, or they go unmeasured",
            soft_wrap=True,
        )
    return targets


def _held_out_cases(run_dir: Path, recipe, tokenizer, console):
    """(prepared data, the split benched, its cases, what the score leaves out): the test split,
    else the validation split, up to bench.max_examples, rendered with the merged tokenizer."""
    from edgetune.data.prepare import prepare

    cfg = recipe.bench
    # bench renders no training row; a template edited in merged/ since the merge is said as that
    prepared = rendered(run_dir, console, lambda: prepare(recipe.data, tokenizer, encode=("valid", "test")))
    held_out = prepared.splits.held_out()
    if not held_out:
        raise InputError(f"{run_dir}: the recipe's data has no test or validation split to bench on")
    split = "test" if prepared.splits.test else "valid"
    if split == "valid" and console is not None:  # it chose the best checkpoint: scores lean high
        console.print(
            "[yellow]warning:[/] no test split: benching on the validation split, which picked the "
            "checkpoint (set data.test_fraction or data.test for an unbiased score)"
        )
    examples = held_out[: cfg.max_examples]
    cases = build_cases(prepared.renderer, examples)
    if not cases:
        raise InputError(
            f"{run_dir}: every held-out example bench would use is longer than data.max_seq_len "
            f"({recipe.data.max_seq_len} tokens); raise it, or hold out shorter examples"
        )
    refuse_unscorable(cfg.metric, [c.example for c in cases])
    coverage = coverage_warnings(prepared.renderer, examples, cases, cfg.max_new_tokens)
    for warning in coverage if console is not None else ():
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if console is not None and not any(c.answered for c in cases):
        console.print(
            f"[yellow]warning:[/] the held-out rows are text, with no answer to score: bench.metric "
            f"{cfg.metric} scores nothing, and only KL, perplexity and latency are measured"
        )
    return prepared, split, cases, coverage


def _forgetting_entry(f, cfg) -> dict[str, Any]:
    """report.json's forgetting section: the measurements, the thresholds, the warnings they give."""
    warnings = []
    if f.kl_base_tuned > cfg.forgetting_kl_warn:
        warnings.append(
            f"KL(base || tuned) {f.kl_base_tuned:.3f} on general prompts > {cfg.forgetting_kl_warn:g}"
        )
    if f.ppl_ratio > cfg.forgetting_ppl_ratio_warn:
        warnings.append(f"general perplexity rose {f.ppl_ratio:.2f}x > {cfg.forgetting_ppl_ratio_warn:g}x")
    return {
        "kl_base_tuned": f.kl_base_tuned,
        "ppl_base": f.ppl_base,
        "ppl_tuned": f.ppl_tuned,
        "ppl_ratio": f.ppl_ratio,
        "prompts": f.prompts,
        "passages": f.passages,
        "kl_warn": cfg.forgetting_kl_warn,
        "ppl_ratio_warn": cfg.forgetting_ppl_ratio_warn,
        "warnings": warnings,
    }


def _latency(targets, entries, cases, cfg, threads, progress) -> tuple[dict[str, Any], dict[str, Any]]:
    from edgetune.bench.latency import measure, memory_bandwidth

    prompt = next((c.prompt_ids for c in cases if c.prompt_ids), cases[0].full_ids[:64])
    settings = {
        "latency": cfg.latency,
        "prompt_tokens": len(prompt),
        "decode_tokens": cfg.latency_decode_tokens,
        "repeats": cfg.latency_repeats,
    }
    if not cfg.latency:  # nothing decodes: no bandwidth to hold it against either
        return {"threads": threads, "bandwidth_gb_s": None}, settings
    bandwidth = memory_bandwidth(threads)
    timing = (cfg.latency_decode_tokens, cfg.latency_repeats)
    machine = {"threads": threads, "bandwidth_gb_s": round(bandwidth, 2)}
    with progress.stage("latency (one process each)", len(targets)) as tick:
        for target, entry in zip(targets, entries):
            failed: list[dict] = []
            latency = measure_each(
                [target],
                lambda t: measure(t, prompt, *timing, threads),
                failed,
            )
            if failed:  # a CUDA target whose timing process failed: its accuracy row stays
                entry["latency_error"] = failed[0]["reason"]
                tick()
                continue
            entry.update(latency[0][1])
            entry["threads"] = threads
            # decoding reads every weight once per token (upper bound: the embedding table is only indexed)
            entry["bytes_per_token"] = target.size_bytes
            entry["bandwidth_gb_s"] = round(target.size_bytes * entry["decode_tok_s"] / 1e9, 3)
            # the measured bandwidth is host RAM's: a share for GPU targets would compare unlike things
            entry["bandwidth_share"] = (
                round(entry["bandwidth_gb_s"] / bandwidth, 3) if target.device == "cpu" else None
            )
            entry.update(_genai_latency(target, lambda t: measure(t, prompt, *timing, threads)))
            tick()
    return machine, settings


def _genai_latency(target: Target, measure) -> dict[str, Any]:
    """An ONNX folder on the CPU timed in onnxruntime-genai too, the runtime apps on devices run it
    in (its logits are onnxruntime's: parity checks that), in a process of its own: `genai` in
    the target's entry, or `genai_error` where it fails. Nothing where the folder has no
    genai_config.json or the runtime is not installed (its CUDA build is another package)."""
    import importlib.util

    from edgetune.bench.runners import GenaiRunner
    from edgetune.export.onnx_genai import GENAI_CONFIG

    wanted = target.format == "onnx" and target.device == "cpu" and (target.path / GENAI_CONFIG).is_file()
    if not wanted or importlib.util.find_spec("onnxruntime_genai") is None:
        return {}
    try:
        got = measure(replace(target, runtime=GenaiRunner.GENAI))
    except ModelError as e:
        return {"genai_error": str(e)}
    return {
        "genai": {k: got[k] for k in ("load_s", "ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb")}
    }
