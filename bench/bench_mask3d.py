"""Full-size Mask3D (ScanNet200: Res16UNet34C + query decoder) forward on CPU: time, memory, scaling.

For synthetic room-like clouds of 50k / 100k / 200k points (floor, four walls and
box furniture, surface-sampled, 2 cm voxels) this measures, per sparse backend
(pure PyTorch, and MinkowskiEngine when it imports):

* backbone forward time and full forward time (backbone + decoder; median of
  ``--repeats`` after one warm-up; every run builds its coordinate maps anew, as
  at inference on a new cloud);
* peak memory of one full forward: the resident-set high-water mark during the
  forward minus the resident set before it (``/proc/self/clear_refs`` resets the
  mark; ``resource.getrusage`` max RSS as fallback), each (size, backend) in a
  fresh subprocess so no allocator state carries over;

then prints a table, the torch / MinkowskiEngine backbone time ratio per size
(target <= 1.0) and the exponent ``b`` of ``time ~ points**b`` (least squares
in log-log), and writes JSON to ``out/bench/mask3d.json``.  The 1-minute load
average is recorded before and after (the machine's cores are shared);
``--max-load`` waits (up to ``--wait-s``) for a quieter machine first.

Usage::

    python -m bench.bench_mask3d [--points 50000 100000 200000] [--repeats 3] [--threads 2]
                                 [--backends torch minkowski] [--max-load 2 --wait-s 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "out" / "bench" / "mask3d.json"


# --------------------------------------------------------------- the scene --

def room_cloud(n_points: int, seed: int = 0, size=(6.0, 5.0, 2.8), n_boxes: int = 14):
    """A room-like cloud: ``(xyz (N, 3) float32 metres, rgb (N, 3) uint8)``.

    Surfaces of the floor, four walls and ``n_boxes`` axis-aligned boxes (tables,
    cabinets, beds...) on the floor, sampled uniformly by area with 3 mm noise,
    one flat colour per surface plus jitter.  Vectorised; deterministic in ``seed``.
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    rng = np.random.default_rng(seed)
    lx, ly, lz = size
    # boxes: footprint 0.4-2 m, height 0.4-2 m, inside the room
    dims = rng.uniform([0.4, 0.4, 0.4], [2.0, 1.6, 2.0], size=(n_boxes, 3))
    lo = np.column_stack([rng.uniform(0, lx - dims[:, 0]), rng.uniform(0, ly - dims[:, 1]), np.zeros(n_boxes)])
    # quads (origin, edge u, edge v): floor, 4 walls, 5 visible faces per box
    quads = [((0, 0, 0), (lx, 0, 0), (0, ly, 0)),
             ((0, 0, 0), (lx, 0, 0), (0, 0, lz)), ((0, ly, 0), (lx, 0, 0), (0, 0, lz)),
             ((0, 0, 0), (0, ly, 0), (0, 0, lz)), ((lx, 0, 0), (0, ly, 0), (0, 0, lz))]
    for (x0, y0, z0), (dx, dy, dz) in zip(lo, dims):
        quads += [((x0, y0, z0 + dz), (dx, 0, 0), (0, dy, 0)),
                  ((x0, y0, z0), (dx, 0, 0), (0, 0, dz)), ((x0, y0 + dy, z0), (dx, 0, 0), (0, 0, dz)),
                  ((x0, y0, z0), (0, dy, 0), (0, 0, dz)), ((x0 + dx, y0, z0), (0, dy, 0), (0, 0, dz))]
    q = np.asarray(quads, dtype=np.float64)                        # (Q, 3, 3): origin, u, v
    area = np.linalg.norm(np.cross(q[:, 1], q[:, 2]), axis=1)
    which = rng.choice(len(q), size=n_points, p=area / area.sum())
    st = rng.random((n_points, 2))
    xyz = q[which, 0] + st[:, :1] * q[which, 1] + st[:, 1:] * q[which, 2]
    xyz += rng.normal(0, 0.003, size=xyz.shape)
    colours = rng.integers(40, 220, size=(len(q), 3))
    rgb = np.clip(colours[which] + rng.normal(0, 8, size=(n_points, 3)), 0, 255)
    return xyz.astype(np.float32), rgb.astype(np.uint8)


# ------------------------------------------------------------ the worker ----

