""" "Prompt first" baselines: would a prompt on the base model have done the job?

Zero-shot: the base model on exactly the prompts the tuned model gets. Few-shot: the first k
training examples put in front of each test prompt as earlier turns of the same conversation (or
as plain prompt+answer blocks for models without a chat template), so the report can weigh the
tuned model's gain against what few-shot prompting costs in tokens on every request.
"""

from __future__ import annotations

from dataclasses import replace

from edgetune.bench.accuracy import Case, reference_answer


def few_shot_cases(renderer, shots, cases: list[Case]) -> list[Case]:
    """`cases` with the shots' turns prepended to every prompt (each case carries its example: a
    pairing by position would shift once build_cases has dropped one)."""
    out = []
    for case in cases:
        if case.reference is None or not case.prompt_ids:
            continue
        ex = case.example
        if renderer.uses_chat(ex):
            messages = renderer.conversation(ex)
            head = messages[:1] if messages[0]["role"] == "system" else []
            body = messages[len(head) :]
            last = max(i for i, m in enumerate(body) if m["role"] == "assistant")
            turns = [m for shot in shots for m in shot.as_messages() if m["role"] != "system"]
            text = renderer.chat_text(head + turns + body[:last], add_generation_prompt=True)
        else:
            blocks = [renderer.prompt_text(s) + (reference_answer(s) or "") for s in shots]
            text = "\n\n".join([*blocks, renderer.prompt_text(ex)])
        out.append(replace(case, prompt_ids=renderer.ids_for_text(text)))
    return out
