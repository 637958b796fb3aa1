"""Label-guided distillation of the FOLK student (paper section 3.3, Eq. 7-12).

    python -m training.distill.train --cache DIR [DIR ...] --val-cache DIR [DIR ...] --mask3d CKPT
        (--clip local-dir:PATH | --clip-config NAME) --out DIR [--vocabulary scannet200|synthetic|a,b,c]
        [--lambda1 0.2 --lambda2 0.8 --tau 0.07] [--epochs 100 --batch-size 256 --lr 1e-3]
        [--hidden-dim 512] [--seed 0] [--threads N] [--device auto] [--resume]

    torchrun --nproc_per_node 2 -m training.distill.train ...   (same arguments: DDP)

Reads top to bottom:

1. Text: the training vocabulary (``--vocabulary``, :func:`training.data.vocabularies.vocabulary`)
   through CLIP with the prompt ``"a {} in the scene"`` -> (K, C) unit-norm text embeddings.
2. Instances of every teacher-cache scene (:mod:`training.teacher.cache`,
   :func:`training.distill.instances.load_instances`): the student's
   fixed input (the pooled frozen-Mask3D features of the proposal, Eq. 7, cached per scene by
   :class:`training.distill.features.FeatureCache`), the pseudo-label and target from the
   teacher's views (Eq. 8-10, :func:`training.teacher.pseudo_labels.pseudo_labels`) and, where the cache has
   GT proposals, the GT label's index in the vocabulary. Proposals whose views are all
   unusable, or that hold no points, are skipped and counted.
3. Training: the student's MLP (``Student.project``: 2 layers to the CLIP size, unit norm) on
   shuffled batches of instances drawn from all training scenes together, loss Eq. 11-12
   (:class:`training.distill.DistillLoss`), AdamW with linear warm-up and cosine decay
   (:func:`lr_at`).
4. After each epoch (:mod:`training.distill.evaluation`): agreement of the student's label (argmax of cosine to the text
   embeddings) with the pseudo-label on the training and validation instances, and with the GT
   label on validation instances that have one (plus the teacher's own GT agreement for
   reference); ``best.pt`` when the selection metric improves (``--select``: the GT agreement
   when the validation caches have GT, else the pseudo-label agreement; ties go to the lower
   validation loss), ``last.pt`` and
   ``metrics.json``, each written atomically.

Outputs in ``--out``:
    best.pt      ``Student.to_checkpoint()`` + tau, vocabulary, prompt_template, point_features,
                 mask3d_sha256, clip (identity), train_config, metrics (of its epoch), epoch, data
    last.pt      model, optimiser, epoch, RNG state, best so far, history: ``--resume`` continues
                 from it (a killed run loses at most the epoch in progress)
    metrics.json config, data summary, per-epoch history, best epoch

Determinism: the model is initialised from ``--seed``; each epoch's shuffle and the dropout stream
are derived from (seed, epoch[, rank]), so a resumed run reproduces an uninterrupted one exactly
(same threads, same machine).

Distributed: under ``torchrun`` (RANK and WORLD_SIZE set) the ranks join a process group (gloo on
CPU, nccl on CUDA, device cuda:LOCAL_RANK), the student is wrapped in DDP, and every epoch's
shuffled instance order is split between the ranks (``DistributedSampler``): ``--batch-size``
is the global batch, each rank takes ``ceil(batch / world)`` instances per step, and the
contrastive negatives of Eq. 11 are those of the rank's own part of the batch. Rank 0 encodes
the text and computes missing feature files, the others wait and then read them; only rank 0
writes files.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from folk_ros.core.checkpoint_io import load_weights
from folk_ros.core.clip import DEFAULT_TEMPLATE, ClipModel
from folk_ros.core.student import Student, StudentConfig
from training.atomic import torch_save_atomic, write_json_atomic
from training.cli import add_settings, help_of, setting, settings_from
from training.rng import rng_state, set_rng_state
from training.data.vocabularies import vocabulary
from training.distributed import DistInfo, distributed
from training.distill.evaluation import better, evaluate, select_metric
from training.distill.features import POINT_FEATURE_KINDS, FeatureCache, find_teacher_caches
from training.distill.instances import InstanceSet, load_instances
from training.distill.losses import DistillLoss, DistillLossConfig
from training.teacher.cache import BuildConfig, clip_identity

log = logging.getLogger("training.distill.train")

LAST_FORMAT = "folk_ros.distill.last"
SELECT_METRICS = ("auto", "gt", "pseudo", "loss")
# config fields a resumed run may change: they do not change what one epoch computes
RESUMABLE_CHANGES = ("epochs", "out", "threads", "device", "resume", "progress")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a distillation run depends on; every field is a flag of ``python -m training.distill.train``."""

    cache: tuple[str, ...] = setting((), "training teacher-cache folders or files", nargs="+", required=True)
    val_cache: tuple[str, ...] = setting((), "validation teacher-cache folders or files", nargs="+", required=True)
    mask3d: str = setting("", "frozen Mask3D checkpoint (point features)", required=True)
    out: str = setting("runs/distill", "output folder (best.pt, last.pt, metrics.json)", required=True)
    clip: str | None = setting(None, "CLIP weights, e.g. local-dir:models/folk-synth/clip")
    clip_config: str | None = setting(None, "RANDOM-weight CLIP of this architecture (plumbing only)")
    features: str | None = setting(None, "feature-file folder (default: next to each teacher cache)")
    point_features: str = setting("backbone", "Mask3D features the student pools: backbone or mask",
                                  choices=POINT_FEATURE_KINDS)
    vocabulary: str = setting("scannet200", "scannet200 | synthetic | a,b,c")
    template: str = setting(DEFAULT_TEMPLATE, "CLIP prompt of the text embeddings, {} = the name")
    lambda1: float = setting(0.2, "Eq. 12 contrastive weight (paper Table 5 best)")
    lambda2: float = setting(0.8, "Eq. 12 label cross-entropy weight")
    tau: float = setting(DistillLossConfig.temperature, "Eq. 11-12 temperature")
    min_views: int = setting(1, "usable teacher views an instance needs (Eq. 9)")
    hidden_dim: int = setting(512, "student MLP hidden width (Eq. 7)")
    dropout: float = setting(0.1, "student dropout probability")
    epochs: int = setting(100, "passes over the training instances")
    batch_size: int = setting(256, "instances per optimiser step (global under DDP)")
    lr: float = setting(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = setting(0.05, "AdamW weight decay")
    warmup: float = setting(0.05, "fraction of all steps with linear warm-up")
    select: str = setting("auto", "best.pt metric", choices=SELECT_METRICS)
    seed: int = setting(0, "seed of the weights and the batch order")
    threads: int = setting(0, "torch CPU threads (0: torch's default)")
    device: str = setting("auto", "auto, cpu or cuda")
    resume: bool = setting(False, "continue from <out>/last.pt")
    progress: bool = setting(True, "no tqdm progress bars")

    def __post_init__(self) -> None:
        if not self.cache or not self.val_cache:
            raise ValueError("give training (--cache) and validation (--val-cache) teacher caches")
        if not self.mask3d:
            raise ValueError("give the frozen Mask3D checkpoint (--mask3d) the point features come from")
        if (self.clip is None) == (self.clip_config is None):
            raise ValueError("give exactly one of clip (weights) and clip_config (random weights)")
        if self.point_features not in POINT_FEATURE_KINDS:
            raise ValueError(f"point_features must be one of {POINT_FEATURE_KINDS}, got {self.point_features!r}")
        if self.select not in SELECT_METRICS:
            raise ValueError(f"select must be one of {SELECT_METRICS}, got {self.select!r}")
        for name in ("epochs", "batch_size", "hidden_dim", "min_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.warmup < 1:
            raise ValueError(f"need lr > 0, weight_decay >= 0, 0 <= warmup < 1; got {self.lr}, "
                             f"{self.weight_decay}, {self.warmup}")
        self.loss_config()  # validates lambda1, lambda2, tau

    def loss_config(self) -> DistillLossConfig:
        return DistillLossConfig(lambda_contrastive=self.lambda1, lambda_ce=self.lambda2, temperature=self.tau)

    def identity(self) -> dict:
        """The fields a resumed run must share with the run it continues."""
        return {k: list(v) if isinstance(v, tuple) else v   # as the runs before frozen configs saved them
                for k, v in asdict(self).items() if k not in RESUMABLE_CHANGES}


def encode_vocabulary(cfg: TrainConfig, clip=None) -> tuple[tuple[str, ...], torch.Tensor, str]:
    """(vocabulary, (K, C) CPU text embeddings, CLIP identity) of the run."""
    vocab = vocabulary(cfg.vocabulary)   # validated: distinct non-empty names
    ident = clip_identity(BuildConfig(clip=cfg.clip, clip_config=cfg.clip_config))
    if clip is None:
        clip = (ClipModel(cfg.clip, device=cfg.device) if cfg.clip is not None
                else ClipModel.from_config(cfg.clip_config, device=cfg.device, seed=0))
    return vocab, clip.encode_text(vocab, cfg.template).float().cpu(), ident


# --------------------------------------------------------------------------- training pieces


class Projector(nn.Module):
    """The student's MLP on pooled features (``Student.project``) as a module DDP can wrap."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.student.project(pooled)


def lr_at(step: int, total: int, peak: float, warmup: float, floor: float = 0.05) -> float:
    """Learning rate at optimiser step ``step`` of ``total``.

    1. linear warm-up from peak/warm-up-steps to ``peak`` over the first ``warmup`` fraction;
    2. cosine decay from ``peak`` to ``floor * peak`` over the rest.
    """
    n_warm = int(warmup * total)
    if step < n_warm:
        return peak * (step + 1) / n_warm
    progress = (step - n_warm) / max(1, total - n_warm)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the dropout stream of one epoch on one rank (resume reproduces it)."""
    return (seed * 1_000_003 + epoch * 7919 + rank) % (2 ** 63)


def load_last(path: Path, cfg: TrainConfig) -> dict:
    """The state of ``last.pt``; ValueError when it belongs to a run with another identity."""
    state = load_weights(path, "cpu", what="distillation state")
    if not isinstance(state, dict) or state.get("format") != LAST_FORMAT:
        raise ValueError(f"{path} is not a {LAST_FORMAT} checkpoint")
    old, new = state["identity"], cfg.identity()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"--resume: {path} was written by a run with other settings: "
                         + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff))
    return state


