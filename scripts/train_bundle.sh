#!/usr/bin/env bash
# Reproduce models/folk-synth from nothing: synthetic data -> Mask3D-small -> synthetic-world CLIP ->
# teacher cache -> label-guided distillation -> evaluation on held-out scenes -> bundle.
#
# Every step is one of the project's own commands, seeded; outputs go to data/ and runs/ (gitignored)
# and the bundle to models/folk-synth (replaced). About 3.5 hours on 2 CPU cores (Mask3D ~90 min with the
# choice of its post-processing and the CLIP ~80 min dominate, independent, they may run side by side;
# the evaluation on Mask3D proposals ~25 min); minutes on a GPU.
#
# Usage: scripts/train_bundle.sh [OUT_BUNDLE]   (default models/folk-synth)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT="${1:-models/folk-synth}"
run() { echo "+ $*" >&2; "$@"; }

# 1. data: the CLIP's own scenes (60 frames) and FOLK's scenes (40 frames; test = held out from everything)
for spec in "clip/train 40 300 60" "clip/val 10 400 60" "clip/test 10 500 60" \
            "folk/train 60 100 40" "folk/val 10 200 40" "folk/test 20 600 40"; do
    set -- $spec
    run $PY -m training.data.synthetic --scenes "$2" --seed "$3" --frames "$4" --no-bag --out "data/$1"
done

# 2. Mask3D-small, class-agnostic, 4 cm voxels
run $PY -m training.mask3d.train --train data/folk/train --val data/folk/val --out runs/mask3d-small \
    --preset small --epochs 20 --voxel-size 0.04 --match-points 8192 --threads 1 --seed 0
# ... continued with a fresh one-cycle schedule from the first run's best weights
run $PY -m training.mask3d.train --train data/folk/train --val data/folk/val --out runs/mask3d-small-2 \
    --preset small --epochs 12 --voxel-size 0.04 --match-points 8192 --threads 1 --seed 1 \
    --init runs/mask3d-small/best.pt
MASK3D=runs/mask3d-small-2/best.pt
# the proposals' post-processing (mask threshold, DBSCAN split distance, NMS IoU) chosen on the validation scenes
run $PY -m training.mask3d.evaluate --checkpoint "$MASK3D" --scenes data/folk/val \
    --mask-threshold 0.5 0.05 0.02 0.01 --dbscan-eps 0 0.08 0.12 --nms-iou 0.7 0.5 --out runs/mask3d-val-post.json
read -r THR EPS NMS < <($PY -c "import json; b = json.load(open('runs/mask3d-val-post.json'))['best']; \
print(b['mask_threshold'], b['dbscan_eps'], b['nms_iou'])")
run $PY -m training.mask3d.evaluate --checkpoint "$MASK3D" --scenes data/folk/test \
    --mask-threshold 0.5 "$THR" --dbscan-eps 0 "$EPS" --nms-iou 0.9 "$NMS" --out runs/mask3d-test.json

# 3. the synthetic-world CLIP: from random weights on the CLIP scenes, then continued on FOLK's training scenes
run $PY -m training.clip.train --scenes data/clip/train --val-scenes data/clip/val --test-scenes data/clip/test \
    --out runs/clip --minutes 36 --seed 0
run $PY -m training.clip.train --scenes data/folk/train --val-scenes data/folk/val --test-scenes data/folk/test \
    --init runs/clip --out runs/clip2 --minutes 40 --lr 5e-4 --threads 1 --seed 1

# 4. teacher cache (GT instances as proposals, every frame of the 40-frame walks)
for split in train val; do
    run $PY -m training.build_teacher_cache --scenes "data/folk/$split" --out "data/folk/teacher-gt/$split" \
        --clip local-dir:runs/clip2 --every 2 --workers 1 --device cpu
done

# 5. distillation (Mask3D frozen)
run $PY -m training.distill.train --cache data/folk/teacher-gt/train --val-cache data/folk/teacher-gt/val \
    --mask3d "$MASK3D" --clip local-dir:runs/clip2 --vocabulary synthetic \
    --out runs/distill --threads 1 --seed 0

# 6. evaluation on the 20 held-out scenes, Mask3D proposals and GT proposals
run $PY -m training.make_bundle --mask3d "$MASK3D" --clip runs/clip2 \
    --student runs/distill/best.pt --out runs/bundle-unevaluated --mask-threshold "$THR" --dbscan-eps "$EPS" --nms-iou "$NMS"
for proposals in mask3d gt; do
    run $PY -m training.evaluate --method student teacher baseline --scenes data/folk/test \
        --bundle runs/bundle-unevaluated --proposals "$proposals" --vocabulary synthetic --every 2 \
        --threads 1 --out "runs/evaluate-$proposals"
done

# 7. the bundle, with every stage's metrics in its manifest
run $PY -m training.make_bundle --mask3d "$MASK3D" --clip runs/clip2 \
    --student runs/distill/best.pt --out "$OUT" --mask-threshold "$THR" --dbscan-eps "$EPS" --nms-iou "$NMS" \
    --provenance mask3d_metrics=runs/mask3d-small-2/metrics.json mask3d_val_postprocess=runs/mask3d-val-post.json \
    mask3d_test=runs/mask3d-test.json distill_metrics=runs/distill/metrics.json \
    evaluation_mask3d_proposals=runs/evaluate-mask3d/report.json evaluation_gt_proposals=runs/evaluate-gt/report.json
