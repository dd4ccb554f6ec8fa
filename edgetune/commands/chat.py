from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from edgetune.commands.common import allow_pickle_option


@click.command()
@click.argument("artifact")
@click.option("--prompt", default=None, help="Answer one prompt and exit.")
@click.option("--system", default=None, help="System prompt (default: the one the run was trained with).")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1, 8192))
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]), show_default=True)
@allow_pickle_option
def chat(artifact, prompt, system, max_new_tokens, device, allow_pickle) -> None:
    """Talk to a run (its merged model), a GGUF file or an ONNX directory, with the training chat
    template, greedy, stopping at EOS. Interactive unless --prompt is given; a line of three
    double quotes opens and closes a message of several lines; Ctrl-C stops an answer; /reset
    clears the conversation, /exit or Ctrl-D leaves."""
    from edgetune.chat import open_chat
    from edgetune.console import err
    from edgetune.errors import InputError, Terminated, printable

    if not artifact.strip():  # "" would be the current directory
        raise click.UsageError(
            "ARTIFACT is empty: name a run, a .gguf file, an ONNX or an HF model directory"
        )
    for option, given in (("--prompt", prompt), ("--system", system)):
        if given is not None and (bad := not_utf8(given)):
            raise InputError(f"{option}: {bad}")
    if prompt is not None and not prompt.strip():  # as a blank line in a session is not sent
        raise InputError("--prompt is empty: give the model something to answer")
    if hasattr(sys.stdin, "reconfigure"):  # undecodable bytes read as they are, then refused by line
        sys.stdin.reconfigure(errors="surrogateescape")
    session = open_chat(Path(artifact), system, device=device, allow_pickle=allow_pickle)
    if session.plain:
        ignored = " (--system is ignored)" if system else ""
        err.print(
            "this run trained on plain prompts: each message goes to the model as it is, alone, "
            f"with no chat template, system prompt or history{ignored}"
        )

    terminal = sys.stdout.isatty()

    def show(piece: str) -> None:  # a model can be made to write escape sequences: not into a terminal
        # piped, the text as the model wrote it (click strips "ESC [ ... m" from what is not a terminal)
        click.echo(printable(piece) if terminal else piece, nl=False, color=True)

    def say_cut() -> None:  # the answer ran out of tokens before EOS: cut, not finished
        if session.cut_at is not None:
            room = "--max-new-tokens" if session.cut_at == max_new_tokens else "the room left in the context"
            err.print(f"(the answer was cut at {session.cut_at} tokens, {room}, before it ended)")

    if prompt is not None:
        session.reply(prompt, max_new_tokens, show)
        click.echo()
        say_cut()
        return
    err.print(f"chatting with {escape(str(artifact))} (/help, /reset, /exit)")
    while True:
        line = _ask()
        if line is None:
            return
        # /word alone is a command (any case), not a path such as /var/log/syslog or a sentence
        stripped = line.strip()
        command = stripped.lower() if stripped.startswith("/") and stripped[1:].isalpha() else None
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.history.clear()
            err.print("conversation cleared")
            continue
        if command is not None:
            unknown = "" if command == "/help" else f"unknown command {stripped}; "
            err.print(
                f"{unknown}/reset clears the conversation, /exit or Ctrl-D leaves; anything else is sent "
                '(start it with // to send a line that begins with /); a line """ opens and closes a '
                "message of several lines; Ctrl-C stops an answer"
            )
            continue
        block = stripped == BLOCK  # the lines up to the next """ are one message (a pasted log)
        if block and (line := _ask_block()) is None:
            return
        if bad := not_utf8(line):
            err.print(f"[red]error:[/] {bad}; the message was not sent", soft_wrap=True)
            continue
        if not block and line.lstrip().startswith("//"):
            line = line.lstrip()[1:]
        if line.strip():
            dropped = session.dropped_turns
            try:
                session.reply(line, max_new_tokens, show)
            except InputError as exc:  # a prompt past the context: say so, keep the session
                err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
                continue
            except Terminated:
                raise
            except KeyboardInterrupt:  # Ctrl-C stops this answer, not the session (it is not kept)
                click.echo()
                err.print("(answer stopped; it is not kept in the conversation)")
                continue
            click.echo()
            say_cut()
            if session.dropped_turns > dropped:
                err.print(
                    f"(the oldest {session.dropped_turns - dropped} exchange(s) left out to fit the context)"
                )


def not_utf8(text: str) -> str | None:
    """What is wrong with text from the command line or stdin that holds bytes UTF-8 cannot decode
    (Python keeps them as lone surrogates, which no tokenizer takes); None when it is text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        byte = f"byte {ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        return f"not UTF-8 text ({byte} at character {exc.start})"
    return None


BLOCK = '"""'


def _ask(prompt: str = "you> ") -> str | None:
    """A line from stdin after a `you> ` prompt written to stderr, whatever Click version (its
    prompt leaves a character on stdout in some), so that stdout holds the answers alone; None at
    the end of the input or on Ctrl-C."""
    from edgetune.errors import Terminated

    sys.stderr.write(prompt)
    sys.stderr.flush()
    try:
        return input()
    except Terminated:
        raise
    except (EOFError, KeyboardInterrupt, RuntimeError):  # RuntimeError: stdin closed (`<&-`)
        sys.stderr.write("\n")  # ends the prompt's line
        return None


def _ask_block() -> str | None:
    """The lines up to one of three double quotes, as one message; None where the input ends first."""
    lines = []
    while (line := _ask("...  ")) is not None:
        if line.strip() == BLOCK:
            return "\n".join(lines)
        lines.append(line)
    return None