# --------------------------------------------------------------------------- the run


def _share_text(env: DistInfo, cfg: TrainConfig, clip) -> tuple[tuple[str, ...], torch.Tensor, str]:
    """Rank 0 encodes the vocabulary; the other ranks receive it."""
    payload = [encode_vocabulary(cfg, clip) if env.is_main else None]
    if env.enabled:
        dist.broadcast_object_list(payload, src=0)
    return payload[0]


def _load_sets(env: DistInfo, cfg: TrainConfig, vocab, text, clip_id) -> tuple[InstanceSet, InstanceSet, dict]:
    """Training and validation instances; rank 0 computes missing feature files first."""
    fc = FeatureCache(cfg.mask3d, cfg.point_features, cfg.features, env.device)
    train_paths, val_paths = find_teacher_caches(cfg.cache), find_teacher_caches(cfg.val_cache)
    t0 = time.perf_counter()
    sets = None
    for turn in ("main", "others"):
        if (turn == "main") == env.is_main:
            show = cfg.progress and env.is_main
            sets = (load_instances(train_paths, text, vocab, fc, cfg.min_views, env.is_main, clip_id, show, "train"),
                    load_instances(val_paths, text, vocab, fc, cfg.min_views, env.is_main, clip_id, show, "val"))
        env.barrier()
    train, val = sets
    overlap = sorted(set(train.scene_ids) & set(val.scene_ids))
    if overlap:
        log.warning("%d scenes are in both the training and validation caches (e.g. %s)", len(overlap), overlap[0])
    if not len(train) or not len(val):
        raise ValueError(f"no usable instances: train {train.stats}, val {val.stats}")
    return train, val, {"train": train.stats, "val": val.stats, "seconds": time.perf_counter() - t0,
                        "mask3d_sha256": fc.mask3d_sha256}


