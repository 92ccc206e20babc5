"""``judo train --ray-workers N``: one supervised JUDO stage (note, seg or sft) as a Ray Train job.

The training is ``judo_model``'s own (:func:`judo_model.training.pipeline.open_run`, the stage methods,
:func:`judo_model.training.sft.train_on_pairs`: TRL's ``SFTTrainer``); inside a Ray Train worker
``torch.distributed`` is initialised (gloo on CPU, NCCL on GPU: Ray Train's ``TorchConfig`` default), so the
trainer wraps the model in DDP itself, every worker training on its slice of the batch every worker draws, and
logs the loss averaged over the workers. This module gives it :class:`judo_model.training.sft.TrainerHooks`:

* every ``checkpoint_every`` steps and after the last the trainer saves its checkpoint (the trainable weights:
  the LoRA adapters for the 3B/7B presets, every weight for ``tiny``; optimizer, scheduler, step and log
  history), and :class:`ReportCheckpoints` reports it as a Ray Train checkpoint (``ray.train.report``, rank 0's,
  in ``checkpoint/``, as Ray's own ``RayTrainReportCallback`` lays it out, named by stage and step);
* on a start with the same run name and storage (a rerun after a crash or a preemption, or Ray Train's own
  retries, ``FailureConfig``) ``ray.train.get_checkpoint()`` gives that checkpoint back and the trainer resumes
  from it: weights, optimizer, scheduler and curve restored, the batches already trained drawn again and
  dropped, training continuing at the next step.

Ray's ``prepare_trainer`` is not used: it only feeds Ray Data datasets to the trainer, and the stages draw
their own batches. The last checkpoint also holds ``model/``: the merged Hugging Face folder (processor, chat
template and ``judo_training.json``), which the driver copies to ``--out``. Every node must see the data
folder, the ``--base``/``--init`` folder and the storage at the same paths (a shared filesystem;
docs/judo_training.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, get_device
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from cluster.ray_runtime import start_ray, stop_ray
from judo_model.modeling import save_checkpoint
from judo_model.presets import get_preset
from judo_model.runtime.inputs import read_training_log
from judo_model.training.evidence import prepare_evidence
from judo_model.training.pipeline import TrainingLog, check_start, open_run, plot_curves
from judo_model.training.recipe import Recipe
from judo_model.training.sft import TrainerHooks, resumed_step

#: The stages that run on Ray Train: the supervised ones (Stage 3, GRPO, runs in one process).
RAY_STAGES = ("note", "seg", "sft")
#: In a checkpoint: the trainer's checkpoint folder (named as Ray's ``RayTrainReportCallback`` names it), and
#: (last checkpoint only) the merged model folder.
TRAINER_DIR = "checkpoint"
MODEL_DIR = "model"


@dataclass(frozen=True)
class RayTrainOptions:
    """How the job runs: workers, cluster, where checkpoints live, how often, on what device."""

    workers: int = 2
    address: str | None = None
    storage: Path | None = None
    name: str | None = None
    checkpoint_every: int = 50
    use_gpu: bool = False
    #: Ray Train restarts the workers from the last checkpoint this many times after a worker fails
    max_failures: int = 1


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a stage trains (requires_grad), on the CPU: the LoRA adapters of a 3B/7B preset."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


class RayTrainWorker:
    """One Ray Train worker's :class:`TrainerHooks`: the trainer's checkpoints reported to Ray Train, the run
    resumed from its latest. ``scratch``: this worker's local folder for the trainer's checkpoints."""

    def __init__(self, stage: str, checkpoint_every: int, scratch: Path):
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.stage, self.every = stage, max(1, checkpoint_every)
        self.device = get_device()
        self.output_dir = scratch / "trainer"
        checkpoint = ray.train.get_checkpoint()
        self.resume_from = self.restore(checkpoint, scratch / "resumed")
        self.resumed_at = resumed_step(self.resume_from)
        if checkpoint is not None:
            print(f"{self.stage}: resuming at step {self.resumed_at} from {checkpoint.path}", flush=True)

    def restore(self, checkpoint: ray.train.Checkpoint | None, folder: Path) -> str | None:
        """The trainer checkpoint in the run's latest Ray Train checkpoint, copied to ``folder`` (None: a fresh run)."""
        if checkpoint is None:
            return None
        stage = checkpoint.get_metadata().get("stage")
        if stage != self.stage:
            raise ValueError(f"the run's last checkpoint is of stage {stage!r}, not {self.stage!r}: "
                             "give this stage its own --ray-run-name")
        checkpoint.to_directory(folder)
        return str(folder / TRAINER_DIR)

    def hooks(self) -> TrainerHooks:
        return TrainerHooks(str(self.output_dir), self.every, callbacks=[ReportCheckpoints(self)],
                            resume_from=self.resume_from)

    def trainer_checkpoint(self, step: int) -> Path:
        """The trainer's checkpoint folder of ``step`` (rank 0's: the others save only their random state)."""
        return self.output_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}"

    def check_in_sync(self, model: torch.nn.Module) -> None:
        """Raise unless every worker holds the same trained weights (DDP averaged their gradients)."""
        digest = hashlib.sha256()
        for value in trainable_state(model).values():
            digest.update(value.contiguous().view(torch.uint8).numpy().tobytes())
        digests = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(digests, digest.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"the workers' trained weights differ after {self.stage}: {digests}")

    def record(self) -> dict:
        """What ``judo_training.json`` says about the job."""
        return {"ray_train": True, "workers": self.world_size,
                "backend": dist.get_backend() if dist.is_initialized() else None, "device": str(self.device),
                "checkpoint_every": self.every, "resumed_at_step": self.resumed_at,
                "weights_identical_across_workers": True}

    def publish(self, metrics: dict, write, name: str) -> None:
        """``ray.train.report`` on every worker (Ray Train expects all of them), the checkpoint from rank 0."""
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as folder:
            write(Path(folder))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            checkpoint.set_metadata({"stage": self.stage})
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


