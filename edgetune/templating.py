"""Chat templates come with model files, so they are untrusted code: render them in a sandbox with
limits on time, output size and the size of any value a template builds.

The environment matches what transformers gives templates (trim_blocks, lstrip_blocks, loop
controls, `tojson` without HTML escaping, `raise_exception`, `strftime_now`), so output is
identical for real templates; jinja2's immutable sandbox already refuses attribute escapes
(`__class__`, `__globals__`, mutating methods) and caps `range` at 100,000 items.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

from edgetune.errors import InputError

MAX_OUTPUT_CHARS = 2_000_000
MAX_VALUE_CHARS = 2_000_000  # a string or list a template builds with * or +
MAX_SECONDS = 5.0


def _too_big(value: Any) -> bool:
    return isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_VALUE_CHARS


def _guard_call(args: tuple, kwargs: dict) -> None:
    """Refuse calls whose int arguments would size a huge result (center, ljust, zfill, indent...)."""
    from jinja2.sandbox import SecurityError

    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE_CHARS:
            raise SecurityError(f"argument {value} too large")
        if _too_big(value):
            raise SecurityError("argument too large")


_FIELD = {
    "%": re.compile(r"%[#0 +-]*(\d*)(?:\.(\d*))?"),
    "{": re.compile(r"\{[^{}:]*(?::[^{}\d]*(\d*)(?:\.(\d*))?)?"),
}
_FROM_ARGUMENT = {"%": re.compile(r"%[#0 +-]*(\d*\.)?\*"), "{": re.compile(r"\{[^{}]*:[^{}]*\{")}


def _guard_format(text: str, args: Any = (), style: str = "{") -> None:
    """A format whose result would be too large, refused before it is built: a huge width or
    precision ('{:>999999999}', '%999999999d'), one taken from the arguments ('%*s'), or many
    fields each filled with a large argument (('%s' * 300) % ((a,) * 300)). `style`: "%" or "{"."""
    from jinja2.sandbox import SecurityError

    if re.search(r"\d{7,}", text):
        raise SecurityError("format width too large")
    bare = text.replace("%%", "") if style == "%" else text.replace("{{", "").replace("}}", "")  # escapes
    if _FROM_ARGUMENT[style].search(bare):
        raise SecurityError("format width taken from an argument")
    values = args.values() if isinstance(args, dict) else args if isinstance(args, (list, tuple)) else (args,)
    largest = max((len(str(v)) for v in values), default=0)
    fields = _FIELD[style].findall(bare)
    widths = sum(int(n) for field in fields for n in field if n)
    if len(text) + len(fields) * largest + widths > MAX_VALUE_CHARS:
        raise SecurityError("format result too large")


def _guard_replace(text: Any, old: Any, new: Any) -> None:
    """str.replace's result, measured before it is built."""
    from jinja2.sandbox import SecurityError

    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        if len(text) + (text.count(old) if old else len(text) + 1) * len(new) > MAX_VALUE_CHARS:
            raise SecurityError("replace result too large")


def _limited_filter(function):
    def limited(*args, **kwargs):
        from jinja2.sandbox import SecurityError

        _guard_call(args[1:], kwargs)
        name = getattr(function, "__name__", "")
        if name == "do_format" and args and isinstance(args[0], str):  # (value, *args, **kwargs)
            _guard_format(args[0], kwargs or args[1:], "%")
        if name == "do_replace" and len(args) > 3:  # (eval_ctx, s, old, new, count)
            _guard_replace(*args[1:4])
        if name == "do_join" and len(args) > 1:  # (eval_ctx, value, d)
            items = args[1] if isinstance(args[1], str) else list(args[1])
            glue = args[2] if len(args) > 2 else kwargs.get("d", "")
            if sum(len(str(x)) for x in items) + len(str(glue)) * len(items) > MAX_VALUE_CHARS:
                raise SecurityError("join result too large")  # measured before it is built
            args = (args[0], items, *args[2:])
        result = function(*args, **kwargs)
        if _too_big(result):
            raise SecurityError("filter result too large")
        return result

    for marker in ("jinja_pass_arg",):  # keep pass_context / pass_environment behaviour
        if hasattr(function, marker):
            setattr(limited, marker, getattr(function, marker))
    return limited


