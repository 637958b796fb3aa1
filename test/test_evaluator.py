"""ScanNet200 instance AP (training.evaluate.instance_ap): hand-computed cases.

Conventions of the hand computations below. A detection list is sorted by confidence;
each distinct confidence c gives one precision/recall point (detections with score >= c;
recall over all non-ignored GT of the class), plus the artificial point (r=0, p=1).
AP is the trapezoidal area between consecutive points in recall order:
    AP = sum_i (r_i - r_{i-1}) * (p_i + p_{i-1}) / 2.
Per-class AP is the mean over the 9 IoU thresholds 0.50, 0.55, ..., 0.90 (strict IoU > t);
AP50 and AP25 are single thresholds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.data import scannet200
from training.evaluate import benchmark
from training.evaluate.instance_ap import (
    EvalConfig,
    GTScene,
    PredScene,
    average_precision,
    evaluate,
    match_scene,
)
from training.evaluate.benchmark_files import read_gt_txt, read_pred_txt, write_pred_txt

N = 1000  # vertices per toy scene
CHAIR, TABLE, CUSHION = (scannet200.label_id(n) for n in ("chair", "table", "cushion"))  # head, head, common
WALL, FLOOR = scannet200.label_id("wall"), scannet200.label_id("floor")


def rng_(a: int, b: int) -> np.ndarray:
    """Vertex indices a..b-1."""
    return np.arange(a, b)


def gt_scene(regions: list[tuple[int, int, int]], scene_id: str = "scene0000_00", n: int = N) -> GTScene:
    """GT from (label id, start, stop) vertex ranges; the rest unannotated."""
    masks = np.zeros((len(regions), n), bool)
    for row, (_, a, b) in zip(masks, regions):
        row[a:b] = True
    return GTScene.from_masks(scene_id, masks, [lab for lab, _, _ in regions])


def pred_scene(items: list[tuple[np.ndarray, int, float]], scene_id: str = "scene0000_00",
               n: int = N) -> PredScene:
    """Predictions from (vertex indices, label id, confidence)."""
    return PredScene.from_indices(scene_id, n, [i for i, _, _ in items], [lab for _, lab, _ in items],
                                  [s for _, _, s in items])


def cls(result, name: str) -> dict:
    return result.per_class(include_absent=True)[name]


# --------------------------------------------------------------------------- AP curve


def test_average_precision_hand_cases():
    # One TP only: points (0,1), (1,1) -> AP = 1.
    assert average_precision([True], [0.9], missed=0) == pytest.approx(1.0)
    # FP 0.9 then TP 0.8, one GT: points (0,1), (r=0,p=0), (r=1,p=1/2)
    #   -> 0 * ... + (1 - 0) * (0 + 1/2) / 2 = 0.25.
    assert average_precision([False, True], [0.9, 0.8], missed=0) == pytest.approx(0.25)
    # TP 0.9, FP 0.8, TP 0.7, two GT: points (0,1), (1/2,1), (1/2,1/2), (1,2/3)
    #   -> 1/2 * 1 + 0 + 1/2 * (1/2 + 2/3) / 2 = 1/2 + 7/24 = 19/24 (the interpolated VOC AP would be 5/6).
    assert average_precision([True, False, True], [0.9, 0.8, 0.7], missed=0) == pytest.approx(19 / 24)
    # A tie is one point: TP and FP both at 0.5 -> (0,1), (1, 1/2) -> (1 + 1/2) / 2 = 0.75.
    assert average_precision([True, False], [0.5, 0.5], missed=0) == pytest.approx(0.75)
    # One TP of two GT (one missed): (0,1), (1/2,1) -> 0.5; no detections at all -> 0.
    assert average_precision([True], [0.3], missed=1) == pytest.approx(0.5)
    assert average_precision([], [], missed=2) == 0.0


# --------------------------------------------------------------------------- protocol cases


def test_perfect_predictions_give_ap_one():
    # Two scenes, three classes, perfect masks with assorted real confidences: every
    # class has one point (r=1, p=1) per distinct score -> AP = AP50 = AP25 = 1.
    g1 = gt_scene([(CHAIR, 0, 200), (CHAIR, 200, 400), (TABLE, 400, 700)], "scene0000_00")
    g2 = gt_scene([(CUSHION, 0, 150), (TABLE, 150, 600)], "scene0001_00")
    p1 = pred_scene([(rng_(0, 200), CHAIR, 0.3), (rng_(200, 400), CHAIR, 0.8), (rng_(400, 700), TABLE, 0.5)],
                    "scene0000_00")
    p2 = PredScene.from_gt(g2, score=0.7)
    r = evaluate([g1, g2], [p2, p1])  # predictions paired by scene id, not by position
    for name in ("chair", "table", "cushion"):
        assert cls(r, name)["ap"] == pytest.approx(1.0)
        assert cls(r, name)["ap50"] == pytest.approx(1.0)
        assert cls(r, name)["ap25"] == pytest.approx(1.0)
    assert r.mean == pytest.approx({"ap": 1.0, "ap50": 1.0, "ap25": 1.0})
    assert r.num_scenes == 2


def test_false_positive_before_true_positive():
    # Chair GT 0..199, table GT 200..399. A chair prediction at 0.9 covers the table (IoU 0 with
    # the chair GT, on annotated non-chair vertices: not ignored) -> FP; the true chair at 0.8 -> TP.
    # Chair: FP 0.9, TP 0.8, one GT -> AP = 0.25 at every threshold (see the curve test).
    # Table predicted perfectly -> 1. Mean over classes = (0.25 + 1) / 2 = 0.625.
    g = gt_scene([(CHAIR, 0, 200), (TABLE, 200, 400)])
    p = pred_scene([(rng_(200, 400), CHAIR, 0.9), (rng_(0, 200), CHAIR, 0.8), (rng_(200, 400), TABLE, 0.6)])
    r = evaluate([g], [p])
    assert cls(r, "chair") == pytest.approx({"id": CHAIR, "ap": 0.25, "ap50": 0.25, "ap25": 0.25})
    assert cls(r, "table")["ap"] == pytest.approx(1.0)
    assert r.mean["ap"] == pytest.approx(0.625)
    # Swapping the confidences (TP 0.9 first, then FP 0.8) -> points (0,1), (1,1), (1,1/2) -> AP 1.
    p_swapped = pred_scene([(rng_(200, 400), CHAIR, 0.8), (rng_(0, 200), CHAIR, 0.9),
                            (rng_(200, 400), TABLE, 0.6)])
    assert cls(evaluate([g], [p_swapped]), "chair")["ap"] == pytest.approx(1.0)


@pytest.mark.parametrize("covered, ap50, ap", [
    # GT chair of 400 vertices (0..399); the prediction is its first `covered` vertices,
    # so IoU = covered / 400. AP25 = 1 in all three (IoU > 0.25 -> TP).
    (199, 0.0, 0.0),      # IoU 0.4975 <= 0.5: a FP (not ignored) plus a missed GT -> AP 0 at every t >= 0.5
    (200, 0.0, 0.0),      # IoU exactly 0.5 is not > 0.5 -> AP50 = 0
    (201, 1.0, 1 / 9),    # IoU 0.5025: TP at t = 0.50 only, FP + miss at 0.55..0.90 -> AP = (1 + 8 * 0) / 9
])
def test_iou_just_below_and_above_half(covered, ap50, ap):
    g = gt_scene([(CHAIR, 0, 400)])
    p = pred_scene([(rng_(0, covered), CHAIR, 0.9)])
    r = evaluate([g], [p])
    assert cls(r, "chair")["ap50"] == pytest.approx(ap50)
    assert cls(r, "chair")["ap"] == pytest.approx(ap)
    assert cls(r, "chair")["ap25"] == pytest.approx(1.0)


def test_iou_08_counts_at_six_of_nine_thresholds():
    # IoU = 320 / 400 = 0.8 > 0.50, 0.55, ..., 0.75 (6 thresholds), not > 0.80, 0.85, 0.90 -> AP = 6/9.
    r = evaluate([gt_scene([(CHAIR, 0, 400)])], [pred_scene([(rng_(0, 320), CHAIR, 0.9)])])
    assert cls(r, "chair")["ap"] == pytest.approx(6 / 9)


def test_duplicate_prediction_is_a_false_positive():
    # Chair GT A = 0..199, B = 200..399. Predictions: A at 0.9, a duplicate of A at 0.8 (listed
    # first, to check that the order is the confidence, not the input order), B at 0.7.
    # A takes the 0.9 one (TP); the 0.8 duplicate is a FP; B -> TP 0.7.
    # Detections TP .9, FP .8, TP .7 over 2 GT -> 19/24 = 0.7917 at every threshold.
    g = gt_scene([(CHAIR, 0, 200), (CHAIR, 200, 400)])
    dup = pred_scene([(rng_(0, 200), CHAIR, 0.8), (rng_(0, 200), CHAIR, 0.9), (rng_(200, 400), CHAIR, 0.7)])
    r = evaluate([g], [dup])
    assert cls(r, "chair")["ap"] == pytest.approx(19 / 24)
    assert cls(r, "chair")["ap25"] == pytest.approx(19 / 24)
    # The same without the duplicate: TP .9, TP .7 -> AP 1.
    single = pred_scene([(rng_(0, 200), CHAIR, 0.9), (rng_(200, 400), CHAIR, 0.7)])
    assert cls(evaluate([g], [single]), "chair")["ap"] == pytest.approx(1.0)
    # Per-threshold record of the duplicate case at IoU 0.5: 2 TP, 1 FP, no miss.
    cfg = EvalConfig.make()
    rec = match_scene(g, dup, cfg)[CHAIR]
    t = cfg.thresholds.index(0.5)
    assert rec.true[t][0].tolist() == [True, True, False]
    assert rec.score[t][0].tolist() == [0.9, 0.7, 0.8]
    assert rec.missed[t] == 0


def test_ties_are_broken_by_input_order():
    # Chair GT A = 0..199, B = 200..399. X = 0..99 + 200..299 (IoU 100/300 = 1/3 with A and with B),
    # Y = 0..199 (IoU 1 with A); both at confidence 0.5. At t = 0.25 GT are visited in id order and
    # each takes the first untaken prediction above t, ties in input order:
    #   [X, Y]: A takes X, Y is A's duplicate (FP), B finds only X (taken) -> missed.
    #           Detections TP .5, FP .5 and 1 miss: one point (r=1/2, p=1/2) -> 1/2 * (1 + 1/2) / 2 = 0.375.
    #   [Y, X]: A takes Y, X is A's duplicate (FP, not taken), B takes X -> TP.
    #           Detections TP .5, TP .5, FP .5: one point (r=1, p=2/3) -> (1 + 2/3) / 2 = 5/6.
    # At t >= 0.5 X is above no GT and is a plain FP either way: TP .5 (Y), FP .5 and B missed:
    # one point (r=1/2, p=1/2) -> 0.375.
    g = gt_scene([(CHAIR, 0, 200), (CHAIR, 200, 400)])
    x, y = np.r_[rng_(0, 100), rng_(200, 300)], rng_(0, 200)
    r_xy = cls(evaluate([g], [pred_scene([(x, CHAIR, 0.5), (y, CHAIR, 0.5)])]), "chair")
    r_yx = cls(evaluate([g], [pred_scene([(y, CHAIR, 0.5), (x, CHAIR, 0.5)])]), "chair")
    assert r_xy["ap25"] == pytest.approx(0.375)
    assert r_yx["ap25"] == pytest.approx(5 / 6)
    assert r_xy["ap"] == pytest.approx(0.375) and r_yx["ap"] == pytest.approx(0.375)
    # Confidence beats input order: X at 0.6, listed after Y at 0.5, is offered to A first; at 0.25
    # detections TP .6 (X), FP .5 (Y, duplicate), B missed: points (1/2, 1), (1/2, 1/2) -> 1/2 * 1 = 0.5.
    r_conf = cls(evaluate([g], [pred_scene([(y, CHAIR, 0.5), (x, CHAIR, 0.6)])]), "chair")
    assert r_conf["ap25"] == pytest.approx(0.5)


def test_classes_absent_from_gt_are_excluded_not_zero():
    # Only chairs in the GT; a "table" prediction exists too. Table has no GT: AP NaN, out of the
    # means -> mean AP = 1 (chair), not (1 + 0) / 2. A class with GT but no prediction is 0.
    g = gt_scene([(CHAIR, 0, 200), (CUSHION, 500, 700)])
    p = pred_scene([(rng_(0, 200), CHAIR, 0.9), (rng_(200, 400), TABLE, 0.8)])
    r = evaluate([g], [p])
    assert math.isnan(cls(r, "table")["ap"])
    assert cls(r, "cushion")["ap"] == 0.0
    assert r.mean["ap"] == pytest.approx(0.5)  # (chair 1 + cushion 0) / 2; table excluded
    assert "table" not in r.per_class() and "cushion" in r.per_class()
    assert "| table |" not in r.to_markdown()
    # 198 evaluated classes, all but chair and cushion NaN.
    assert len(r.class_ids) == 198 and np.isnan(r.ap).sum() == 196


def test_small_gt_regions_are_ignored():
    # Chair A = 0..199 (kept), chair B = 300..349 (50 < 100 vertices: ignored GT).
    # Prediction P at 0.95 = B plus 50 unannotated vertices 350..399 (100 vertices):
    # ignored fraction = (50 void + 50 on small GT) / 100 = 1 > t -> not a FP. B is not a miss.
    # A predicted at 0.9 -> chair AP = 1.
    g = gt_scene([(CHAIR, 0, 200), (CHAIR, 300, 350)])
    p = pred_scene([(rng_(300, 400), CHAIR, 0.95), (rng_(0, 200), CHAIR, 0.9)])
    assert cls(evaluate([g], [p]), "chair")["ap"] == pytest.approx(1.0)
    # A scene whose only chair is small: no chair GT -> chair NaN, not 0.
    r_small = evaluate([gt_scene([(CHAIR, 300, 350)])], [p])
    assert math.isnan(cls(r_small, "chair")["ap"])


def test_ignored_fraction_threshold():
    # Chair A = 0..199, small chair B = 300..349 (ignored), table 600..899. Prediction P (chair, 0.95,
    # 100 vertices) = B (50) + unannotated 350..367 (18, void) + table 600..631 (32, annotated).
    # Its ignored fraction is (18 void + 50 small GT) / 100 = 0.68; an unmatched prediction is a FP
    # when that fraction is <= t: at t = 0.70, 0.75, 0.80, 0.85, 0.90 (5 thresholds), ignored at
    # 0.50..0.65 (4). At t = 0.25 its IoU with B, 50 / 100 = 0.5 > 0.25, makes it a match with an
    # ignored GT (neither TP nor FP).
    # FP thresholds: FP .95, TP .9, one GT -> 0.25 (curve test); the others: 1.
    # AP = (4 * 1 + 5 * 0.25) / 9 = 0.583333; AP50 = 1; AP25 = 1.
    g = gt_scene([(CHAIR, 0, 200), (CHAIR, 300, 350), (TABLE, 600, 900)])
    idx = np.r_[rng_(300, 368), rng_(600, 632)]
    p = pred_scene([(idx, CHAIR, 0.95), (rng_(0, 200), CHAIR, 0.9), (rng_(600, 900), TABLE, 0.5)])
    r = evaluate([g], [p])
    c = cls(r, "chair")
    assert c["ap50"] == pytest.approx(1.0)
    assert c["ap25"] == pytest.approx(1.0)
    assert c["ap"] == pytest.approx((4 + 5 * 0.25) / 9)
    row = dict(zip(r.thresholds, r.ap_per_threshold[r.class_names.index("chair")]))
    assert row[0.65] == pytest.approx(1.0) and row[0.7] == pytest.approx(0.25)


def test_predictions_under_min_region_size_are_dropped():
    # A 99-vertex chair prediction at 0.99 on the table GT would be a FP; under 100 vertices it is
    # dropped, so chair AP stays 1.
    g = gt_scene([(CHAIR, 0, 200), (TABLE, 200, 400)])
    p = pred_scene([(rng_(200, 299), CHAIR, 0.99), (rng_(0, 200), CHAIR, 0.9)])
    assert cls(evaluate([g], [p]), "chair")["ap"] == pytest.approx(1.0)


def test_wall_and_floor_are_ignored():
    # Wall 0..299, floor 300..599, chair 600..799. A chair prediction at 0.95 lies on the wall:
    # wall vertices are void (wall is not evaluated) -> ignored, not a FP; chair AP = 1.
    # Wall/floor predictions are dropped; wall and floor are not in the result.
    g = gt_scene([(WALL, 0, 300), (FLOOR, 300, 600), (CHAIR, 600, 800)])
    p = pred_scene([(rng_(0, 150), CHAIR, 0.95), (rng_(600, 800), CHAIR, 0.8),
                    (rng_(0, 300), WALL, 0.9), (rng_(300, 400), FLOOR, 0.9)])
    r = evaluate([g], [p])
    assert "wall" not in r.class_names and "floor" not in r.class_names
    assert list(r.per_class()) == ["chair"]
    assert cls(r, "chair") == pytest.approx({"id": CHAIR, "ap": 1.0, "ap50": 1.0, "ap25": 1.0})
    # Evaluating wall/floor too (ignored_labels=()): the wall vertices are annotated, the chair
    # prediction on them is a FP: FP .95, TP .8 -> chair AP 0.25; wall AP 1; floor 0 (IoU 1/3).
    r_all = evaluate([g], [p], ignored_labels=())
    assert cls(r_all, "chair")["ap"] == pytest.approx(0.25)
    assert cls(r_all, "wall")["ap"] == pytest.approx(1.0)
    assert cls(r_all, "floor")["ap50"] == pytest.approx(0.0)
    assert cls(r_all, "floor")["ap25"] == pytest.approx(1.0)  # IoU 100/300 = 0.333 > 0.25


def test_split_means():
    # Chair (head) perfect -> 1; cushion (common) FP .9 before TP .8 -> 0.25; no tail class in GT.
    # head = 1, common = 0.25, tail = NaN; overall mean = (1 + 0.25) / 2 = 0.625.
    g = gt_scene([(CHAIR, 0, 200), (CUSHION, 200, 400), (TABLE, 400, 600)])
    p = pred_scene([(rng_(0, 200), CHAIR, 0.9), (rng_(400, 600), CUSHION, 0.9),
                    (rng_(200, 400), CUSHION, 0.8),
                    (rng_(400, 600), TABLE, 0.7)])
    r = evaluate([g], [p])
    assert r.split_means["head"]["ap"] == pytest.approx(1.0)  # chair and table
    assert r.split_means["common"]["ap"] == pytest.approx(0.25)
    assert math.isnan(r.split_means["tail"]["ap"])
    assert r.mean["ap"] == pytest.approx((1 + 0.25 + 1) / 3)
    md = r.to_markdown()
    assert "| _common_ | 0.250 | 0.250 | 0.250 |" in md and "| _tail_ | – | – | – |" in md
    js = r.to_dict()
    assert js["splits"]["tail"]["ap"] is None and js["classes"]["cushion"]["ap"] == pytest.approx(0.25)


# --------------------------------------------------------------------------- files and CLI


def _toy_case():
    g = gt_scene([(CHAIR, 0, 200), (CHAIR, 200, 400), (TABLE, 400, 700)], "scene0007_00")
    p = pred_scene([(rng_(0, 200), CHAIR, 0.8125), (rng_(200, 300), CHAIR, 0.1 + 0.2),
                    (rng_(400, 700), TABLE, 1 / 3)], "scene0007_00")
    return g, p


def test_txt_round_trip(tmp_path):
    g, p = _toy_case()
    txt = write_pred_txt(tmp_path / "pred", g.scene_id, p)
    assert txt == tmp_path / "pred" / "scene0007_00.txt"
    first = txt.read_text().splitlines()[0].split()
    assert first[0] == "predicted_masks/scene0007_00_000.txt" and first[1] == str(CHAIR)
    back = read_pred_txt(txt, num_vertices=N)
    assert back.scene_id == p.scene_id
    order = [0, 2, 1]   # written best first: the official script matches in file order
    scores = [float(line.split()[2]) for line in txt.read_text().splitlines()]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_array_equal(back.masks, p.masks[order])
    np.testing.assert_array_equal(back.label_ids, p.label_ids[order])
    np.testing.assert_array_equal(back.scores, p.scores[order])  # exact, via repr
    gt_path = tmp_path / "gt" / "scene0007_00.txt"
    gt_path.parent.mkdir()
    np.savetxt(gt_path, g.ids, fmt="%d")
    g_back = read_gt_txt(gt_path)
    np.testing.assert_array_equal(g_back.ids, g.ids)
    assert evaluate([g_back], [back]).to_dict() == evaluate([g], [p]).to_dict()


def test_read_pred_txt_errors(tmp_path):
    _, p = _toy_case()
    txt = write_pred_txt(tmp_path, "scene0007_00", p)
    with pytest.raises(ValueError, match="wrong number of lines"):
        read_pred_txt(txt, num_vertices=N + 1)
    (tmp_path / "bad.txt").write_text("predicted_masks/scene0007_00_000.txt 2\n")
    with pytest.raises(ValueError, match="expected '<relative mask path>"):
        read_pred_txt(tmp_path / "bad.txt")
    (tmp_path / "escape.txt").write_text("../x.txt 2 0.5\n")
    with pytest.raises(ValueError, match="outside"):
        read_pred_txt(tmp_path / "escape.txt")
    (tmp_path / "missing.txt").write_text("predicted_masks/nope.txt 2 0.5\n")
    with pytest.raises(ValueError, match="does not exist"):
        read_pred_txt(tmp_path / "missing.txt")
    (tmp_path / "twice.txt").write_text("predicted_masks/scene0007_00_000.txt 2 0.5\n"
                                        "predicted_masks/scene0007_00_000.txt 3 0.4\n")
    with pytest.warns(UserWarning, match="named again .first on line 1.; the official ScanNet200 script keeps"):
        assert read_pred_txt(tmp_path / "twice.txt").num_predictions == 2


def test_benchmark_cli(tmp_path, capsys):
    g, p = _toy_case()
    (tmp_path / "gt").mkdir()
    np.savetxt(tmp_path / "gt" / "scene0007_00.txt", g.ids, fmt="%d")
    write_pred_txt(tmp_path / "pred", g.scene_id, p)
    # Chair: TP 0.8125 (A), B covered half (IoU 0.5, not > 0.5) -> FP 0.3 and a miss at t >= 0.5:
    #   points (0,1), (1/2,1), (1/2,1/2) -> 0.5; at t = 0.25 both TP -> 1.
    # Table perfect -> 1. Mean AP = (0.5 + 1) / 2 = 0.75; AP25 = 1.
    out = tmp_path / "report.json"
    assert benchmark.main(["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                           "--out", str(out), "--quiet"]) == 0
    assert "| chair | 0.500 | 0.500 | 1.000 |" in capsys.readouterr().out
    import json
    report = json.loads(out.read_text())
    assert report["mean"]["ap"] == pytest.approx(0.75) and report["mean"]["ap25"] == pytest.approx(1.0)
    md = tmp_path / "report.md"
    benchmark.main(["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--out", str(md),
                    "--quiet"])
    assert md.read_text().startswith("| class | AP | AP50 | AP25 |")


def test_benchmark_cli_errors(tmp_path):
    g, p = _toy_case()
    (tmp_path / "gt").mkdir()
    np.savetxt(tmp_path / "gt" / "scene0007_00.txt", g.ids, fmt="%d")
    np.savetxt(tmp_path / "gt" / "scene0008_00.txt", g.ids, fmt="%d")
    write_pred_txt(tmp_path / "pred", g.scene_id, p)
    args = ["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--quiet"]
    with pytest.raises(SystemExit, match="no prediction for 1 scene.*scene0008_00"):
        benchmark.main(args)
    (tmp_path / "gt" / "scene0008_00.txt").unlink()
    (tmp_path / "pred" / "predicted_masks" / "scene0007_00_001.txt").write_text("0\n1\n")
    with pytest.raises(SystemExit, match=r"scene0007_00_001.txt: wrong number of lines \(2\) vs 1000"):
        benchmark.main(args)


# --------------------------------------------------------------------------- input checks


def test_input_validation():
    with pytest.raises(ValueError, match="disjoint"):
        GTScene.from_masks("s", np.ones((2, 10), bool), [CHAIR, TABLE])
    with pytest.raises(ValueError, match="label_ids and scores"):
        PredScene("s", np.zeros((2, 10), bool), np.array([CHAIR]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="finite"):
        PredScene("s", np.zeros((1, 10), bool), np.array([CHAIR]), np.array([np.nan]))
    g = gt_scene([(CHAIR, 0, 200)])
    with pytest.raises(ValueError, match="1001 vertices"):
        evaluate([g], [PredScene.from_indices(g.scene_id, N + 1, [rng_(0, 200)], [CHAIR], [0.5])])
    with pytest.raises(ValueError, match="no prediction"):
        evaluate([g], [PredScene.empty("other", N)])
    # GT encoding helper: label 0 or instance 0 -> unannotated.
    enc = GTScene.from_labels("s", np.array([2, 2, 0, 4]), np.array([1, 0, 3, 2])).ids
    assert enc.tolist() == [2001, 0, 0, 4002]