def _rss_kb(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in kB (None where /proc is unavailable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(points: int, backend: str, repeats: int, threads: int, seed: int) -> dict:
    """Measure one (size, backend) in this (fresh) process; returns the result row."""
    import torch

    from folk_ros.core.mask3d import Mask3D, preset
    from folk_ros.core.mask3d.preprocess import normalize_colors, voxelize
    from folk_ros.core.sparse import SparseTensor
    from folk_ros.core.sparse.minkowski import backbone_forward, set_sparse_backend

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = preset("scannet200")
    model = Mask3D(cfg).eval()
    set_sparse_backend(model, backend)
    xyz, rgb = room_cloud(points, seed)
    t0 = time.perf_counter()
    vox = voxelize(xyz, cfg.voxel_size)
    t_vox = time.perf_counter() - t0
    coords = torch.from_numpy(vox.coords)
    feats = torch.from_numpy(normalize_colors(rgb, cfg.color_mean, cfg.color_std)[vox.unique_map])
    raw = torch.from_numpy(xyz[vox.unique_map])

    def run_backbone():
        return backbone_forward(model.backbone, SparseTensor.from_coords(coords, feats), backend)

    def run_full():
        return model(coords, feats, raw)

    def timed(fn) -> list[float]:
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    with torch.inference_mode():
        rss_before = _rss_kb("VmRSS")
        ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        reset = _reset_peak_rss()
        run_full()                                                   # warm-up; its peak is the memory figure
        hwm = _rss_kb("VmHWM") if reset else None
        ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        full = timed(run_full)
        backbone = timed(run_backbone)
    if hwm is not None and rss_before is not None:
        peak_mb, method = (hwm - rss_before) / 1024, "VmHWM after clear_refs - VmRSS before"
    else:
        peak_mb, method = (ru_after - ru_before) / 1024, "ru_maxrss delta (lower bound)"
    return {
        "points": points, "voxels": int(coords.shape[0]), "backend": backend, "threads": threads,
        "repeats": repeats, "voxelize_s": t_vox,
        "backbone_s": statistics.median(backbone), "backbone_runs_s": backbone,
        "full_s": statistics.median(full), "full_runs_s": full,
        "decoder_s": statistics.median(full) - statistics.median(backbone),
        "forward_peak_mb": peak_mb, "memory_method": method,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ------------------------------------------------------------ the driver ----

def fit_exponent(x, y) -> float:
    """Least-squares ``b`` of ``y ~ a * x**b`` (log-log); NaN with fewer than 2 sizes."""
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def wait_for_quiet(max_load: float | None, wait_s: float) -> float:
    """Poll the 1-minute load average until below ``max_load`` (at most ``wait_s``); returns it."""
    load = os.getloadavg()[0]
    deadline = time.monotonic() + wait_s
    while max_load is not None and load >= max_load and time.monotonic() < deadline:
        print(f"load {load:.2f} >= {max_load}; waiting for a quieter machine...", file=sys.stderr)
        time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))
        load = os.getloadavg()[0]
    return load


def run_worker_subprocess(points: int, backend: str, args: argparse.Namespace) -> dict:
    """One measurement in a fresh interpreter (clean allocator, clean peak RSS)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, "-m", "bench.bench_mask3d", "--worker", "--points", str(points), "--backends", backend,
           "--repeats", str(args.repeats), "--threads", str(args.threads), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {points} pts / {backend} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(rows: list[dict]) -> dict:
    """Per-size torch/MinkowskiEngine ratios and per-backend scaling exponents."""
    by = {(r["backend"], r["points"]): r for r in rows}
    sizes = sorted({r["points"] for r in rows})
    ratios = {}
    for n in sizes:
        t, m = by.get(("torch", n)), by.get(("minkowski", n))
        if t and m:
            ratios[n] = {"backbone": t["backbone_s"] / m["backbone_s"], "full": t["full_s"] / m["full_s"],
                         "memory": t["forward_peak_mb"] / max(m["forward_peak_mb"], 1e-9)}
    scaling = {}
    for backend in sorted({r["backend"] for r in rows}):
        rs = [by[(backend, n)] for n in sizes if (backend, n) in by]
        scaling[backend] = {
            "backbone_vs_points": fit_exponent([r["points"] for r in rs], [r["backbone_s"] for r in rs]),
            "full_vs_points": fit_exponent([r["points"] for r in rs], [r["full_s"] for r in rs]),
            "full_vs_voxels": fit_exponent([r["voxels"] for r in rs], [r["full_s"] for r in rs]),
            "memory_vs_points": fit_exponent([r["points"] for r in rs], [r["forward_peak_mb"] for r in rs]),
        }
    return {"ratio_torch_over_minkowski": ratios, "exponents": scaling}


def format_report(rows: list[dict], summary: dict) -> str:
    lines = [f"{'points':>8} {'voxels':>8} {'backend':>10} {'backbone s':>11} {'decoder s':>10} "
             f"{'full s':>8} {'peak MB':>8}"]
    for r in sorted(rows, key=lambda r: (r["points"], r["backend"])):
        lines.append(f"{r['points']:>8} {r['voxels']:>8} {r['backend']:>10} {r['backbone_s']:>11.2f} "
                     f"{r['decoder_s']:>10.2f} {r['full_s']:>8.2f} {r['forward_peak_mb']:>8.0f}")
    ratios = summary["ratio_torch_over_minkowski"]
    if ratios:
        lines.append("torch / MinkowskiEngine (target backbone <= 1.0):")
        for n, r in ratios.items():
            lines.append(f"  {n:>8} pts: backbone {r['backbone']:.2f}  full {r['full']:.2f}  "
                         f"peak memory {r['memory']:.2f}")
    else:
        lines.append("torch / MinkowskiEngine: MinkowskiEngine not measured (scripts/build_minkowski.sh)")
    lines.append("time ~ points**b:")
    for backend, e in summary["exponents"].items():
        lines.append(f"  {backend:>10}: backbone b={e['backbone_vs_points']:.2f}  full b={e['full_vs_points']:.2f}"
                     f"  (full vs voxels b={e['full_vs_voxels']:.2f}; memory b={e['memory_vs_points']:.2f})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, nargs="+", default=[50_000, 100_000, 200_000], help="cloud sizes (points)")
    p.add_argument("--backends", nargs="+", default=["torch", "minkowski"], choices=["torch", "minkowski"],
                   help="minkowski is skipped (with a note) when MinkowskiEngine does not import")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median), after 1 warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP / OpenBLAS threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic rooms and the random weights")
    p.add_argument("--max-load", type=float, default=None, help="wait for a 1-min load average below this")
    p.add_argument("--wait-s", type=float, default=600.0, help="longest wait for --max-load")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or min(args.points) < 1:
        p.error("--repeats, --threads and --points must be >= 1")
    return args


def run(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the JSON it writes (or, with --worker, prints one row)."""
    args = parse_args(argv)
    if args.worker:
        row = worker(args.points[0], args.backends[0], args.repeats, args.threads, args.seed)
        print(json.dumps(row))
        return row

    from tqdm import tqdm

    from folk_ros.core.sparse.minkowski import minkowski_available

    backends = list(args.backends)
    notes = []
    if "minkowski" in backends and not minkowski_available():
        backends.remove("minkowski")
        notes.append("MinkowskiEngine not importable: build it with scripts/build_minkowski.sh")
        print(notes[-1], file=sys.stderr)
    load_start = wait_for_quiet(args.max_load, args.wait_s)
    jobs = [(n, b) for n in sorted(args.points) for b in backends]
    rows = []
    started = time.time()
    for n, b in tqdm(jobs, desc="mask3d bench", unit="run"):
        rows.append(run_worker_subprocess(n, b, args))
    summary = summarize(rows)
    import torch

    result = {
        "benchmark": "Mask3D ScanNet200 full-size forward (Res16UNet34C + decoder), CPU",
        "rows": rows, **summary,
        "load_avg_1min_start": load_start, "load_avg_1min_end": os.getloadavg()[0],
        "wall_s": time.time() - started, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "notes": notes,
        "command": " ".join(["python -m bench.bench_mask3d", *(argv if argv is not None else sys.argv[1:])]),
    }
    if "minkowski" in backends:
        import MinkowskiEngine as ME  # noqa: N817

        result["minkowski_engine"] = ME.__version__
    print(format_report(rows, summary))
    print(f"load average (1 min): {load_start:.2f} at start, {result['load_avg_1min_end']:.2f} at end")
    # here, not at the top: bench_sparse_ops' "before" worker imports room_cloud from this module next to an
    # old folk_ros tree, which lacks what today's training.atomic imports
    from training.atomic import write_json_atomic
    write_json_atomic(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return result


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run`; 0 when the run completed (errors raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
