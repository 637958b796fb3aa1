"""Before/after timing of the pure-PyTorch sparse backend and Mask3D hot spots on CPU.

Two versions of ``folk_ros`` are compared: "before" is the package as committed
at ``--before-rev`` (exported read-only with ``git archive`` into a temporary
folder), "after" is the working tree.  Each version runs in its own persistent
worker process (``torch.set_num_threads(--threads)``, OMP/MKL threads alike);
the driver asks the two workers in turn (before, after, before, after...) for
one measurement of a case, so both see the same machine load.  It records the
1-minute load average at every measurement, reports medians, and writes JSON to
``out/bench/sparse_ops.json``.

Cases:

* ``conv``: forward + backward (input and kernel gradients) of every convolution
  shape of Res16UNet34C (ScanNet200 widths) on a synthetic room at ~50k voxels
  (2 cm), kernel maps built beforehand (they are cached per scene);
* ``train_small``: one training step of the ``small`` preset (forward, set
  criterion of :mod:`training.mask3d.losses`, backward) on a 160k-point room at
  4 cm voxels, GT masks = 1 m floor cells;
* ``infer_scannet200``: ``Mask3D.predict`` of the full-size model (random
  weights) on a 50k-point room (voxelise, backbone, decoder, post-processing);
* ``fps``: ``furthest_point_sample`` of 150 queries on the 50k-point room's voxels;
* ``voxelize``: ``voxelize`` of a 160k-point room at 2 cm.

Each result also carries a fingerprint of the outputs (loss, logits) so that the
two versions can be seen to compute the same thing.

Usage::

    python -m bench.bench_sparse_ops [--cases conv train_small infer_scannet200 fps voxelize]
                                     [--repeats 3] [--threads 2] [--before-rev 1a87655]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "out" / "bench" / "sparse_ops.json"
DEFAULT_BEFORE = "1a87655"   # last commit before the gather-based sparse convolution
CASES = ("conv", "train_small", "infer_scannet200", "fps", "voxelize")

# Res16UNet34C (ScanNet200 planes) convolutions: (name, tensor stride, kind, kernel, Cin, Cout)
UNET_CONVS = (
    ("conv0p1s1", 1, "sub", 5, 3, 32), ("conv1p1s2", 1, "down", 2, 32, 32),
    ("block1", 2, "sub", 3, 32, 32), ("conv2p2s2", 2, "down", 2, 32, 32),
    ("block2.in", 4, "sub", 3, 32, 64), ("block2", 4, "sub", 3, 64, 64), ("conv3p4s2", 4, "down", 2, 64, 64),
    ("block3.in", 8, "sub", 3, 64, 128), ("block3", 8, "sub", 3, 128, 128), ("conv4p8s2", 8, "down", 2, 128, 128),
    ("block4.in", 16, "sub", 3, 128, 256), ("block4", 16, "sub", 3, 256, 256),
    ("convtr4p16s2", 16, "up", 2, 256, 256), ("block5.in", 8, "sub", 3, 384, 256),
    ("convtr5p8s2", 8, "up", 2, 256, 128), ("block6.in", 4, "sub", 3, 192, 128), ("block6", 4, "sub", 3, 128, 128),
    ("convtr6p4s2", 4, "up", 2, 128, 96), ("block7.in", 2, "sub", 3, 128, 96), ("block7", 2, "sub", 3, 96, 96),
    ("convtr7p2s2", 2, "up", 2, 96, 96), ("block8.in", 1, "sub", 3, 128, 96), ("block8", 1, "sub", 3, 96, 96),
)


# ------------------------------------------------------------ the worker ----

class Worker:
    """Builds each case's inputs once and times one run of it per request."""

    def __init__(self, threads: int, seed: int):
        import torch

        torch.set_num_threads(threads)
        self.seed = seed
        self.state: dict = {}

    def room(self, points: int):
        from bench.bench_mask3d import room_cloud

        return room_cloud(points, self.seed)

    # -- conv -----------------------------------------------------------------
    def setup_conv(self):
        import torch

        from folk_ros.core.sparse import SparseConv3d, SparseTensor
        from folk_ros.core.voxelize import voxelize

        xyz, _ = self.room(52_000)
        coords = torch.from_numpy(voxelize(xyz, 0.02).coords)
        x = SparseTensor.from_coords(coords, torch.zeros(coords.shape[0], 1))
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)                     # same kernels in both versions
        layers = []
        for name, stride, kind, ks, cin, cout in UNET_CONVS:
            conv = SparseConv3d(cin, cout, kernel_size=ks, stride=1 if kind == "sub" else 2,
                                transposed=kind == "up")
            src_stride = stride
            n_in = x.manager.coords(src_stride).shape[0]
            feats = torch.randn(n_in, cin, generator=g)
            inp = SparseTensor(feats, src_stride, x.manager)
            with torch.no_grad():
                conv(inp)                           # builds and caches the kernel map (and tables)
            layers.append((name, conv, feats))
        return {"layers": layers, "mgr": x.manager, "voxels": int(coords.shape[0])}

    def run_conv(self, st) -> dict:
        import torch

        from folk_ros.core.sparse import SparseTensor

        per_layer, total, fp = {}, 0.0, 0.0
        for (name, conv, feats), spec in zip(st["layers"], UNET_CONVS):
            f = feats.clone().requires_grad_(True)
            conv.zero_grad(set_to_none=True)
            t = time.perf_counter()
            out = conv(SparseTensor(f, spec[1], st["mgr"]))
            out.F.backward(torch.ones_like(out.F))
            dt = time.perf_counter() - t
            per_layer[name] = dt
            total += dt
            fp += float(out.F.detach().double().abs().sum()) + float(conv.kernel.grad.double().abs().sum())
        return {"seconds": total, "per_layer_s": per_layer, "fingerprint": fp, "voxels": st["voxels"]}

    # -- training step ----------------------------------------------------------
    def setup_train_small(self):
        from dataclasses import replace

        import numpy as np
        import torch

        from folk_ros.core.mask3d import Mask3D, preset
        from folk_ros.core.mask3d.preprocess import normalize_colors, voxelize
        from training.mask3d.losses import CriterionConfig, SetCriterion

        xyz, rgb = self.room(160_000)
        cfg = replace(preset("small"), num_classes=2, voxel_size=0.04)
        vox = voxelize(xyz, cfg.voxel_size)
        cell = np.floor(xyz[vox.unique_map, :2]).astype(np.int64)        # 1 m floor cells as "instances"
        _, inst = np.unique(cell, axis=0, return_inverse=True)
        inst = inst.reshape(-1)
        ids, counts = np.unique(inst, return_counts=True)
        ids = ids[counts >= 10]
        torch.manual_seed(self.seed)
        model = Mask3D(cfg).train()
        return {
            "model": model, "criterion": SetCriterion(CriterionConfig(num_classes=1)),
            "coords": torch.from_numpy(vox.coords),
            "feats": torch.from_numpy(normalize_colors(rgb, cfg.color_mean, cfg.color_std)[vox.unique_map]),
            "raw": torch.from_numpy(xyz[vox.unique_map]),
            "targets": [{"labels": torch.zeros(len(ids), dtype=torch.int64),
                         "masks": torch.from_numpy(inst[None, :] == ids[:, None])}],
            "voxels": int(vox.coords.shape[0]),
        }

    def run_train_small(self, st) -> dict:
        import torch

        torch.manual_seed(self.seed)                 # same level sampling in both versions
        model = st["model"]
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        out = model(st["coords"], st["feats"], st["raw"])
        terms = st["criterion"](out, st["targets"])
        terms["loss"].backward()
        dt = time.perf_counter() - t
        grad = sum(float(p.grad.double().abs().sum()) for p in model.parameters() if p.grad is not None)
        return {"seconds": dt, "fingerprint": float(terms["loss"]), "grad_abs_sum": grad, "voxels": st["voxels"]}

    # -- inference ------------------------------------------------------------
    def setup_infer_scannet200(self):
        import torch

        from folk_ros.core.mask3d import Mask3D, preset

        xyz, rgb = self.room(50_000)
        torch.manual_seed(self.seed)
        return {"model": Mask3D(preset("scannet200")).eval(), "xyz": xyz, "rgb": rgb}

    def run_infer_scannet200(self, st) -> dict:
        from folk_ros.core.mask3d import PostprocessConfig

        t = time.perf_counter()
        p = st["model"].predict(st["xyz"], st["rgb"], post=PostprocessConfig(use_dbscan=False))
        dt = time.perf_counter() - t
        return {"seconds": dt, "fingerprint": float(p.scores.double().sum()), "proposals": int(p.masks.shape[0])}

    # -- FPS / voxelize ---------------------------------------------------------
    def setup_fps(self):
        import torch

        from folk_ros.core.voxelize import voxelize

        xyz, _ = self.room(50_000)
        return {"coords": torch.from_numpy(voxelize(xyz, 0.02).coords).float()}

    def run_fps(self, st) -> dict:
        try:
            from folk_ros.core.mask3d.fps import furthest_point_sample
        except ModuleNotFoundError:   # "before" versions older than 2ac7f17 keep it in the decoder
            from folk_ros.core.mask3d.decoder import furthest_point_sample

        t = time.perf_counter()
        idx = furthest_point_sample(st["coords"], 150)
        dt = time.perf_counter() - t
        return {"seconds": dt, "fingerprint": float(idx.double().sum()), "points": int(st["coords"].shape[0])}

    def setup_voxelize(self):
        xyz, _ = self.room(160_000)
        return {"xyz": xyz}

    def run_voxelize(self, st) -> dict:
        from folk_ros.core.voxelize import voxelize

        t = time.perf_counter()
        v = voxelize(st["xyz"], 0.02)
        dt = time.perf_counter() - t
        return {"seconds": dt, "fingerprint": float(v.unique_map.sum() + v.inverse_map.sum()),
                "voxels": int(v.coords.shape[0])}

    def measure(self, case: str) -> dict:
        if case not in self.state:
            st = getattr(self, f"setup_{case}")()
            self.state[case] = st
            getattr(self, f"run_{case}")(st)        # warm-up
        return getattr(self, f"run_{case}")(self.state[case])


