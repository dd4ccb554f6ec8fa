"""ONNX CPU decode speed of edgetune's variants, side by side in one run, with onnxruntime's dynamic
int8 (MatMulInteger) as the configuration we chose not to ship.

    python bench/onnx_variants.py [ONNX_EXPORT_DIR]

Without a directory it uses runs/latest/export/onnx when there is one, else it exports the built-in
SmolLM2-135M-Instruct (fp32, int8, int4) to a temporary directory first.

Every variant decodes the same prompt greedily with its KV cache; rounds alternate between the
variants so machine noise hits them alike. Prints median decode tokens/s and the ratio to fp32,
then the time to first token with the LM head over every prompt position (optimum's graph) and
over the last one only (edgetune's `logits_from` input), and their ratio; then each folder's decode
in onnxruntime-genai (its genai_config.json), the runtime apps on devices use, against onnxruntime
driven by edgetune's own loop, in alternating rounds too (no goal: what a device app will see).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _goals import Goals  # noqa: E402

from edgetune.export.onnx_runtime import OnnxDecoder  # noqa: E402

DECODE_GOALS = {"int4": 1.5, "int8": 1.0}  # x fp32's decode speed (README, Benchmarks)

PROMPT_TOKENS = 96
DECODE_TOKENS = 48
ROUNDS = 3


def dynamic_int8(fp32_dir: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(fp32_dir, out, ignore=shutil.ignore_patterns("model.onnx*"))
    quantize_dynamic(
        str(fp32_dir / "model.onnx"),
        str(out / "model.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )
    return out


def export_builtin(out: Path) -> Path:
    from edgetune.export.onnx_export import export_onnx
    from edgetune.export.settings import OnnxExportConfig
    from edgetune.models import resolve_model

    model = resolve_model("smollm2-135m-instruct")
    export_onnx(model.path, out, ["fp32", "int8", "int4"], OnnxExportConfig())
    return out


def decode_rate(decoder: OnnxDecoder, prompt: list[int]) -> float:
    logits, past = decoder.forward(prompt, None, 0)
    times = []
    n = len(prompt)
    for _ in range(DECODE_TOKENS):
        token = int(np.argmax(logits[-1]))
        started = time.perf_counter()
        logits, past = decoder.forward([token], past, n)
        times.append(time.perf_counter() - started)
        n += 1
    return 1.0 / statistics.median(times)


def prefill_ms(decoder: OnnxDecoder, prompt: list[int], last_only: bool) -> float:
    started = time.perf_counter()
    decoder.forward(prompt, None, 0, last_only=last_only)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = args.export_dir or Path("runs/latest/export/onnx")
        if args.export_dir is None and not (export_dir / "fp32").is_dir():
            export_dir = export_builtin(Path(tmp) / "export")
        variants = {p.name: p for p in sorted(export_dir.glob("*/")) if (p / "model.onnx").is_file()}
        if "fp32" not in variants:
            sys.exit(f"{export_dir}: no fp32 variant; run `edgetune export --to onnx` first")
        variants["int8-dynamic"] = dynamic_int8(variants["fp32"], Path(tmp) / "int8-dynamic")
        decoders = {name: OnnxDecoder(path, threads=args.threads) for name, path in variants.items()}
        prompt = list(np.random.default_rng(0).integers(100, 20000, PROMPT_TOKENS))
        rates: dict[str, list[float]] = {name: [] for name in decoders}
        for decoder in decoders.values():  # warm-up
            decode_rate(decoder, prompt[:16])
        prefill: dict[str, dict[bool, list[float]]] = {name: {False: [], True: []} for name in decoders}
        for _ in range(ROUNDS):
            for name, decoder in decoders.items():
                rates[name].append(decode_rate(decoder, prompt))
                for last_only in (False, True, False, True):
                    prefill[name][last_only].append(prefill_ms(decoder, prompt, last_only))
        del decoders
        genai = genai_lines(variants, [int(t) for t in prompt], args.threads)  # before tmp goes
    base = statistics.median(rates["fp32"])
    print(f"onnxruntime CPU decode, {PROMPT_TOKENS}-token prompt, {DECODE_TOKENS} tokens, {ROUNDS} rounds")
    print(f"{'variant':<14}{'tok/s':>8}{'vs fp32':>9}")
    goals = Goals()
    for name, values in rates.items():
        rate = statistics.median(values)
        goal = DECODE_GOALS.get(name)
        met = goals.at_least(f"{name} / fp32 decode", rate / base, goal) if goal else ""
        print(f"{name:<14}{rate:8.1f}{rate / base:8.2f}x {met}")
    print(f"\ntime to first token, {PROMPT_TOKENS}-token prompt (median of {2 * ROUNDS}), LM head over:")
    print(f"{'variant':<14}{'every':>9}{'last':>9}{'speedup':>9}")
    for name, runs in prefill.items():
        every, last = statistics.median(runs[False]), statistics.median(runs[True])
        met = goals.at_least(f"{name} first token, every / last position", every / last, 1, strictly=True)
        print(f"{name:<14}{every:7.1f}ms{last:7.1f}ms{every / last:8.2f}x {met}")
    print("\n".join(genai))
    return goals.exit_code()


def step_rate(runner, prompt: list[int]) -> float:
    token = int(np.argmax(runner.prefill(prompt)))
    times = []
    for _ in range(DECODE_TOKENS):
        started = time.perf_counter()
        token = int(np.argmax(runner.step(token)))
        times.append(time.perf_counter() - started)
    return 1.0 / statistics.median(times)


def genai_lines(variants: dict[str, Path], prompt: list[int], threads: int | None) -> list[str]:
    from edgetune.bench.runners import GenaiRunner, OnnxRunner, Target

    timed = {n: p for n, p in variants.items() if (p / "genai_config.json").is_file()}
    timed.pop("int8-dynamic", None)  # its config is fp32's, copied beside another graph
    if not timed:
        return ["\nonnxruntime-genai: no folder has a genai_config.json (exported before edgetune wrote one)"]
    runners = {
        (name, runtime): cls(Target(name, "onnx", name, runtime, "cpu", path), threads)
        for name, path in timed.items()
        for runtime, cls in (("onnxruntime", OnnxRunner), (GenaiRunner.GENAI, GenaiRunner))
    }
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for runner in runners.values():  # warm-up
        step_rate(runner, prompt[:16])
    for _ in range(ROUNDS):
        for key, runner in runners.items():
            rates[key].append(step_rate(runner, prompt))
    lines = [
        f"\ndecode in onnxruntime-genai against onnxruntime ({DECODE_TOKENS} tokens, median of {ROUNDS})",
        f"{'variant':<14}{'ort tok/s':>10}{'genai tok/s':>12}{'genai/ort':>10}",
    ]
    for name in timed:
        ort = statistics.median(rates[(name, "onnxruntime")])
        genai = statistics.median(rates[(name, GenaiRunner.GENAI)])
        lines.append(f"{name:<14}{ort:10.1f}{genai:12.1f}{genai / ort:9.2f}x")
    return lines


if __name__ == "__main__":
    sys.exit(main())
