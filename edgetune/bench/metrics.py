"""Task metrics computed on generated text against a reference answer. Each returns a score in [0, 1].

json_fields is the demo's metric: the mean over the reference's keys of an exact per-field match,
with 0 for output that is not one JSON object. It rewards the format and every extracted value,
and gives partial credit where exact match would give none.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Callable

from edgetune.data.rows import in_file_order


def exact(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


# a sign or separator that belongs to a number: -5 is not 5, 3.14 not 314, 1,000 not 1000
_IN_NUMBER = re.compile(r"(?<![\w.,])[-+](?=\d)|(?<=\d)[.,](?=\d)")


def _is_punctuation(ch: str) -> bool:
    """Punctuation in any script ("。", "؟", "」") and ASCII's symbols (string.punctuation)."""
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def _normalise(text: str) -> str:
    """Case folded ("Straße" is "STRASSE"), full-width forms folded (NFKC: "Ｂ）" is "B)"),
    invisible format characters (a zero-width space, a soft hyphen) and punctuation of any script
    removed but for the signs and separators of numbers, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = {m.start() for m in _IN_NUMBER.finditer(text)}
    text = "".join(
        ch
        for i, ch in enumerate(text)
        if i in kept or not (_is_punctuation(ch) or unicodedata.category(ch) == "Cf")
    )
    return " ".join(text.split())


# Chinese and Japanese write words without spaces: each of their characters is a token of its own
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def normalized(prediction: str, reference: str) -> float:
    return float(_normalise(prediction) == _normalise(reference))


def json_objects(text: str) -> list[dict]:
    """The JSON objects in text, outermost only and in order (models sometimes wrap the answer in
    prose or a code fence, or show an example object before it)."""
    text = text.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        pass
    else:  # a list of one object is that object (a tool call's usual form); a longer one is no answer
        if isinstance(value, list) and len(value) == 1:  # of this metric's: which object would it score?
            value = value[0]
        return [value] if isinstance(value, dict) else []
    found, decoder, start = [], json.JSONDecoder(), 0
    while (start := text.find("{", start)) >= 0:  # prose may hold a brace before the object ("{see below}")
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start += 1
            continue
        if isinstance(value, dict):
            found.append(value)
        start = end
    return found


def parse_json_object(text: str, keys: object = ()) -> dict | None:
    """The JSON object in text that has the most of keys (the reference's fields), the first of
    those equal: "Empty fields are {}. Answer: {...}" is scored on the answer, and of several
    guesses with the same fields only the first counts."""
    objects = json_objects(text)
    if not objects:
        return None
    return max(objects, key=lambda obj: sum(1 for k in keys if k in obj))


def same_value(a: object, b: object) -> bool:
    """JSON equality: true is not 1 and false is not 0 (Python's == says they are); 1 and 1.0 are
    the same number; objects and lists compare member by member."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def json_fields(prediction: str, reference: str) -> float:
    ref = json.loads(reference)
    pred = parse_json_object(prediction, ref)
    if pred is None or not ref:
        return 0.0
    return sum(1.0 for k, v in ref.items() if k in pred and same_value(pred[k], v)) / len(ref)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on words (longest common subsequence); a Chinese or Japanese character is a word."""
    a, b = _TOKEN.findall(_normalise(prediction)), _TOKEN.findall(_normalise(reference))
    if not a or not b:
        return float(a == b)
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


# an option label: a letter or a number, alone or before ")", "." or ":" ("B", "(b)", "10) red")
OPTION_LABEL = re.compile(r"\s*\(?([A-Za-z]|\d+)\s*(?:[).:](?=\s|$)|$)")  # "3.14" and "1:30" are no labels
# the label an answer starts with, after any markup or brackets ("**B**", "[B]", "（ｂ）"): a letter
# or number on its own ("B) Paris", "b. because", "B）巴黎"), not the start of a word in any script
# ("Because", "Déjà vu") or of a number ("10.5")
ANSWER_LABEL = re.compile(rf"[\W_]*([A-Za-z]|\d+)(?!(?![{_CJK}])[^\W_]|[.,:]\d)")


def choice(prediction: str, reference: str) -> float:
    """Multiple choice: the prediction names the reference's option. A reference that starts with a
    label ("B) Paris", "10. red", "B") is matched on the label; otherwise the prediction must start
    with the whole answer ("New York" does not match "New Jersey", nor "A cat" "A dog")."""
    label = OPTION_LABEL.match(unicodedata.normalize("NFKC", reference))
    if label:
        named = ANSWER_LABEL.match(unicodedata.normalize("NFKC", prediction))
        return float(bool(named) and named.group(1).lower() == label.group(1).lower())
    words = _normalise(prediction).split()
    option = _normalise(reference).split()
    if not words or not option:
        return 0.0
    return float(words[: len(option)] == option)


def unscorable(metric: str, reference: str) -> str | None:
    """Why `metric` cannot score answers against this reference (None when it can)."""
    if metric == "json_fields":
        try:
            value = json.loads(reference)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict) or not value:
            return "json_fields compares the fields of a JSON object, and this answer is not one"
    if metric == "choice" and not _normalise(reference):
        return "choice compares the option label the answer starts with, and this answer has none"
    return None


def reference_answer(example) -> str | None:
    """What the model should have said: the last assistant turn, or the completion (a text row has
    none)."""
    return None if example.format == "text" else example.reference()


def unscorable_rows(metric: str, examples) -> list[str]:
    """`file:line: why ('the answer...')` for each example whose answer `metric` cannot read."""
    rows = []
    for ex in in_file_order(examples):
        answer = reference_answer(ex)
        if answer is not None and (why := unscorable(metric, answer)):
            rows.append(f"{ex.source}: bench.metric {why} ({' '.join(answer.split())[:60]!r})")
    return rows


def unscorable_warning(metric: str, examples, split: str) -> str | None:
    """For data check and tune: answers the recipe's metric cannot read, named. Held out, bench
    refuses them; trained on, the model learns to answer in a form the metric scores 0."""
    rows = unscorable_rows(metric, examples)
    if not rows:
        return None
    answers = sum(1 for ex in examples if reference_answer(ex) is not None)
    if len(rows) == answers:
        return (
            f"bench.metric {metric} reads none of the {answers} {split} answers ({rows[0]}): it does not "
            "fit this data; pick another bench.metric"
        )
    more = f" (and {len(rows) - 3} more)" if len(rows) > 3 else ""
    effect = (
        "bench refuses to score them: fix or drop these rows, or pick another bench.metric"
        if split != "train"
        else "the model learns to answer so, and bench scores such answers 0"
    )
    return f"{len(rows)} {split} answers bench.metric cannot read: {'; '.join(rows[:3])}{more}; {effect}"


def answer_form_warnings(metric: str, splits, max_examples: int) -> list[str]:
    """unscorable_warning for the held-out rows bench would score and for the training rows, where
    the metric reads only some answers (json_fields, choice)."""
    if metric not in ("json_fields", "choice"):
        return []
    held_out = splits.held_out(max_examples)
    said = (
        unscorable_warning(metric, held_out, "held-out"),
        unscorable_warning(metric, splits.train, "train"),
    )
    return [w for w in said if w]


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact": exact,
    "normalized": normalized,
    "json_fields": json_fields,
    "rouge_l": rouge_l,
    "choice": choice,
}
