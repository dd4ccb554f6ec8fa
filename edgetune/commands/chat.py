from __future__ import annotations

from pathlib import Path

import click

from edgetune.commands.common import not_built


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", default=None, help="Answer one prompt and exit.")
def chat(artifact, prompt) -> None:
    """Talk to a run's merged model, a GGUF file or an ONNX directory."""
    not_built("chat", 7)
