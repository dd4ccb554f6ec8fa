"""Chat templates are untrusted: the sandbox renders real templates exactly as transformers does,
and refuses escapes and resource exhaustion with one clear error."""

import time

import pytest

from edgetune.errors import InputError
from edgetune.templating import apply_chat_template, render_template

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi <there> & 'you'"},
    {"role": "assistant", "content": '{"a": 1}'},
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_same_text_as_transformers(tiny_tokenizer, add_generation_prompt):
    ours = apply_chat_template(tiny_tokenizer, MESSAGES, add_generation_prompt)
    theirs = tiny_tokenizer.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs


def test_template_features_real_models_use():
    source = (
        "{% for m in messages %}{% if loop.first and m.role != 'system' %}{{ raise_exception('no system') }}"
        "{% endif %}{{ m.content | tojson }}{% if loop.index > 5 %}{% break %}{% endif %}{% endfor %}"
        "{{ bos_token }}{{ strftime_now('%Y') | length }}"
    )
    assert (
        render_template(source, messages=MESSAGES, bos_token="<s>")
        == '"be brief""hi <there> & \'you\'""{\\"a\\": 1}"<s>4'
    )
    with pytest.raises(InputError, match="chat template: no system"):
        render_template(source, messages=MESSAGES[1:], bos_token="<s>")


def test_a_generation_block_renders_as_transformers_renders_it(tiny_tokenizer):
    """`{% generation %}` marks replies for transformers' assistant mask: data check refused it as
    a syntax error, blaming the data's first row."""
    source = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
        "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    saved, tiny_tokenizer.chat_template = tiny_tokenizer.chat_template, source
    try:
        for prompt in (True, False):
            ours = apply_chat_template(tiny_tokenizer, MESSAGES, prompt)
            theirs = tiny_tokenizer.apply_chat_template(
                MESSAGES, tokenize=False, add_generation_prompt=prompt
            )
            assert ours == theirs and '{"a": 1}<|im_end|>' in ours
    finally:
        tiny_tokenizer.chat_template = saved


@pytest.mark.parametrize(
    "payload",
    [
        "{{ messages.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ raise_exception.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
        "{% set x = messages.append(1) %}",
        "{{ self._TemplateReference__context }}",
    ],
)
def test_attribute_escapes_are_refused(payload):
    with pytest.raises(InputError, match="chat template"):
        render_template(payload, messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    "payload, reason",
    [
        ("{{ 'a' * 10**9 }}", "refused"),
        ("{{ 2 ** 100000000 }}", "refused"),
        ("{% for i in range(10**9) %}x{% endfor %}", "refused"),
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "longer than"),
        ("{% for i in range(99999) %}{{ 'y' * 1000 }}{% endfor %}", "output longer than"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "refused",
        ),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "refused",
        ),
        ("{{ 'x' | center(10**10) }}", "refused"),
        ("{{ 'x'.ljust(10**10) }}", "refused"),
        ("{{ '{:>9999999999}'.format(1) }}", "refused"),
        ("{{ '%9999999999d' % 1 }}", "refused"),
        ("{{ (['ab'] * 10**8) | join }}", "refused"),
        ("{{ 10**8 | join }}", "chat template: TypeError"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "refused"),
        ("{% for m in messages %", "syntax error at line 1"),
    ],
)
def test_exhaustion_is_refused_quickly(payload, reason):
    started = time.monotonic()
    with pytest.raises(InputError, match=reason):
        render_template(payload, messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - started < 8


BIG = "{% set a = 'x' * 1500000 %}"


@pytest.mark.parametrize(
    "payload",
    [
        "{{ '%*s' % (300000000, '') }}",  # the width taken from the arguments
        "{{ '%-.*s' % (3, 'abc') }}",
        "{{ '{:{w}}'.format(1, w=300000000) }}",
        BIG + "{{ ('%s' * 300) % ((a,) * 300) }}",  # many fields, each a large argument
        BIG + "{{ ('%(a)s' * 300) % {'a': a} }}",
        BIG + "{{ ('{}' * 300).format(*((a,) * 300)) }}",
        BIG + "{{ ('{0}' * 300).format(a) }}",
        BIG + "{{ ((a,) * 300) | join }}",
        BIG + "{{ ['', ''] | join(a) }}",
        BIG + "{{ ('%s' * 300) | format(*((a,) * 300)) }}",  # the format filter
        BIG + "{{ ('x' * 20000) | replace('x', 'y' * 4000) }}",
        BIG + "{{ ('x' * 20000).replace('x', 'y' * 4000) }}",
    ],
)
def test_a_value_too_large_is_refused_before_it_is_built(payload):
    """The size checks ran on a format's or a join's result, after building it: a 60-byte template
    took 3 GB."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="refused"):
            render_template(payload, messages=[{"role": "user", "content": "x"}])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB"


def test_escaped_braces_and_percent_signs_are_not_widths_from_arguments():
    source = (
        "{{ '{{\"name\": \"{}\"}}'.format('x') }} {{ '50%% *off*: %s' % 'now' }} {{ '%s!' | format('hi') }}"
    )
    assert render_template(source, messages=[]) == '{"name": "x"} 50% *off*: now hi!'


def test_a_row_too_long_to_render_is_said_to_be_long_not_the_template_hostile():
    chatml = (
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>' }}{% endfor %}"
    )
    long = [{"role": "user", "content": "word " * 420_000}]
    with pytest.raises(InputError, match=r"the row is too long to render \(2,100,004 characters of text"):
        render_template(chatml, messages=long)
    with pytest.raises(InputError, match="the row is too long to render"):  # the output limit too
        render_template("{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}", messages=long)
    assert (
        render_template(chatml, messages=[{"role": "user", "content": "hi"}])
        == "<|im_start|>user\nhi<|im_end|>"
    )


def test_a_hostile_template_in_a_model_dir_stops_data_check_with_exit_2(tmp_path, tiny_model_dir):

    from click.testing import CliRunner
    from conftest import chat_row, model_with_template, write_jsonl

    from edgetune.cli import main

    model = model_with_template(
        tmp_path, tiny_model_dir, "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    )
    write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(20)])
    result = CliRunner().invoke(
        main, ["data", "check", str(tmp_path / "d.jsonl"), "--set", f"model.base={model}"]
    )
    assert result.exit_code == 2, result.output
    assert "chat template: refused by the sandbox" in result.output


SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"  # no output


@pytest.fixture
def callers_alarm():
    """The test's own SIGALRM handler and timer, as a job runner's timeout sets them; undone after."""
    import signal

    fired: list[float] = []
    before = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(time.monotonic()))
    yield fired
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, before)


def test_a_callers_alarm_timer_runs_on_across_renders(callers_alarm):
    """The sandbox's deadline ended with setitimer(ITIMER_REAL, 0): every rendered row switched off
    a caller's own SIGALRM timer (a job runner's timeout, pytest-timeout's signal method)."""
    import signal

    handler = signal.getsignal(signal.SIGALRM)
    signal.setitimer(signal.ITIMER_REAL, 600)
    for _ in range(3):
        assert render_template("{{ messages[0].content }}", messages=MESSAGES) == "be brief"
    left, interval = signal.getitimer(signal.ITIMER_REAL)
    assert 590 < left <= 600 and interval == 0
    assert signal.getsignal(signal.SIGALRM) is handler and not callers_alarm


def test_a_callers_timer_due_during_a_render_reaches_its_handler_and_the_deadline_still_holds(
    callers_alarm, monkeypatch
):
    """The deadline replaced the caller's SIGALRM handler for the render: their timer, due meanwhile,
    never reached it, and was off afterwards. Now it fires on time, and the template is still
    stopped at the deadline."""
    import signal

    monkeypatch.setattr("edgetune.templating.MAX_SECONDS", 1.0)
    signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)  # a periodic one: a progress tick, a profiler
    started = time.monotonic()
    with pytest.raises(InputError, match="rendering took longer than 1 s"):
        render_template(SPIN, messages=[])
    assert time.monotonic() - started < 5
    assert len(callers_alarm) >= 2, callers_alarm
    left, interval = signal.getitimer(signal.ITIMER_REAL)
    assert 0 < left <= 0.2 and interval == 0.2


