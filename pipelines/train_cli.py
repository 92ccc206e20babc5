"""``judo train --ray-workers N``: the training command of :mod:`judo_model.training.cli`, run as a Ray Train
job. Ray lives above the model package, so this module adds the Ray flags to the ``train`` parser that
``judo_model`` registered, and sends the run to :func:`pipelines.ray_training.train_on_ray` when they ask."""

from __future__ import annotations

import argparse
from pathlib import Path

from judo_model.training.cli import print_training_log, recipe_from_args


def _run_train(args: argparse.Namespace) -> int:
    if not args.ray_workers:
        return args.train_here(args)
    # CLI start-up: Ray Train, torch and transformers load only for `judo train --ray-workers`
    from pipelines.ray_training import RayTrainOptions, train_on_ray
    options = RayTrainOptions(workers=args.ray_workers, address=args.ray_address, storage=args.ray_storage,
                              name=args.ray_run_name, checkpoint_every=args.ray_checkpoint_every,
                              use_gpu=args.ray_gpu)
    log = train_on_ray(args.data, args.out, stage=args.stage, recipe=recipe_from_args(args), init=args.init,
                       preset=args.preset, base=args.base, train_file=args.train_file, options=options,
                       curves_png=args.curves)
    return print_training_log(log, args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the Ray Train flags to ``judo train`` (registered before this by ``judo_model.cli``)."""
    parser = subparsers.choices["train"]
    ray = parser.add_argument_group("Ray Train (one supervised stage: note, seg or sft; pipelines/ray_training.py)")
    ray.add_argument("--ray-workers", type=int, default=0, help="data-parallel workers (DDP); 0: train here")
    ray.add_argument("--ray-address", help="a running Ray cluster (default: start a local Ray)")
    ray.add_argument("--ray-storage", type=Path, help="checkpoint storage, shared by every node (default OUT.ray)")
    ray.add_argument("--ray-run-name", help="the run's name; the same name and storage resume its last checkpoint")
    ray.add_argument("--ray-checkpoint-every", type=int, default=50, help="steps between checkpoints")
    ray.add_argument("--ray-gpu", action="store_true", help="one GPU per worker (NCCL); default CPU (gloo)")
    parser.set_defaults(train_here=parser.get_default("func"), func=_run_train)