def serve(tree: str, threads: int, seed: int) -> None:
    """Worker loop: one JSON request per stdin line -> one JSON reply per stdout line."""
    sys.path[:0] = [tree, str(REPO)]
    worker = Worker(threads, seed)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = worker.measure(req["case"])
        except Exception as err:  # reported to the driver, which raises
            reply = {"error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)


# ------------------------------------------------------------ the driver ----

def export_tree(rev: str, dest: Path) -> Path:
    """``folk_ros`` as committed at ``rev`` under ``dest`` (``git archive``, read-only)."""
    with tempfile.TemporaryFile() as tar:
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "folk_ros"], stdout=tar, check=True)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as tf:
            tf.extractall(dest, filter="data")
    return dest


class WorkerProcess:
    def __init__(self, tree: Path, threads: int, seed: int):
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(tree), "--threads", str(threads),
             "--seed", str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)

    def measure(self, case: str) -> dict:
        self.proc.stdin.write(json.dumps({"case": case}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(f"worker failed on {case}: {reply['error']}")
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def summarize(rows: list[dict]) -> dict:
    """Median seconds per (case, version), speed-up, median load, fingerprints."""
    out = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        med = {}
        for version in ("before", "after"):
            rs = [r for r in rows if r["case"] == case and r["version"] == version]
            med[version] = {"median_s": statistics.median(r["seconds"] for r in rs),
                            "runs_s": [r["seconds"] for r in rs],
                            "fingerprint": rs[-1].get("fingerprint")}
            if case == "conv":
                med[version]["per_layer_median_s"] = {
                    k: statistics.median(r["per_layer_s"][k] for r in rs) for k in rs[0]["per_layer_s"]}
        loads = [r["load"] for r in rows if r["case"] == case]
        out[case] = {**med, "speedup": med["before"]["median_s"] / max(med["after"]["median_s"], 1e-12),
                     "median_load": statistics.median(loads)}
    return out


def format_report(summary: dict) -> str:
    lines = [f"{'case':>18} {'before s':>10} {'after s':>10} {'speed-up':>9} {'load':>6}  fingerprint before / after"]
    for case, s in summary.items():
        lines.append(f"{case:>18} {s['before']['median_s']:>10.3f} {s['after']['median_s']:>10.3f} "
                     f"{s['speedup']:>8.1f}x {s['median_load']:>6.1f}  "
                     f"{s['before']['fingerprint']:.6g} / {s['after']['fingerprint']:.6g}")
        if case == "conv":
            for k, b in s["before"]["per_layer_median_s"].items():
                a = s["after"]["per_layer_median_s"][k]
                lines.append(f"{'  ' + k:>18} {b:>10.3f} {a:>10.3f} {b / max(a, 1e-12):>8.1f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="which operations to time")
    p.add_argument("--repeats", type=int, default=3, help="measurements per case and version (after a warm-up)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    p.add_argument("--before-rev", default=DEFAULT_BEFORE, help="git revision of the 'before' folk_ros")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result path")
    p.add_argument("--serve", metavar="TREE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1")
    return args


def run(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.threads, args.seed)
        return None
    from tqdm import tqdm

    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="folk_before_") as tmp:
        trees = {"before": export_tree(args.before_rev, Path(tmp)), "after": REPO}
        workers = {v: WorkerProcess(t, args.threads, args.seed) for v, t in trees.items()}
        try:
            jobs = [(c, r, v) for c in args.cases for r in range(args.repeats) for v in ("before", "after")]
            for case, rep, version in tqdm(jobs, desc="sparse-ops bench", unit="run"):
                load = os.getloadavg()[0]
                rows.append({"case": case, "repeat": rep, "version": version, "load": load,
                             **workers[version].measure(case)})
        finally:
            for w in workers.values():
                w.close()
    summary = summarize(rows)
    import torch

    result = {"benchmark": "pure-PyTorch sparse conv / Mask3D CPU hot spots, before vs after",
              "before_rev": args.before_rev, "threads": args.threads, "repeats": args.repeats,
              "summary": summary, "rows": rows, "wall_s": time.time() - started,
              "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
              "command": " ".join(["python -m bench.bench_sparse_ops", *(argv if argv is not None else sys.argv[1:])])}
    print(format_report(summary))
    from training.atomic import write_json_atomic   # here: --serve children run this file without the repo on sys.path
    write_json_atomic(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return result


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run`; 0 when the run completed (errors raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
