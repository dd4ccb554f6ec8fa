"""Fuzzing the two readers that take files from anywhere: the dataset loader and edgetune's GGUF
check. Whatever the bytes, the answer is a result or one EdgetuneError, never another exception.

The default suite runs a few hundred cases each; `-m slow` runs 10,000 each (part of `make test`).
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetune.data.rows import load_examples
from edgetune.errors import EdgetuneError
from edgetune.validate import check_gguf

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "user", "assistant", "tool", "", 3, None, "human", "gpt", "GPT"])
MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": JSON | st.text(max_size=30)})
ROW = (
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4) | JSON})
    | st.fixed_dictionaries({"prompt": JSON, "completion": JSON})
    | st.fixed_dictionaries({"text": JSON})
    | st.fixed_dictionaries(
        {"instruction": JSON, "output": JSON}, optional={"input": JSON, "system": JSON, "history": JSON}
    )
    | st.fixed_dictionaries(
        {
            "conversations": st.lists(
                st.fixed_dictionaries({"from": ROLES | JSON, "value": JSON}), max_size=4
            )
            | JSON
        },
        optional={"system": JSON},
    )
    | st.fixed_dictionaries(
        {"prompt": st.lists(MESSAGE, max_size=2), "completion": st.lists(MESSAGE, max_size=2)}
    )
    | st.fixed_dictionaries({"prompt": JSON, "chosen": JSON, "rejected": JSON})
    | JSON
)
LINE = st.one_of(
    ROW.map(lambda r: json.dumps(r)),
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
)


def _load(tmp_path, lines, skip):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    try:
        result = load_examples(path, skip_bad_rows=skip)
    except EdgetuneError as e:
        assert str(e)
        return
    assert all(ex.source.startswith(str(path)) for ex in result.examples)


def _fuzz_rows(n):
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(lines=st.lists(LINE, min_size=1, max_size=6), skip=st.booleans())
    def run(tmp_path_factory, lines, skip):
        _load(tmp_path_factory.mktemp("rows", numbered=True), lines, skip)

    return run


MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**7)),
    st.tuples(st.just("flip"), st.integers(0, 10**7), st.integers(1, 255)),
    st.tuples(st.just("int"), st.integers(0, 10**7), st.integers(0, 2**64 - 1)),
)


def _mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for m in mutations:
        if not buf:
            break
        at = m[1] % len(buf)
        if m[0] == "truncate":
            del buf[at:]
        elif m[0] == "flip":
            buf[at] ^= m[2]
        else:
            buf[at : at + 8] = m[2].to_bytes(8, "little")
    return bytes(buf)


@pytest.fixture(scope="module")
def gguf_bytes(tiny_model_dir, tmp_path_factory):
    from edgetune.export.gguf_convert import convert

    path = convert(tiny_model_dir, tmp_path_factory.mktemp("g") / "tiny.gguf", "f16")
    return path.read_bytes()


def _fuzz_gguf(n):
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutations=st.lists(MUTATION, min_size=1, max_size=3), header_bias=st.booleans())
    def run(tmp_path_factory, gguf_bytes, mutations, header_bias):
        # most corruption that matters is in the header: aim there half of the time
        if header_bias:
            mutations = [(m[0], m[1] % 4096, *m[2:]) for m in mutations]
        path = tmp_path_factory.mktemp("gguf", numbered=True) / "f.gguf"
        path.write_bytes(_mutate(gguf_bytes, mutations))
        try:
            check_gguf(path)
        except EdgetuneError as e:
            assert str(path) in str(e)

    return run


def test_dataset_loader_fuzz(tmp_path_factory):
    _fuzz_rows(300)(tmp_path_factory)


def test_gguf_check_fuzz(tmp_path_factory, gguf_bytes):
    _fuzz_gguf(300)(tmp_path_factory, gguf_bytes)


@pytest.mark.slow
def test_dataset_loader_fuzz_10k(tmp_path_factory):
    _fuzz_rows(10_000)(tmp_path_factory)


@pytest.mark.slow
def test_gguf_check_fuzz_10k(tmp_path_factory, gguf_bytes):
    _fuzz_gguf(10_000)(tmp_path_factory, gguf_bytes)
