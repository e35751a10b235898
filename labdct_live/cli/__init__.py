"""The ``labdct-live`` command line: one entry point, one module per subcommand.

Every public module of this package is a subcommand: it defines ``register(subparsers)``, which
adds its parser and sets ``func`` to a callable taking the parsed arguments; modules are listed
by ``ORDER`` (default 50), then by name. Modules import heavy dependencies
(torch, tiled) inside that callable so that ``labdct-live --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from .. import __version__



def _subcommand_modules() -> list:
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labdct-live",
        description="LabDCT spot segmentation: simulate, synthesise, train, segment, run live.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in _subcommand_modules():
        module.register(subparsers)
    return parser


class CLIError(Exception):
    """An error the user can fix; printed without a traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = args.func(args)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"labdct-live {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labdct-live {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
