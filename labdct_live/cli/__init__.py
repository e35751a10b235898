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

from labdct_live import __version__

__all__ = ["CLIError", "build_parser", "main"]


def _subcommand_modules() -> list:
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.__name__))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the CLI."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} "
                     f"(see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``labdct-live`` parser with every subcommand registered."""
    parser = _Parser(
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


#: Exit status of a refused command (bad input or option; argparse uses 2 too).
EXIT_USAGE = 2
#: Exit status of a command that failed on its environment (disk, permissions, catalog).
EXIT_ENVIRONMENT = 1


def _user_error(exc: BaseException, run=None) -> tuple[str, int] | None:
    """``(one-line message, exit status)`` for an error the user can act on, else None.

    Errors of modules not yet imported cannot have been raised, so optional modules (the
    catalog's httpx and tiled) are only consulted when loaded: ``--help`` stays fast.
    """
    from labdct_live.io.errors import describe_os_error

    catalog = sys.modules.get("labdct_live.catalog")
    if catalog is not None and isinstance(exc, catalog.CatalogUnavailable):
        return str(exc), EXIT_ENVIRONMENT
    if isinstance(exc, (CLIError, ValueError)):
        return str(exc), EXIT_USAGE
    if isinstance(exc, (FileNotFoundError, FileExistsError)) and exc.strerror is None:
        return str(exc), EXIT_USAGE  # raised by our code with a sentence
    if isinstance(exc, OSError):  # from the system: name the path and the reason
        status = EXIT_USAGE if isinstance(exc, FileNotFoundError) else EXIT_ENVIRONMENT
        return describe_os_error(exc, run), status
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the ``labdct-live`` command line.

    Errors the user can act on (bad input, refused output folders, unwritable or full
    disks, unreachable catalogs) are printed as one line ``labdct-live CMD: error: ...``
    on stderr, without a traceback; anything else is a bug and propagates.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 for refused input or options, 1 for failures of the
        environment (disk, permissions, catalog), 130 on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from labdct_live.io.errors import CommandRun, command_context

    run = CommandRun(args.command)
    try:
        with command_context(args.command) as run:
            result = args.func(args)
    except KeyboardInterrupt:
        print(f"labdct-live {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        known = _user_error(exc, run)
        if known is None:
            raise
        message, status = known
        message = " ".join(message.split())  # one line, whatever the message held
        print(f"labdct-live {args.command}: error: {message}", file=sys.stderr)
        return status
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
