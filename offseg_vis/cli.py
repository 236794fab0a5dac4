"""The ``offseg`` command: ``offseg info|zoo|data|train|eval|predict|experiment|bench|convert|app|demo``.

Each area of the package registers its own sub-commands (``register(subparsers)`` in its
``commands`` module); this file only wires them and turns our errors into one-line messages.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from offseg_vis.errors import OffSegError

# Modules that contribute sub-commands; a missing optional one is skipped, never fatal.
COMMAND_MODULES = (
    "offseg_vis.data.commands",
    "offseg_vis.engine.commands",
    "offseg_vis.engine.export",
    "offseg_vis.model_commands",
    "offseg_vis.experiment.cli",
    "offseg_vis.bench.commands",
    "offseg_vis.app.commands",
    "offseg_vis.analysis.commands",
    "offseg_vis.analysis.explore_commands",
    "offseg_vis.deploy.commands",
)


def _info(args: argparse.Namespace) -> int:
    import torch

    from offseg_vis import __version__, list_models

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"offseg_vis {__version__}")
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads")
    print("models: " + ", ".join(list_models()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the version, the torch device and the models the zoo knows")
    info.set_defaults(func=_info)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue  # that area has no commands (yet)
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OffSegError as err:
        print(f"offseg {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
