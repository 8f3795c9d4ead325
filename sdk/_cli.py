"""What every command module of the CLI shares: the typer app, the consoles, and how a command body
runs (an EdgepartError becomes one clear paragraph and an exit code, never a traceback).

cli.py defines the workstation commands and imports cli_cluster.py and cli_demo.py, which register
theirs on the same `app`; all three import this module, and none of them imports another's.
"""

from __future__ import annotations

from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from .errors import EdgepartError, MissingExtraError

app = typer.Typer(
    name="edgepart",
    help=(
        "Split one trained neural network across several edge devices and run it as one.\n\n"
        "On a workstation: `plan` shows what would go where, `package` writes one bundle per device, "
        "`inspect` shows a bundle, `verify` proves the split computes what the model computes."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def run(fn: Callable[[], Any]) -> Any:
    """Run a command body; an EdgepartError becomes one clear paragraph and exit code 2."""
    try:
        return fn()
    except MissingExtraError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(3)
    except EdgepartError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2)


def packager():
    """edgepart.packager, or MissingExtraError naming the extra that brings it."""
    try:
        import edgepart.packager as p
    except ImportError as e:
        raise MissingExtraError.for_extra("packager", "This command", e.name or "onnx") from None
    return p
