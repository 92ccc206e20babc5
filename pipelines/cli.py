"""The ``judo`` command.

Each area of the project owns its subcommands and registers them here through a
``register(subparsers)`` function, so this file stays a table of contents:
infrastructure (``kafka``), data and model (``data``, ``eval``, ``train``),
the prefilter (``prefilter``) and the pipeline (``demo``, ``run``, ...).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Modules that contribute subcommands, each exposing ``register(subparsers)``.
COMMAND_MODULES = (
    "cluster.cli",
    "judo_model.cli",
    "actors.cli",
    "pipelines.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="judo",
        description="JUDO Inspect: plant-wide visual inspection on Kafka, Ray and the JUDO reasoner.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
