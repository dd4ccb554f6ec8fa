"""The recipe's bench section: what bench measures, and the gates its report is held to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from edgetune.export.settings import GGUF_QUANTS, ONNX_QUANTS
from edgetune.typed import at_least, not_empty


@dataclass
class GatesConfig:
    min_retention: dict[str, float] = field(default_factory=dict)  # quant name (or "*") -> minimum
    max_kl: float | None = None
    min_decode_tok_s: float | None = None
    max_size_mb: float | None = None
    # how a target's retention meets its minimum: "measured", the point figure; "significant", fail
    # only when the whole confidence interval lies below (the shortfall is more than this sample's
    # noise); "proven", pass only when the whole interval lies at or above
    retention_evidence: Literal["measured", "significant", "proven"] = "measured"
    # the same three readings of max_kl against the interval of the mean KL ("significant": fail only
    # when the whole interval lies above max_kl; "proven": pass only when it lies at or below)
    kl_evidence: Literal["measured", "significant", "proven"] = "measured"
    confidence: float = 0.95  # the interval's level (a paired bootstrap over the held-out examples)
    # the tuned model's own worth, which no file's retention of it shows (every exported file fails
    # with it): a task score every file must reach; the tuned model beating zero- and few-shot
    # prompting of its base (bench.baselines); general perplexity at most this times the base's
    # (bench.forgetting: catastrophic forgetting)
    min_metric: float | None = None
    beats_prompting: bool = False
    # the three readings of beats_prompting: "measured", the tuned model's point score above each
    # baseline's; "significant", fail only where a prompt does better beyond the sample's noise;
    # "proven", pass only where every gain is shown (its interval above 0, the sign test agreeing)
    prompting_evidence: Literal["measured", "significant", "proven"] = "measured"
    max_perplexity_ratio: float | None = None

    def validate(self) -> list[str]:
        problems = []
        if self.min_metric is not None and not 0 < self.min_metric <= 1:
            problems.append(f"bench.gates.min_metric: a task score in (0, 1], got {self.min_metric}")
        if self.max_perplexity_ratio is not None and not self.max_perplexity_ratio >= 1:
            problems.append(
                f"bench.gates.max_perplexity_ratio: at least 1 (the base's own), got {self.max_perplexity_ratio}"
            )
        if not 0.5 <= self.confidence < 1:
            problems.append(f"bench.gates.confidence: must be in [0.5, 1), got {self.confidence}")
        known = ("*", *GGUF_QUANTS, *ONNX_QUANTS)
        spelled: dict[str, str] = {}
        for quant, minimum in self.min_retention.items():
            if quant.lower() in spelled:  # gates match types whatever their case: which one would win?
                problems.append(
                    f"bench.gates.min_retention.{quant}: {spelled[quant.lower()]} is given too "
                    "(a type's case does not matter); keep one"
                )
            spelled.setdefault(quant.lower(), quant)
            if quant.lower() not in known:  # an unknown key would gate nothing, and the gate would pass
                problems.append(
                    f"bench.gates.min_retention.{quant}: names no export quant; use one of {', '.join(known)}"
                )
            if not 0 <= minimum <= 1:  # 0: only that retention is known
                problems.append(
                    f"bench.gates.min_retention.{quant}: a fraction of the reference's score "
                    f"(like 0.98), got {minimum}"
                )
        for name in ("max_kl", "max_size_mb", "min_decode_tok_s"):
            limit = getattr(self, name)
            if limit is not None and not limit > 0:
                problems.append(f"bench.gates.{name}: must be > 0 (or null for no gate), got {limit}")
        return problems


@dataclass
class BenchConfig:
    metric: Literal["exact", "normalized", "json_fields", "rouge_l", "choice"] = "exact"
    devices: list[Literal["cpu", "cuda"]] = field(default_factory=lambda: ["cpu"])
    max_examples: int = 100
    max_new_tokens: int = 128
    few_shot_k: int = 3  # 0: no few-shot baseline
    # a second few-shot baseline: before each test prompt the k training rows most like it (BM25),
    # the prompt a retrieval step would build; often far stronger than the same k shots for all
    few_shot_similar: bool = True
    baseline_examples: int | None = None  # held-out examples for the prompting baselines (None: all)
    kl_examples: int = 16  # held-out examples whose full distributions are compared with the reference
    baselines: bool = True  # zero-shot and few-shot prompting of the base model
    adapter_target: bool = True  # also run base + unmerged adapter in torch
    forgetting: bool = True
    forgetting_kl_warn: float = 0.5
    forgetting_ppl_ratio_warn: float = 1.25
    latency: bool = True
    latency_decode_tokens: int = 64
    latency_repeats: int = 3
    threads: int | None = None  # default: OMP_NUM_THREADS, else every core this process may use
    gates: GatesConfig = field(default_factory=GatesConfig)

    def validate(self) -> list[str]:
        counts = ("max_examples", "max_new_tokens", "baseline_examples", "latency_decode_tokens")
        problems = not_empty("bench", self, "devices") + at_least("bench", self, 1, *counts)
        problems += at_least("bench", self, 1, "latency_repeats", "threads")
        problems += at_least("bench", self, 0, "few_shot_k", "kl_examples")
        for name in ("forgetting_kl_warn", "forgetting_ppl_ratio_warn"):
            if not getattr(self, name) > 0:
                problems.append(f"bench.{name}: must be > 0, got {getattr(self, name)}")
        if self.gates.beats_prompting and not self.baselines:
            problems.append(
                "bench.gates.beats_prompting: needs bench.baselines (prompting is not measured); "
                "bench.gates.beats_prompting=false goes without"
            )
        if self.gates.max_perplexity_ratio is not None and not self.forgetting:
            problems.append(
                "bench.gates.max_perplexity_ratio: needs bench.forgetting (forgetting is not measured); "
                "bench.gates.max_perplexity_ratio=null goes without"
            )
        return problems + self.gates.validate()

    def unmeasured_gates(self) -> list[str]:
        """Gates this bench cannot pass: on what it does not measure, or `proven` on a sample too
        small to prove them. Each failed only at the end of `edgetune run`, after the whole pipeline;
        a new run is refused, a run saved with one still loads (bench, export --check, chat)."""
        problems = self._unprovable()
        if self.gates.max_kl is not None and self.kl_examples == 0:
            problems.append(
                "bench.gates.max_kl: needs bench.kl_examples of at least 1 (KL is not measured at 0); "
                "bench.gates.max_kl=null goes without"
            )
        if self.gates.min_decode_tok_s is not None and not self.latency:
            problems.append(
                "bench.gates.min_decode_tok_s: needs bench.latency (decode speed is not measured); "
                "bench.gates.min_decode_tok_s=null goes without"
            )
        return problems

    def _unprovable(self) -> list[str]:
        """`proven` gates no sample of this size can pass: n examples cannot show a retention above
        1 - 3/n (the rule of three: bench.confidence caps the interval there), and under 10 examples
        there is no interval. A 0.99 gate on the demo's 90 examples had failed after the whole run."""
        from edgetune.bench.confidence import MIN_EXAMPLES

        g, problems = self.gates, []
        if g.kl_evidence == "proven" and g.max_kl is not None and self.kl_examples < MIN_EXAMPLES:
            problems.append(
                f"bench.gates.kl_evidence: proven needs bench.kl_examples of at least {MIN_EXAMPLES} "
                f"for an interval, got {self.kl_examples}"
            )
        if g.retention_evidence != "proven" or self.max_examples < 1:
            return problems
        ceiling = max(0.0, 1 - 3 / self.max_examples)
        for quant, minimum in g.min_retention.items():
            if self.max_examples < MIN_EXAMPLES or minimum > ceiling:
                need = max(MIN_EXAMPLES, math.ceil(3 / (1 - minimum))) if minimum < 1 else None
                problems.append(
                    f"bench.gates.min_retention.{quant}: {minimum:g} cannot be proven on bench.max_examples "
                    f"{self.max_examples} (even a flawless file shows at most {ceiling:.3f}); "
                    + (f"at least {need} examples prove it, " if need else "")
                    + "or bench.gates.retention_evidence: significant"
                )
        return problems