def _env():
    import jinja2
    from jinja2.compiler import CodeGenerator
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class Generation(Extension):
        """transformers' `{% generation %}...{% endgeneration %}`, which marks a reply for its
        assistant-token mask: rendered as its body (edgetune finds replies by rendering turns)."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    class LimitedCodeGenerator(CodeGenerator):
        def visit_Concat(self, node, frame):
            # `a ~ b` compiles to a join jinja2 does not route through the sandbox: route it
            self.write("environment.limited_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        code_generator_class = LimitedCodeGenerator

        def limited_concat(self, values):
            text = "".join(map(str, values))
            if len(text) > MAX_VALUE_CHARS:
                raise SecurityError("concatenation result too large")
            return text

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's signature)
            _guard_call(args, kwargs)
            method = getattr(__obj, "__wrapped__", __obj)  # jinja2 wraps str.format in its own formatter
            owner = getattr(method, "__self__", None)
            if isinstance(owner, str) and getattr(method, "__name__", "") == "replace" and len(args) > 1:
                _guard_replace(owner, *args[:2])
            if isinstance(owner, str) and getattr(method, "__name__", "") in ("format", "format_map"):
                mapped = [v for m in args if isinstance(m, dict) for v in m.values()]  # format_map's
                _guard_format(owner, [*args, *kwargs.values(), *mapped])
            result = super().call(__context, __obj, *args, **kwargs)
            if _too_big(result):
                raise SecurityError("call result too large")
            return result

        def unsafe_undefined(self, obj, attribute):
            # jinja2 renders a refused attribute as an empty Undefined; a template that reaches for
            # one is hostile, so stop it outright
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 128:
                raise SecurityError("exponent too large")
            if operator == "*":
                sized, count = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
                if isinstance(sized, (str, list, tuple)) and isinstance(count, int):
                    if len(sized) * max(count, 0) > MAX_VALUE_CHARS:
                        raise SecurityError("repetition result too large")
            if operator == "%" and isinstance(left, str):
                _guard_format(left, right, "%")
            if (
                operator == "+"
                and isinstance(left, (str, list, tuple))
                and isinstance(right, (str, list, tuple))
            ):
                if len(left) + len(right) > MAX_VALUE_CHARS:
                    raise SecurityError("concatenation result too large")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.filters = {name: _limited_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=16)
def _compile(source: str):
    import jinja2

    try:
        return _env().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"chat template: syntax error at line {e.lineno}: {e.message}") from None


class _Timeout(Exception):
    pass


class _CallersAlarm(BaseException):
    """What the caller's own SIGALRM handler raised (their timeout), carried past the catch-all in
    render_template that would have made it a template error."""


@contextmanager
def _deadline(seconds: float):
    """SIGALRM-based deadline in the main thread (a template loop that yields no output is stopped
    too); elsewhere only the per-chunk clock in render_template applies (signal handlers can only
    be set in the main thread).

    A caller's own SIGALRM timer (a job runner's timeout, pytest-timeout's signal method) stays
    theirs: the one timer is set for whichever is due first, theirs reaches their handler when it
    is due (their exception raised as it is), and at exit theirs is set again with the time it has
    left. A SIGALRM before our time is theirs (the timer never fires early).

    Windows has neither SIGALRM nor setitimer: there, too, only the per-chunk clock applies (every
    render failed there, as "chat template: AttributeError")."""
    if not (hasattr(signal, "SIGALRM") and hasattr(signal, "setitimer")):
        yield
        return
    previous = signal.getsignal(signal.SIGALRM)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # None: a handler set outside Python, which could not be put back
        return
    ours = time.monotonic() + seconds
    theirs = {"handler": previous, "due": None, "interval": 0.0}  # the caller's timer, next due

    def arm(now: float) -> None:
        due = ours if theirs["due"] is None else min(ours, theirs["due"])
        signal.setitimer(signal.ITIMER_REAL, max(due - now, 1e-6))  # 1e-6: 0 would disarm it

    def expired(signum, frame):
        now = time.monotonic()
        if now >= ours - 1e-3:  # setitimer rounds to microseconds
            raise _Timeout()
        if theirs["due"] is not None and now >= theirs["due"] - 1e-3:
            theirs["due"] = theirs["due"] + theirs["interval"] if theirs["interval"] else None
        handler = theirs["handler"]
        if handler is signal.SIG_DFL:  # the default ends the process, as the caller's timer would
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGALRM)
        if handler is signal.SIG_IGN:
            arm(now)
            return
        signal.setitimer(signal.ITIMER_REAL, 0)  # theirs to set again, as a watchdog does
        try:
            handler(signum, frame)
        except BaseException as e:
            raise _CallersAlarm(e) from None
        finally:
            left, interval = signal.setitimer(signal.ITIMER_REAL, 0)
            now = time.monotonic()
            if left > 0:  # their handler set their timer again: that is theirs now
                theirs["due"], theirs["interval"] = now + left, interval
            if (current := signal.getsignal(signal.SIGALRM)) is not expired:  # or set another handler
                theirs["handler"] = current
                signal.signal(signal.SIGALRM, expired)
            arm(now)

    left, interval = signal.setitimer(signal.ITIMER_REAL, 0)  # theirs stopped before ours is set
    now = time.monotonic()
    theirs["due"], theirs["interval"] = (now + left if left > 0 else None), interval
    signal.signal(signal.SIGALRM, expired)
    try:
        arm(now)
        yield
    finally:
        try:  # ours, due as the body ended, can raise in here: the caller's are put back whatever
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, theirs["handler"])
            if theirs["due"] is not None:  # one that came due meanwhile fires at once
                wait = max(theirs["due"] - time.monotonic(), 1e-6)
                signal.setitimer(signal.ITIMER_REAL, wait, theirs["interval"])


def _text_size(value: Any) -> int:
    """Characters of text in a template's variables (the messages' contents)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_text_size(v) for v in value)
    return 0


