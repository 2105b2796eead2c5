"""The ``tft2v`` command line: parse, validate, dispatch. Bad input → one line on stderr, exit 2."""

from __future__ import annotations

import sys

import click
import typer

from tft2v.errors import TFT2VError

app = typer.Typer(
    name="tft2v",
    help="TF-T2V: text-to-video diffusion from image-text pairs and text-free videos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the installed tft2v version."""
    from tft2v import __version__

    print(__version__)


def _mount() -> None:
    # One line per command; each module owns its commands and keeps heavy imports inside them.
    from tft2v.commands import convert, data, distill, finetune, generate, precompute, quickstart, refine, serve, train
    from tft2v.commands import eval as eval_cmd

    app.command(name="quickstart")(quickstart.quickstart)
    app.command(name="train")(train.train)
    app.command(name="generate", epilog=generate.EXAMPLES)(generate.generate)
    app.command(name="finetune", epilog=finetune.EXAMPLES)(finetune.finetune)
    app.command(name="distill", epilog=distill.EXAMPLES)(distill.distill)
    app.command(name="refine", epilog=refine.EXAMPLES)(refine.refine)
    app.command(name="eval")(eval_cmd.eval_command)
    app.command(name="serve")(serve.serve)
    app.command(name="precompute")(precompute.precompute)
    app.add_typer(data.app, name="data")
    app.add_typer(convert.app, name="convert")


_mount()


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the typer app and turns user errors into one-line messages (exit 2)."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="tft2v", standalone_mode=False)
    except (click.exceptions.Abort, typer.Abort):
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.UsageError as e:
        # Click's own usage errors (unknown option, bad value) — keep them to one line.
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except (click.exceptions.ClickException, typer.TyperException) as e:
        # typer >= 0.29 parses with its own vendored click, whose errors derive from TyperException.
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except (TFT2VError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
