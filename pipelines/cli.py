"""The ``judo`` command.

Each area of the project owns its subcommands and registers them here through a
``register(subparsers)`` function, so this file stays a table of contents: infrastructure
(``kafka``), data and model (``data``, ``eval``, ``train``), the prefilter (``prefilter``), the
pipeline (``run``) and learning from operator feedback (``feedback``). Packages layered above the runtime (``tooling``: ``demo``, ``simulate``,
``dashboard``) add theirs through the ``judo.commands`` entry-point group, so the runtime never
imports them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from cluster import cli as cluster_cli
from judo_model import cli as judo_model_cli
from judo_model.prefilter import cli as prefilter_cli
from pipelines import commands as pipeline_commands
from pipelines import feedback_cli, train_cli

#: Runtime modules that contribute subcommands, each exposing ``register(subparsers)``.
COMMAND_MODULES = (cluster_cli, judo_model_cli, prefilter_cli, pipeline_commands, feedback_cli, train_cli)
#: Loggers whose INFO messages are not news to a user: faiss's search for its AVX builds.
QUIET_LOGGERS = ("faiss.loader",)
#: Entry-point group of ``register(subparsers)`` functions from packages above the runtime.
ENTRY_POINT_GROUP = "judo.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="judo",
        description="JUDO Inspect: plant-wide visual inspection on Kafka, Ray and the JUDO reasoner.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in COMMAND_MODULES:
        module.register(subparsers)
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        entry_point.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in QUIET_LOGGERS:  # their INFO lines read like errors ("Could not load library with AVX2 ...")
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