def _refuse_a_long_row(variables: dict[str, Any]) -> None:
    """A size limit a row's own text reached is the row's length, not a hostile template."""
    if (given := _text_size(variables)) > MAX_VALUE_CHARS // 2:
        raise InputError(
            f"chat template: the row is too long to render ({given:,} characters of text; the "
            f"template sandbox stops at {MAX_VALUE_CHARS:,})"
        ) from None


def render_template(source: str, **variables: Any) -> str:
    """Render a chat template in the sandbox; one InputError for anything it refuses or that fails."""
    import jinja2
    from jinja2.sandbox import SecurityError

    template = _compile(source)
    pieces: list[str] = []
    size = 0
    started = time.monotonic()
    try:
        with _deadline(MAX_SECONDS):
            for chunk in template.generate(**variables):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    _refuse_a_long_row(variables)
                    raise InputError(
                        f"chat template: output longer than {MAX_OUTPUT_CHARS:,} characters; refused"
                    )
                if time.monotonic() - started > MAX_SECONDS:
                    raise _Timeout()
                pieces.append(chunk)
    except _CallersAlarm as e:
        raise e.args[0] from None
    except _Timeout:
        raise InputError(f"chat template: rendering took longer than {MAX_SECONDS:g} s; refused") from None
    except SecurityError as e:
        _refuse_a_long_row(variables)
        raise InputError(f"chat template: refused by the sandbox ({e})") from None
    except (OverflowError, MemoryError, RecursionError) as e:
        raise InputError(f"chat template: refused ({type(e).__name__})") from None
    except jinja2.TemplateError as e:
        raise InputError(f"chat template: {e}") from None
    except InputError:
        raise
    except Exception as e:  # a template that fails on its own terms (TypeError, ValueError...)
        raise InputError(f"chat template: {type(e).__name__}: {e}") from None
    return "".join(pieces)


def apply_chat_template(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """tokenizer.apply_chat_template(..., tokenize=False), rendered in the sandbox above."""
    source = tokenizer.chat_template
    if isinstance(source, dict):  # named templates: the default one is the chat template
        source = source.get("default")
    if not isinstance(source, str) or not source:
        raise InputError("the tokenizer has no chat template")
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return render_template(source, messages=messages, add_generation_prompt=add_generation_prompt, **specials)
