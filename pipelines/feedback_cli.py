"""The ``judo feedback`` sub-command's arguments; the work is in :mod:`pipelines.feedback`, imported when the
command runs so that ``judo --help`` and the other commands do not load torch and faiss."""

from __future__ import annotations

import argparse
from pathlib import Path

def register(subparsers: argparse._SubParsersAction) -> None:
    feedback = subparsers.add_parser("feedback", help="learn from operator feedback (the dashboard's verdict reviews)")
    actions = feedback.add_subparsers(dest="feedback_command", metavar="ACTION")
    actions.required = True
    apply = actions.add_parser(
        "apply", help="new feedback since the last apply: confirmed false alarms into the product's bank (a new "
                      "revision a running pipeline picks up), typed defects into its defect library, every reviewed "
                      "frame into an MVTec/MMAD folder for retraining")
    apply.add_argument("--config", type=Path, required=True, help="the pipeline config (Kafka, topics, banks)")
    apply.add_argument("--state", type=Path, default=None,
                       help="position file (default: feedback_state.json in the folder holding the banks)")
    apply.add_argument("--out", type=Path, default=None,
                       help="retraining folder (default: feedback_dataset/ beside the state file)")
    apply.set_defaults(func=_apply)


def _apply(args: argparse.Namespace) -> int:
    from pipelines.feedback import apply_command  # torch and faiss load with the command, not with `judo --help`

    return apply_command(args)
