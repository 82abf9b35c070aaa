"""The ``edgecnn`` command line.

Subcommands are imported lazily from ``edgecnn.commands.<name>`` so that the torch-free
commands (``bench``, ``compile``, ``pack``/``unpack``) start without importing torch: a
Jetson install has onnx + numpy + its runtime and nothing else.
"""

from __future__ import annotations

import importlib
import sys

import click

from edgecnn import __version__
from edgecnn.errors import UserError

# name -> (module, attribute, one-line help). The help is repeated here so that
# ``edgecnn --help`` lists every command without importing any of them.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "models": ("edgecnn.commands.models", "models", "List the model zoo with params and MACs."),
    "profile": ("edgecnn.commands.profile", "profile", "Params, MACs and a per-layer table for a model."),
    "export": ("edgecnn.commands.export", "export", "Export a model to ONNX (checked against PyTorch)."),
    "compile": ("edgecnn.commands.compile", "compile_", "Build a runtime engine (ORT, TensorRT) from ONNX."),
    "lint": ("edgecnn.commands.lint", "lint", "Check a Q/DQ ONNX file against TensorRT's placement rules."),
    "bench": ("edgecnn.commands.bench", "bench", "Measure latency and throughput of an ONNX model or engine."),
    "eval": ("edgecnn.commands.eval", "eval_", "Top-1/top-5 accuracy of a model or ONNX file on an image folder."),
    "compress": ("edgecnn.commands.compress", "compress", "Run a compression pipeline (recipe or flags) end to end."),
    "finetune": ("edgecnn.commands.finetune", "finetune", "Fine-tune a transformed model with knowledge distillation."),
    "pack": ("edgecnn.commands.pack", "pack", "Pack an ONNX model into a compact .ecnn file."),
    "unpack": ("edgecnn.commands.pack", "unpack", "Decode a .ecnn file back into ONNX."),
    "ship": ("edgecnn.commands.ship", "ship", "Write an app-ready bundle (model, labels, golden test, sample) or --check one."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A missing third-party package is the user's install; a missing edgecnn module is a bug.
            if not exc.name or exc.name.split(".")[0] == "edgecnn":
                raise
            raise UserError(
                f"'edgecnn {name}' needs the package '{exc.name}', which is not installed; "
                "install it with: pip install 'edgecnn[compress]'"
            ) from None
        return getattr(module, attr)

    def format_commands(self, ctx, formatter):
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecnn")
def cli():
    """edgecnn: compress efficient CNNs into small, fast, measured edge artifacts."""


def main(argv=None):
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="edgecnn", standalone_mode=False)
    except UserError as exc:
        click.echo(f"edgecnn: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("edgecnn: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("edgecnn: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
