"""Evaluate benchmark-format predictions against benchmark-format GT (ScanNet200 instance AP).

    python -m training.evaluate.benchmark --gt DIR_OF_GT_TXT --pred DIR_OF_PRED_TXT \
        [--out report.md|report.json]

Every ``<scene>.txt`` in ``--gt`` (one ``label_id * 1000 + instance`` per vertex) is evaluated
against ``--pred/<scene>.txt`` (lines ``<relative mask path> <label id> <confidence>``), with the
protocol of :mod:`training.evaluate.instance_ap`. Scenes are read and matched one at a time, so
memory stays at one scene's masks. The markdown table is printed; ``--out`` also writes it
(``.json``: the full figures as JSON).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from training.evaluate.instance_ap import (
    DEFAULT_MIN_REGION_SIZE,
    EvalConfig,
    EvalResult,
    match_scene,
    summarize,
)
from training.evaluate.benchmark_files import read_gt_txt, read_pred_txt


def evaluate_dirs(gt_dir: Path, pred_dir: Path, config: EvalConfig, progress: bool = True) -> EvalResult:
    """Evaluate every GT file of ``gt_dir`` against the same-named prediction file of ``pred_dir``.

    ValueError if ``gt_dir`` holds no ``.txt`` file, a scene has no prediction file, or a
    prediction file or mask is malformed (see :func:`training.evaluate.benchmark_files.read_pred_txt`).
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    if not gt_dir.is_dir():
        raise ValueError(f"GT folder {gt_dir} does not exist")
    if not pred_dir.is_dir():
        raise ValueError(f"prediction folder {pred_dir} does not exist")
    gt_files = sorted(gt_dir.glob("*.txt"))
    if not gt_files:
        raise ValueError(f"no GT files (*.txt) in {gt_dir}")
    missing = [f.stem for f in gt_files if not (pred_dir / f.name).is_file()]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} scene(s) in {pred_dir}: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                         f"(expected {pred_dir / (missing[0] + '.txt')})")

    def matches():
        for gt_path in tqdm(gt_files, desc="scenes", unit="scene", disable=not progress):
            gt = read_gt_txt(gt_path)
            pred = read_pred_txt(pred_dir / gt_path.name, num_vertices=gt.num_vertices, root=pred_dir)
            yield match_scene(gt, pred, config)

    return summarize(matches(), config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gt", type=Path, required=True, help="folder of GT <scene>.txt files")
    parser.add_argument("--pred", type=Path, required=True, help="folder of prediction <scene>.txt files")
    parser.add_argument("--out", type=Path, default=None, help="report file: .json for JSON, else markdown")
    parser.add_argument("--min-region-size", type=int, default=DEFAULT_MIN_REGION_SIZE,
                        help="ignore GT instances and predictions under this many vertices "
                             "(default: %(default)s)")
    parser.add_argument("--all-classes", action="store_true",
                        help="list classes absent from the GT too (as '–') in the markdown table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    config = EvalConfig.make(min_region_size=args.min_region_size)
    try:
        result = evaluate_dirs(args.gt, args.pred, config, progress=not args.quiet)
    except ValueError as err:
        sys.exit(f"benchmark: error: {err}")
    table = result.to_markdown(include_absent=args.all_classes)
    print(f"{result.num_scenes} scenes\n")
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result.to_json() if args.out.suffix == ".json" else table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
