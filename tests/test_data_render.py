import pytest
from conftest import CHATML, CORPUS, build_tokenizer

from edgetune.data.render import FALLBACK_CHAT_TEMPLATE, IGNORE, Renderer
from edgetune.data.rows import Example


def msgs(*turns):
    return Example("messages", messages=tuple(turns), source="t.jsonl:1")


def supervised_text(tok, enc):
    return tok.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE])


def test_only_assistant_turns_carry_loss_and_eos_is_supervised(tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id  # the SmolLM2 situation
    r = Renderer(tiny_tokenizer)
    ex = msgs(("system", "Be brief."), ("user", "Where is Paris?"), ("assistant", "In France."))
    enc = r.encode(ex)
    assert enc.dropped is None
    assert supervised_text(tiny_tokenizer, enc) == "In France.<|im_end|>\n"
    assert tiny_tokenizer.eos_token_id in [
        t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE
    ]
    assert enc.labels[0] == IGNORE


def test_every_assistant_turn_of_a_multi_turn_chat_is_supervised(tiny_tokenizer):
    r = Renderer(tiny_tokenizer)
    ex = msgs(("user", "one"), ("assistant", "first answer"), ("user", "two"), ("assistant", "second answer"))
    assert (
        supervised_text(tiny_tokenizer, r.encode(ex)) == "first answer<|im_end|>\nsecond answer<|im_end|>\n"
    )


def test_training_ids_begin_with_the_inference_prompt_ids(tiny_tokenizer, base_tokenizer):
    ex = msgs(("user", "What is the capital of France?"), ("assistant", "Paris"))
    for tok in (tiny_tokenizer, base_tokenizer):
        r = Renderer(tok)
        prompt_ids = r.ids_for_text(r.prompt_text(ex))
        enc = r.encode(ex)
        assert enc.input_ids[: len(prompt_ids)] == prompt_ids
        assert all(label == IGNORE for label in enc.labels[: len(prompt_ids)])
        assert enc.labels[len(prompt_ids)] != IGNORE


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    from test_gguf import llama_sentencepiece_tokenizer, train_sentencepiece

    folder = tmp_path_factory.mktemp("spm")
    train_sentencepiece(folder / "plain", pad_id=0, eos_id=1, bos_id=2, unk_id=3)
    tok = llama_sentencepiece_tokenizer(folder)
    tok.chat_template = build_tokenizer().chat_template
    return tok


@pytest.mark.parametrize("kind", ["byte-level", "trimmed-offsets", "sentencepiece"])
def test_an_answer_whose_first_token_would_start_in_the_prompt_is_trained_whole(
    kind, sentencepiece_tokenizer
):
    """A plain prompt ending "Answer: " and a reply opening with a blank line or an indent: one
    token of the whole text reaches over the boundary. Inference is given the prompt's own tokens,
    so training cuts there: the ids before the answer are the inference prompt's, and every
    character of the answer carries loss (before, "Paris" trained nothing but the EOS)."""
    whitespace = [
        "\n\n\nthe router\n  the link\n\n  indented"
    ] * 20  # merges "ĊĊ", "ĊĠ" as real vocabularies have
    tok = (
        build_tokenizer(add_bos=True, corpus=CORPUS + whitespace)
        if kind != "sentencepiece"
        else sentencepiece_tokenizer
    )
    if kind == "trimmed-offsets":  # offsets that leave out the space: " the" is reported at "t"
        from tokenizers import processors

        backend = tok.backend_tokenizer
        backend.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=True),
                *([backend.post_processor] if backend.post_processor else []),
            ]
        )
        probe = tok("a the", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        assert probe[-1][0] == 2, probe  # the space is trimmed away
    eos = tok.eos_token
    cases = [
        (
            "plain",
            Example(
                "prompt_completion", prompt="Q: the router?\nAnswer: ", completion="the link", source="x:1"
            ),
        ),
        ("chat", msgs(("user", "show the config"), ("assistant", "\n\nthe router link"))),
        ("chat", msgs(("user", "indent it"), ("assistant", "  the link"))),
    ]
    straddled = []
    for template, ex in cases:
        r = Renderer(tok, template=template)
        text, spans = r.spans(ex)
        whole = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        straddled.append(any(a < spans[0][0] < e for a, e in whole["offset_mapping"]))
        enc = r.encode(ex)
        prompt_ids = r.ids_for_text(r.prompt_text(ex))
        assert enc.input_ids[: len(prompt_ids)] == prompt_ids, (kind, ex)
        assert all(label == IGNORE for label in enc.labels[: len(prompt_ids)])
        answer = ex.completion or ex.messages[-1][1]
        trained = supervised_text(tok, enc)
        assert trained.startswith(answer) or (kind == "sentencepiece" and trained.startswith(answer.lstrip()))
        assert trained.endswith(eos) if template == "plain" else "<|im_end|>" in trained
        assert tok.decode(enc.input_ids) == tok.decode(r.ids_for_text(text))  # the same text
    if kind != "trimmed-offsets":  # the cases test something (trimmed offsets hide it: the point)
        assert straddled == [True, True, True] if kind == "byte-level" else straddled[0]
    two = msgs(("user", "one"), ("assistant", "  the link"), ("user", "two"), ("assistant", "\n\nthe router"))
    enc = Renderer(tok).encode(two)
    assert supervised_text(tok, enc).replace("\n", "").count("the") == 2  # both replies learnt
    prompt_ids = Renderer(tok).ids_for_text(Renderer(tok).prompt_text(two))  # what bench and chat send
    assert enc.input_ids[: len(prompt_ids)] == prompt_ids and enc.labels[len(prompt_ids)] != IGNORE


def test_base_model_gets_the_fallback_template_and_exactly_one_bos():
    tok = build_tokenizer(chat_template=None, add_bos=True)
    r = Renderer(tok)
    assert r.template_source == "fallback" and tok.chat_template == FALLBACK_CHAT_TEMPLATE
    enc = r.encode(msgs(("user", "hi"), ("assistant", "hello")))
    assert enc.input_ids[0] == tok.bos_token_id
    assert enc.input_ids.count(tok.bos_token_id) == 1
    assert supervised_text(tok, enc) == "hello<|im_end|>\n\n"


def test_prompt_completion_uses_chat_template_or_plain_concatenation(tiny_tokenizer):
    ex = Example("prompt_completion", prompt="Q: 2+2?\nA:", completion=" 4", source="x:1")
    chat = Renderer(tiny_tokenizer, template="auto")
    assert "<|im_start|>assistant" in chat.spans(ex)[0]
    plain = Renderer(tiny_tokenizer, template="plain")
    text, spans = plain.spans(ex)
    assert text == "Q: 2+2?\nA: 4<|im_end|>"
    assert supervised_text(tiny_tokenizer, plain.encode(ex)) == " 4<|im_end|>"


def test_text_rows_are_supervised_everywhere_and_end_with_eos(tiny_tokenizer):
    enc = Renderer(tiny_tokenizer).encode(Example("text", text="battery health low", source="x:1"))
    # the first token has nothing before it to be predicted from: a label there only inflated the
    # count the loss is divided by (transformers counts labels, the shifted loss has one fewer)
    assert enc.labels[0] == IGNORE and all(label != IGNORE for label in enc.labels[1:])
    assert enc.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_system_prompt_added_only_where_missing(tiny_tokenizer):
    r = Renderer(tiny_tokenizer, system_prompt="SYS")
    assert "<|im_start|>system\nSYS" in r.spans(msgs(("user", "a"), ("assistant", "b")))[0]
    text = r.spans(msgs(("system", "own"), ("user", "a"), ("assistant", "b")))[0]
    assert "SYS" not in text and "own" in text


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_long_examples_are_dropped_or_truncated_never_silently(tiny_tokenizer, policy):
    r = Renderer(tiny_tokenizer, max_seq_len=24, truncation=policy)
    short = msgs(("user", "hi"), ("assistant", "ok"))
    long_answer = msgs(("user", "hi"), ("assistant", "router battery " * 20))
    long_prompt = msgs(("user", "router battery " * 20), ("assistant", "ok"))
    assert r.encode(short).dropped is None
    enc = r.encode(long_answer)
    assert enc.length > 24
    if policy == "drop":
        assert "longer than data.max_seq_len" in enc.dropped
    else:
        assert enc.dropped is None and enc.truncated and len(enc.input_ids) == 24
    assert r.encode(long_prompt).dropped  # nothing left to learn from in either policy


def test_slow_tokenizers_are_refused():
    from edgetune.errors import ModelError

    class Slow:
        is_fast = False

    with pytest.raises(ModelError, match="fast"):
        Renderer(Slow())


def test_a_token_over_the_boundary_that_cannot_be_cut_still_carries_the_answers_loss(monkeypatch):
    """A tokenizer no cut decodes back to the text (one that puts "▁" before every input): the
    token holding the prompt's last space and the answer's first word is trained on, not dropped."""
    tok = build_tokenizer(add_bos=True)
    monkeypatch.setattr(Renderer, "_cut_at", lambda *a: None)
    ex = Example("prompt_completion", prompt="Q: the router?\nAnswer: ", completion="the link", source="x:1")
    enc = Renderer(tok, template="plain").encode(ex)
    assert supervised_text(tok, enc) == " the link" + tok.eos_token


def test_replies_are_read_as_written_even_where_the_tokenizer_cleans_up_spaces():
    """A tokenizer shipped with clean_up_tokenization_spaces on rewrites "Paris , France" as
    "Paris, France": bench would score, and chat would keep in its history, text never generated."""
    from edgetune.data.render import reply_text

    tok = build_tokenizer()
    tok.clean_up_tokenization_spaces = True
    ids = tok("the router , the link .", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "the router, the link."  # what the clean-up does
    assert reply_text(tok, ids + [tok.eos_token_id]) == "the router , the link ."


@pytest.mark.parametrize(
    "template",
    [
        # ChatML that wants a system turn first (raises for a conversation without one)
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}" + CHATML,
        # a template that leaves the last reply open: its turn end shows once the reply is history
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}",
        # a newline before the turn's end token
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    ],
    ids=["system first", "last reply open", "newline before the end"],
)
def test_the_templates_turn_end_is_a_stop_id_however_the_template_wants_its_turns(template):
    """The turn end the labels teach (<|im_end|>) is a stop id, where the tokenizer's EOS is another
    token: else generation runs on past every reply."""
    from pathlib import Path

    from edgetune.data.render import stop_ids, template_turn_end

    tokenizer = build_tokenizer(chat_template=template, eos_token="<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert template_turn_end(tokenizer) == im_end
    assert set(stop_ids(Path("/nonexistent"), tokenizer)) == {im_end, tokenizer.eos_token_id}


@pytest.mark.parametrize(
    "template, end",
    [
        # Alpaca's layout, writing nothing after a reply: the model must still learn to stop
        (
            "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
            "{% else %}### Response:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}### Response:\n{% endif %}",
            "<|endoftext|>",
        ),
        # a reply left open when it is the last: the turn end its history shows is what it learns
        (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
            "{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}",
            "<|im_end|>",
        ),
    ],
    ids=["alpaca", "last reply open"],
)
def test_a_rows_last_reply_ends_in_a_stop_token_where_the_template_writes_none(template, end):
    tokenizer = build_tokenizer(chat_template=template, eos_token="<|endoftext|>")
    r = Renderer(tokenizer)
    chat = msgs(
        ("user", "Where is Paris?"),
        ("assistant", "In France."),
        ("user", "And Rome?"),
        ("assistant", "Italy."),
    )
    enc = r.encode(chat)
    trained = supervised_text(tokenizer, enc)
    assert trained.endswith("Italy." + ("\n\n" if end == "<|endoftext|>" else "") + end), trained
    assert tokenizer.convert_tokens_to_ids(end) in r.stop_ids  # what it learns to end in, generation stops at
    assert trained.count(end) == 1  # an earlier reply is as the template writes it in the history
    # what inference is given is the template's own
    assert r.prompt_text(chat).endswith(
        "And Rome?"
        + ("\n\n### Response:\n" if end != "<|im_end|>" else "<|im_end|>\n<|im_start|>assistant\n")
    )


@pytest.mark.parametrize("template", ["auto", "plain"])
def test_batched_encoding_gives_what_encoding_one_by_one_gives(tiny_tokenizer, base_tokenizer, template):
    """encode_many tokenises a split in batches; every id, label, drop and refusal is encode()'s,
    across batch edges, for chats, prompt/completion and text rows, with and without a BOS."""
    from edgetune.errors import InputError

    refuses_system = build_tokenizer(
        chat_template="{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    examples = [
        msgs(("user", "log 1: link down"), ("assistant", '{"port": 1}')),
        Example("messages", messages=(("system", "Be brief."), ("user", "q"), ("assistant", "a"))),
        Example("prompt_completion", prompt="Answer: ", completion="Paris\n"),
        Example("prompt_completion", prompt="2+2=", completion=" 4"),
        msgs(("assistant", "hello"), ("user", "reset it"), ("assistant", "done")),
        msgs(("user", "word " * 80), ("assistant", "long")),
        Example("prompt_completion", prompt="\n", completion="  indented"),
        Example("prompt_completion", prompt="The rou", completion="ter in the lobby"),  # a token over the cut
    ]
    examples = [Example(e.format, **{k: getattr(e, k) for k in ("messages", "prompt", "completion")}, source=f"d:{i}") for i, e in enumerate(examples)]  # fmt: skip
    for tok in (tiny_tokenizer, base_tokenizer, refuses_system):
        for truncation in ("drop", "truncate"):
            chat = [e for e in examples if e.format == "messages"]
            rows = examples if template == "auto" else [e for e in examples if e not in chat]
            renderer = Renderer(tok, template, max_seq_len=40, truncation=truncation)
            one_by_one = []
            for ex in rows:
                try:
                    one_by_one.append(renderer.encode(ex))
                except InputError as e:
                    one_by_one.append(str(e))
            batched = [
                r if not isinstance(r, InputError) else str(r) for r in renderer.encode_many(rows, batch=3)
            ]
            assert batched == one_by_one
    assert list(Renderer(tiny_tokenizer).encode_many([])) == []


def test_a_row_past_the_tokenizers_own_maximum_draws_no_transformers_warning(capfd):
    """transformers warned of "indexing errors" for a row edgetune then dropped as too long, said."""
    tokenizer = build_tokenizer()
    from transformers.utils import logging

    tokenizer.model_max_length = 8
    verbosity = logging.get_verbosity()
    logging.set_verbosity_warning()  # a tune earlier in the session turns transformers' warnings off
    try:
        r = Renderer(tokenizer, max_seq_len=16)
        enc = r.encode(msgs(("user", "word " * 40), ("assistant", "ok")))
    finally:
        logging.set_verbosity(verbosity)
    assert enc.dropped and "longer than" in enc.dropped
    assert "indexing errors" not in capfd.readouterr().err