def train(cfg: TrainConfig, clip=None, on_epoch_end=None) -> dict:
    """Run (or resume) a distillation; returns the metrics.json record.

    Args:
        cfg: the run's settings.
        clip: an already loaded ClipModel matching ``cfg.clip`` / ``cfg.clip_config`` (saves a load).
        on_epoch_end: optional ``f(epoch_record)`` called after each epoch's files are written.
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    with distributed(cfg.device) as env:
        return _run(cfg, env, clip, on_epoch_end)


def _run(cfg: TrainConfig, env: DistInfo, clip, on_epoch_end) -> dict:
    out = Path(cfg.out)
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.json"
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if last_path.exists() and not cfg.resume:
            raise ValueError(f"{out} already holds a run (last.pt): pass --resume or choose another --out")
    state = load_last(last_path, cfg) if cfg.resume and last_path.exists() else None
    if cfg.resume and state is None and env.is_main:
        log.info("--resume: no %s yet, starting from scratch", last_path)

    vocab, text, clip_id = _share_text(env, cfg, clip)
    train_set, val_set, data_summary = _load_sets(env, cfg, vocab, text, clip_id)
    dev = env.device
    text, train_set, val_set = text.to(dev), train_set.to(dev), val_set.to(dev)

    torch.manual_seed(cfg.seed)
    student = Student(StudentConfig(in_dim=train_set.features.shape[1], hidden_dim=cfg.hidden_dim,
                                    out_dim=text.shape[1], dropout=cfg.dropout)).to(dev)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    best = {"epoch": None, "value": None}
    start = 0
    if state is not None:
        student.load_state_dict(state["student"]["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        history, best, start = state["history"], state["best"], state["epoch"]
        if env.is_main:
            log.info("resuming %s after epoch %d of %d", out, start, cfg.epochs)
    model = Projector(student)
    if env.enabled:
        model = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    loss_fn = DistillLoss(cfg.loss_config())
    metric, higher = select_metric(cfg.select, val_set)
    sampler = DistributedSampler(range(len(train_set)), num_replicas=env.world_size, rank=env.rank,
                                 shuffle=True, seed=cfg.seed)
    local_batch = math.ceil(cfg.batch_size / env.world_size)
    steps_per_epoch = math.ceil(len(sampler) / local_batch)
    total_steps = steps_per_epoch * cfg.epochs

    def record() -> dict:
        return {"config": asdict(cfg), "vocabulary": list(vocab), "clip": clip_id, "world_size": env.world_size,
                "data": data_summary, "select": metric, "best": best, "history": history}

    bar = tqdm(range(start, cfg.epochs), desc="distill", unit="epoch", disable=not (cfg.progress and env.is_main))
    for epoch in bar:
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch, env.rank))
        order = torch.tensor(list(sampler), dtype=torch.long, device=dev)
        model.train()
        sums = torch.zeros(4, dtype=torch.float64, device=dev)       # loss, contrastive, ce, instances
        for i, idx in enumerate(order.split(local_batch)):
            lr = lr_at(epoch * steps_per_epoch + i, total_steps, cfg.lr, cfg.warmup)
            for g in optimizer.param_groups:
                g["lr"] = lr
            terms = loss_fn(model(train_set.features[idx]), train_set.targets[idx], text, train_set.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            n = len(idx)
            sums += torch.stack([terms["loss"].detach() * n, terms["contrastive"].detach() * n,
                                 terms["ce"].detach() * n, torch.tensor(float(n), device=dev)]).double()
        if env.enabled:
            dist.all_reduce(sums)
        tr = evaluate(student, train_set, text, loss_fn, cfg.batch_size)
        va = evaluate(student, val_set, text, loss_fn, cfg.batch_size)
        rec = {"epoch": epoch + 1, "lr": lr, "train_loss": float(sums[0] / sums[3]),
               "train_contrastive": float(sums[1] / sums[3]), "train_ce": float(sums[2] / sums[3]),
               "train_pseudo_acc": tr["pseudo_acc"], "val_loss": va["loss"], "val_pseudo_acc": va["pseudo_acc"],
               "val_gt_acc": va["gt_acc"], "val_teacher_gt_acc": va["teacher_gt_acc"],
               "val_gt_instances": va["gt_instances"], "seconds": time.perf_counter() - t0}
        history.append(rec)
        value = rec[metric]
        improved = best["value"] is None or better(rec, best, higher)
        if improved:
            best = {"epoch": epoch + 1, "value": value, "metric": metric, "val_loss": rec["val_loss"]}
        if env.is_main:
            if improved:
                torch_save_atomic(student.to_checkpoint(
                    tau=cfg.tau, vocabulary=list(vocab), prompt_template=cfg.template,
                    point_features=cfg.point_features, mask3d_sha256=data_summary["mask3d_sha256"], clip=clip_id,
                    train_config=asdict(cfg), metrics=rec, epoch=epoch + 1,
                    data={"train": train_set.stats, "val": val_set.stats}), best_path)
            torch_save_atomic({"format": LAST_FORMAT, "epoch": epoch + 1, "student": student.to_checkpoint(),
                               "optimizer": optimizer.state_dict(), "rng": rng_state(),
                               "best": best, "history": history, "identity": cfg.identity()}, last_path)
            write_json_atomic(metrics_path, record())
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", train=f"{rec['train_pseudo_acc']:.3f}",
                        val=f"{value:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(rec)
    bar.close()
    return record()


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m training.distill.train", description=__doc__.split("\n\n")[0])
    add_settings(p, TrainConfig, skip=("clip", "clip_config"))
    clip = p.add_mutually_exclusive_group(required=True)
    for name in ("clip", "clip_config"):
        clip.add_argument("--" + name.replace("_", "-"), help=help_of(TrainConfig, name))
    try:
        return settings_from(TrainConfig, p.parse_args(argv))
    except ValueError as e:
        p.error(str(e))


def run(argv: list[str] | None = None) -> dict:
    summary = train(parse_args(argv))
    if int(os.environ.get("RANK", "0")) == 0:
        b = summary["best"]
        print(f"distilled student: best {b['metric']} = {b['value']:.4f} at epoch {b['epoch']} "
              f"-> {Path(summary['config']['out']) / 'best.pt'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run`; 0 when the run completed (errors raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