def test_a_callers_handler_that_sets_its_timer_again_keeps_it_and_the_deadline_holds(
    callers_alarm, monkeypatch
):
    """A watchdog whose handler sets its own timer again (signal.setitimer inside it) overwrote the
    deadline's: a 0.5 s deadline held for 3.1 s, and the watchdog's timer was off afterwards."""
    import signal

    def watchdog(signum, frame):
        callers_alarm.append(time.monotonic())
        signal.setitimer(signal.ITIMER_REAL, 30.0)

    monkeypatch.setattr("edgetune.templating.MAX_SECONDS", 0.5)
    signal.signal(signal.SIGALRM, watchdog)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    started = time.monotonic()
    with pytest.raises(InputError, match="rendering took longer than 0.5 s"):
        render_template(SPIN, messages=[])
    assert time.monotonic() - started < 2.5
    assert len(callers_alarm) == 1
    left, interval = signal.getitimer(signal.ITIMER_REAL)
    assert 25 < left <= 30 and interval == 0
    assert signal.getsignal(signal.SIGALRM) is watchdog


def test_the_callers_timeout_raised_in_a_render_is_theirs_not_a_template_error(callers_alarm):
    """A caller's timeout due during a render never fired (the deadline's handler took SIGALRM),
    and an exception their handler raises must not become "chat template: TimeoutError"."""
    import signal

    def job_timeout(signum, frame):
        raise TimeoutError("the job's 0.3 s are up")

    signal.signal(signal.SIGALRM, job_timeout)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="the job's 0.3 s are up"):
        render_template(SPIN, messages=[])
    assert time.monotonic() - started < 3  # theirs, before the deadline's 5 s
    assert signal.getsignal(signal.SIGALRM) is job_timeout


def test_without_sigalrm_templates_render_and_the_deadline_holds_by_the_clock(monkeypatch):
    """Windows has no signal.SIGALRM nor signal.setitimer: every render failed with "chat template:
    AttributeError ... skip bad rows". Now the timer is skipped there, and a slow template that
    yields output is still stopped at its deadline by the per-chunk clock."""
    import signal

    monkeypatch.delattr(signal, "SIGALRM")
    monkeypatch.delattr(signal, "setitimer")
    assert render_template("{{ messages[0].content }}", messages=MESSAGES) == "be brief"
    monkeypatch.setattr("edgetune.templating.MAX_SECONDS", 0.5)
    slow = "{% for i in range(100000) %}{% for j in range(20000) %}{% endfor %}.{% endfor %}"
    started = time.monotonic()
    with pytest.raises(InputError, match="rendering took longer than 0.5 s"):
        render_template(slow, messages=[])
    assert time.monotonic() - started < 5
