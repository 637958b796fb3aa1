"""Hungarian matcher and set criterion of the Mask3D trainer, on hand-made tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.mask3d.losses import CriterionConfig, SetCriterion
from training.mask3d.matcher import MatcherConfig, hungarian_match, pairwise_bce_cost, pairwise_dice_cost

BIG = 30.0  # a logit whose sigmoid is 1 to float precision


def test_pairwise_dice_cost_by_hand():
    logits = torch.tensor([[BIG, BIG, -BIG, -BIG]])
    gt = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]])
    # same mask: 1 - (2*2 + 1) / (2 + 2 + 1) = 0; disjoint: 1 - (0 + 1) / (2 + 2 + 1) = 0.8
    torch.testing.assert_close(pairwise_dice_cost(logits, gt), torch.tensor([[0.0, 0.8]]), atol=1e-6, rtol=0)


def test_pairwise_bce_cost_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    logits, gt = torch.randn(5, 40, generator=g), (torch.rand(3, 40, generator=g) > 0.5).float()
    brute = torch.stack([torch.stack([F.binary_cross_entropy_with_logits(q, t) for t in gt]) for q in logits])
    torch.testing.assert_close(pairwise_bce_cost(logits, gt), brute)


def test_matcher_recovers_a_permutation():
    gt = torch.zeros(3, 12, dtype=torch.bool)
    gt[0, :4], gt[1, 4:8], gt[2, 8:] = True, True, True
    order = torch.tensor([2, 0, 1, 2])  # queries 0..3 predict GT 2, 0, 1, and a duplicate of 2
    masks = torch.where(gt[order].T, BIG, -BIG)  # (P, Q)
    logits = torch.zeros(4, 2)
    logits[3] = torch.tensor([-5.0, 5.0])  # the duplicate says "no object"
    q, g = hungarian_match(logits, masks, torch.zeros(3, dtype=torch.int64), gt)
    assert q.tolist() == [0, 1, 2] and g.tolist() == [2, 0, 1]


def test_matcher_shape_errors_and_empty_gt():
    with pytest.raises(ValueError, match="inconsistent shapes"):
        hungarian_match(torch.zeros(4, 2), torch.zeros(10, 3), torch.zeros(1, dtype=torch.int64),
                        torch.zeros(1, 10))
    q, g = hungarian_match(torch.zeros(4, 2), torch.zeros(10, 4), torch.zeros(0, dtype=torch.int64),
                           torch.zeros(0, 10))
    assert q.numel() == 0 and g.numel() == 0


def test_matcher_point_sampling_is_seeded():
    g = torch.Generator().manual_seed(1)
    masks, gt = torch.randn(200, 6, generator=g), torch.rand(4, 200, generator=g) > 0.5
    cfg = MatcherConfig(num_points=50)
    a = hungarian_match(torch.zeros(6, 2), masks, torch.zeros(4, dtype=torch.int64), gt, cfg,
                        torch.Generator().manual_seed(7))
    b = hungarian_match(torch.zeros(6, 2), masks, torch.zeros(4, dtype=torch.int64), gt, cfg,
                        torch.Generator().manual_seed(7))
    assert [t.tolist() for t in a] == [t.tolist() for t in b]


def test_criterion_values_by_hand():
    # zero logits everywhere: sigmoid 0.5, softmax (0.5, 0.5)
    gt = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    out = {"pred_logits": torch.zeros(1, 3, 2), "pred_masks": [torch.zeros(4, 3)]}
    terms = SetCriterion(CriterionConfig())(out, [{"labels": torch.zeros(2, dtype=torch.int64), "masks": gt}])
    # CE: every query's loss is ln 2, and a weighted mean of equal values is ln 2
    # BCE: ln 2 per point; dice: 1 - (2 * 0.5 * 2 + 1) / (0.5 * 4 + 2 + 1) = 1 - 3/5 = 0.4
    torch.testing.assert_close(terms["loss_ce"], torch.tensor(math.log(2)))
    torch.testing.assert_close(terms["loss_mask"], torch.tensor(math.log(2)))
    torch.testing.assert_close(terms["loss_dice"], torch.tensor(0.4))
    torch.testing.assert_close(terms["loss"], torch.tensor(7 * math.log(2) + 0.8))


def test_criterion_sums_aux_layers_and_is_near_zero_when_perfect():
    gt = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    masks = torch.where(gt.T, BIG, -BIG)                      # (P=4, Q=2)
    logits = torch.tensor([[[BIG, -BIG], [BIG, -BIG]]])      # both queries: "object"
    layer = {"pred_logits": logits, "pred_masks": [masks]}
    terms = SetCriterion()({**layer, "aux_outputs": [layer, layer]},
                           [{"labels": torch.zeros(2, dtype=torch.int64), "masks": gt}])
    assert {"loss_ce_aux0", "loss_dice_aux1"} <= set(terms)
    assert terms["loss"].item() < 1e-4


def test_criterion_trains_free_masks_to_the_gt():
    torch.manual_seed(0)
    gt = torch.rand(3, 64) > 0.6
    masks = torch.zeros(64, 5, requires_grad=True)
    logits = torch.zeros(1, 5, 2, requires_grad=True)
    crit, opt = SetCriterion(), torch.optim.Adam([masks, logits], lr=0.1)
    target = [{"labels": torch.zeros(3, dtype=torch.int64), "masks": gt}]
    first = None
    for _ in range(150):
        loss = crit({"pred_logits": logits, "pred_masks": [masks]}, target)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    q, g = hungarian_match(logits[0].detach(), masks.detach(), target[0]["labels"], gt)
    for qi, gi in zip(q, g):
        assert torch.equal(masks[:, qi].detach() > 0, gt[gi])