class ReportCheckpoints(TrainerCallback):
    """Each checkpoint the trainer saves, reported to Ray Train (Ray's ``RayTrainReportCallback`` reports every
    worker's copy under a generated name; this one rank 0's, named ``<stage>-step<step>``)."""

    def __init__(self, worker: RayTrainWorker):
        self.worker = worker

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        self.worker.publish({"stage": self.worker.stage, "step": step, "loss": losses[-1] if losses else None},
                            lambda folder: shutil.copytree(self.worker.trainer_checkpoint(step), folder / TRAINER_DIR),
                            f"{self.worker.stage}-step{step:06d}")


def train_worker(config: dict) -> None:
    """Ray Train's loop per worker: open the run, train the stage as one data-parallel worker, report the
    merged model (rank 0)."""
    stage = config["stage"]
    with tempfile.TemporaryDirectory(prefix=f"judo-ray-{stage}-") as scratch:
        worker = RayTrainWorker(stage, config["checkpoint_every"], Path(scratch))
        run, log = open_run(config["data"], config["out"], stage, Recipe.from_dict(config["recipe"]),
                            config["init"], config["train_file"], config["preset"], config["base"],
                            hooks=worker.hooks())
        started = time.time()
        curve = getattr(run, stage)()
        if curve is None:
            raise ValueError(f"the recipe skips stage {stage!r}: nothing to train")
        curve.seconds = time.time() - started  # this job's seconds (a resumed run counts its own)
        log.stages.append(curve.as_dict())
        worker.check_in_sync(run.model)
        log.distributed = worker.record()
        done = curve.steps[-1] + 1 if curve.steps else 0

        def write(folder: Path) -> None:
            shutil.copytree(worker.trainer_checkpoint(done), folder / TRAINER_DIR)  # saved after the last step
            saved = save_checkpoint(run.model, run.processor, folder / MODEL_DIR)  # merges LoRA: last use of it
            log.write(saved)

        worker.publish({"stage": stage, "step": done, "loss": curve.values["loss"][-1] if curve.steps else None,
                        "final": True}, write, f"{stage}-final{done:06d}")


def train_on_ray(data_dir: str | Path, out_dir: str | Path, stage: str = "sft", recipe: Recipe | None = None,
                 init: str | Path | None = None, preset: str = "tiny", base: str | Path | None = None,
                 train_file: str = "mmad_train.json", options: RayTrainOptions | None = None,
                 curves_png: str | Path | None = None) -> TrainingLog:
    """Train ``stage`` on Ray Train and write the merged checkpoint to ``out_dir``; its training log."""
    options = options or RayTrainOptions()
    check_start(stage, preset, base, init)
    if stage not in RAY_STAGES:
        raise ValueError(f"--ray-workers trains one supervised stage ({', '.join(RAY_STAGES)}), not {stage!r}: "
                         "run the stages one after the other with --init")
    if get_preset(preset).from_scratch and init is None:
        raise ValueError("the tiny preset starts a Ray Train job from a checkpoint (--init): every worker must "
                         "hold the same tokenizer")
    recipe = recipe or Recipe()
    if getattr(recipe, stage).batch_size % options.workers:
        raise ValueError(f"--{stage}-batch-size {getattr(recipe, stage).batch_size} is the global batch: "
                         f"the same number of rows for each of the {options.workers} workers")
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    if recipe.evidence_route:  # once, here: the workers read the cached maps
        prepare_evidence(data_dir, progress=lambda c: print(f"evidence: {c}", flush=True))
    storage = Path(options.storage or out_dir.with_name(out_dir.name + ".ray")).resolve()
    config = {"data": str(data_dir), "out": str(out_dir), "stage": stage, "recipe": recipe.as_dict(),
              "init": None if init is None else str(Path(init).resolve()), "preset": preset,
              "base": None if base is None else str(Path(base).resolve()), "train_file": train_file,
              "checkpoint_every": options.checkpoint_every}
    started = start_ray(options.address, num_cpus=None if options.address else max(options.workers, os.cpu_count()))
    try:
        trainer = TorchTrainer(
            train_worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=options.use_gpu),
            run_config=RunConfig(name=options.name or f"judo-{preset}-{stage}", storage_path=str(storage),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=options.max_failures)))
        result = trainer.fit()
    finally:
        if started:
            stop_ray()
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray Train job reported no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        model = Path(folder) / MODEL_DIR
        if not model.is_dir():
            raise RuntimeError(f"the job's last checkpoint {result.checkpoint.path} holds no merged model")
        shutil.copytree(model, out_dir, dirs_exist_ok=True)
    record = read_training_log(out_dir)
    log = TrainingLog(**{key: value for key, value in record.items() if key in TrainingLog.__dataclass_fields__})
    if curves_png is not None:
        plot_curves(log.stages, curves_png)
    print(f"{stage}: Ray Train run {result.path}", flush=True)
    return log
