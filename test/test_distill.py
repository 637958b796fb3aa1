"""Label-guided distillation: pseudo-labels (paper Eq. 8-10) and losses (Eq. 11-12)."""

import math

import pytest
import torch
import torch.nn.functional as F

from folk_ros.core.student import Student, StudentConfig
from training.distill import DistillLoss, DistillLossConfig, contrastive_loss, label_ce_loss, pseudo_labels

CHAIR, TABLE, LAMP = 0, 1, 2
TEXT = torch.eye(3)  # text embeddings of chair, table, lamp


def _unit(*v):
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


# --- pseudo-labels (Eq. 8-10) ---------------------------------------------------------

def test_majority_label_and_mean_of_agreeing_views():
    views = torch.tensor([[0.9, 0.1, 0.0],    # instance 0: chair
                          [0.8, 0.0, 0.2],    # instance 0: chair
                          [0.1, 0.9, 0.0]])   # instance 0: table (the minority, dropped)
    out = pseudo_labels(views, torch.tensor([0, 0, 0]), TEXT, num_instances=1)
    assert out.labels.tolist() == [CHAIR]
    assert out.view_labels.tolist() == [CHAIR, CHAIR, TABLE]
    want = F.normalize(_unit(0.9, 0.1, 0.0) + _unit(0.8, 0.0, 0.2), dim=0)
    torch.testing.assert_close(out.targets[0], want)
    assert out.instances.tolist() == [0] and out.num_views.tolist() == [3]
    torch.testing.assert_close(out.agreement, torch.tensor([2 / 3]))
    assert out.num_skipped == 0 and out.num_unusable_views == 0


def test_ties_go_to_the_larger_summed_similarity():
    views = torch.tensor([[0.9, 0.1, 0.0],    # inst 0: chair, cos 0.9/sqrt(0.82) = 0.994
                          [0.2, 0.7, 0.0],    # inst 0: table, cos 0.7/sqrt(0.53) = 0.962 -> chair
                          [0.7, 0.6, 0.2],    # inst 1: chair, cos 0.7/sqrt(0.89) = 0.742
                          [0.05, 1.0, 0.0]])  # inst 1: table, cos 0.999 -> table (not the lower index)
    out = pseudo_labels(views, torch.tensor([0, 0, 1, 1]), TEXT, num_instances=2)
    assert out.labels.tolist() == [CHAIR, TABLE]
    torch.testing.assert_close(out.targets, torch.stack([_unit(0.9, 0.1, 0.0), _unit(0.05, 1.0, 0.0)]))
    torch.testing.assert_close(out.agreement, torch.tensor([0.5, 0.5]))


def test_exact_tie_goes_to_the_lower_label():
    views = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # table then chair, both cos 1
    assert pseudo_labels(views, torch.tensor([0, 0]), TEXT, num_instances=1).labels.tolist() == [CHAIR]


def test_unusable_views_and_skipped_instances_are_counted():
    nan = float("nan")
    views = torch.tensor([[0.0, 0.0, 1.0],    # inst 0: lamp
                          [nan, 0.0, 1.0],    # inst 0: non-finite -> unusable
                          [0.0, 0.0, 0.0],    # inst 2: zero -> unusable
                          [1.0, 0.0, 0.0],    # inst 2: marked invalid -> unusable
                          [0.0, 1.0, 0.1]])   # inst 4: table
    inst = torch.tensor([0, 0, 2, 2, 4])
    valid = torch.tensor([True, True, True, False, True])
    out = pseudo_labels(views, inst, TEXT, num_instances=5, view_valid=valid)
    assert out.instances.tolist() == [0, 4]          # 1 and 3 have no views, 2 none usable
    assert out.labels.tolist() == [LAMP, TABLE]
    assert out.num_skipped == 3 and out.num_unusable_views == 3
    assert out.view_labels.tolist() == [LAMP, -1, -1, -1, TABLE]
    assert out.num_views.tolist() == [1, 1]
    assert torch.isfinite(out.targets).all()


def test_min_views():
    views = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0]])
    out = pseudo_labels(views, torch.tensor([0, 0, 1]), TEXT, num_instances=2, min_views=2)
    assert out.instances.tolist() == [0] and out.num_skipped == 1


def test_pseudo_label_errors():
    views = torch.randn(3, 3)
    with pytest.raises(ValueError, match="num_instances"):
        pseudo_labels(views, torch.tensor([0, 1, 2]), TEXT, num_instances=2)
    with pytest.raises(ValueError, match="text_embeddings"):
        pseudo_labels(views, torch.tensor([0, 0, 0]), torch.eye(4), num_instances=1)
    with pytest.raises(ValueError, match="view_instance"):
        pseudo_labels(views, torch.tensor([0.0, 0.0, 0.0]), TEXT, num_instances=1)


def test_no_instances():
    out = pseudo_labels(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), TEXT, num_instances=0)
    assert out.targets.shape == (0, 3) and out.labels.shape == (0,) and out.num_skipped == 0


# --- losses (Eq. 11-12) ----------------------------------------------------------------

def test_contrastive_identity_pairs():
    # logits = cos/tau = I (tau 1); each anchor: -log(e / (e + 1)) = log(1 + e^-1)
    s = torch.eye(2)
    want = math.log(1 + math.exp(-1))
    assert contrastive_loss(s, s, tau=1.0).item() == pytest.approx(want, rel=1e-6)
    assert contrastive_loss(s, s, tau=1.0, symmetric=True).item() == pytest.approx(want, rel=1e-6)


def test_contrastive_direction():
    # student [[1,0],[0,1]], targets [[1,0],[1,0]] (tau 1): logits S T^T = [[1,1],[0,0]]
    # student -> teacher: both rows -log(1/2) = log 2
    # teacher -> student (logits^T = [[1,0],[1,0]]): row 0 log(1 + e^-1), row 1 -log(1/(e+1)) = log(1 + e)
    s, t = torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    one_way = math.log(2)
    other = 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.e))
    assert contrastive_loss(s, t, 1.0).item() == pytest.approx(one_way, rel=1e-6)
    assert contrastive_loss(s, t, 1.0, symmetric=True).item() == pytest.approx(0.5 * (one_way + other), rel=1e-6)


def test_contrastive_same_label_negatives_masked():
    # student = targets = I3, tau 0.5 -> logits 2I
    # unmasked, every row: -log(e^2 / (e^2 + 2)) = log(1 + 2e^-2)
    # labels [0, 0, 1]: rows 0 and 1 drop each other: log(1 + e^-2); row 2 unchanged
    s = 3 * torch.eye(3)  # unnormalised on purpose: the loss normalises
    plain = math.log(1 + 2 * math.exp(-2))
    masked = (2 * math.log(1 + math.exp(-2)) + plain) / 3
    assert contrastive_loss(s, torch.eye(3), 0.5).item() == pytest.approx(plain, rel=1e-6)
    got = contrastive_loss(s, torch.eye(3), 0.5, labels=torch.tensor([0, 0, 1])).item()
    assert got == pytest.approx(masked, rel=1e-6)


def test_label_ce_hand_values():
    # text = [chair (1,0), table (0,1), "anti-chair" (-1,0)], tau 0.5
    # row 0 (1,0), label 0: logits (2, 0, -2) -> -log(e^2 / (e^2 + 1 + e^-2)) = log(1 + e^-2 + e^-4)
    # row 1 (0,1), label 2: logits (0, 2, 0) -> -log(1 / (1 + e^2 + 1)) = log(2 + e^2)
    student = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    want = 0.5 * (math.log(1 + math.exp(-2) + math.exp(-4)) + math.log(2 + math.e ** 2))
    assert label_ce_loss(student, text, torch.tensor([0, 2]), 0.5).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        label_ce_loss(student, text, torch.tensor([0, 3]), 0.5)


def test_distill_loss_combines_terms_exactly():
    g = torch.Generator().manual_seed(0)
    student, target = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    text = torch.randn(5, 8, generator=g)
    labels = torch.tensor([0, 1, 1, 2, 4, 4])
    cfg = DistillLossConfig(lambda_contrastive=0.3, lambda_ce=0.5, temperature=0.1)
    out = DistillLoss(cfg)(student, target, text, labels)
    assert set(out) == {"contrastive", "ce", "loss"}
    con = contrastive_loss(student, target, 0.1, labels=labels)
    ce = label_ce_loss(student, text, labels, 0.1)
    assert out["contrastive"].item() == con.item() and out["ce"].item() == ce.item()
    assert out["loss"].item() == pytest.approx(0.3 * con.item() + 0.5 * ce.item(), rel=1e-6)
    # no masking when the flag is off; the defaults are the paper's weights
    off = DistillLoss(DistillLossConfig(mask_same_label_negatives=False))(student, target, text, labels)
    assert off["contrastive"].item() == pytest.approx(contrastive_loss(student, target, 0.07).item(), rel=1e-6)
    assert off["loss"].item() == pytest.approx(0.2 * off["contrastive"].item() + 0.8 * off["ce"].item(), rel=1e-6)


def test_loss_config_validation():
    with pytest.raises(ValueError):
        DistillLossConfig(lambda_contrastive=0.0, lambda_ce=0.0)
    with pytest.raises(ValueError):
        DistillLossConfig(temperature=0.0)
    with pytest.raises(ValueError):
        DistillLossConfig(lambda_ce=-1.0)


# --- a tiny distillation run ---------------------------------------------------------

def test_tiny_distillation_reaches_the_pseudo_labels():
    """Student + DistillLoss on fixed random features and teacher views: 100% label agreement."""
    g = torch.Generator().manual_seed(0)
    m, n, d, c, k = 40, 2000, 16, 32, 10
    # point features: an instance-specific centre plus noise; every point in one instance
    assign = torch.arange(n) % m
    centres = torch.randn(m, d, generator=g)
    feats = centres[assign] + 0.5 * torch.randn(n, d, generator=g)
    masks = assign[None, :] == torch.arange(m)[:, None]                       # (M, N) bool
    # teacher: 3 views per instance, 2 near the true class text, 1 near a random class
    text = F.normalize(torch.randn(k, c, generator=g), dim=1)
    truth = torch.randint(0, k, (m,), generator=g)
    wrong = (truth + torch.randint(1, k, (m,), generator=g)) % k
    cls = torch.stack([truth, truth, wrong], dim=1).flatten()                 # (3M,)
    views = text[cls] + 0.05 * torch.randn(3 * m, c, generator=g)
    pl = pseudo_labels(views, torch.arange(m).repeat_interleave(3), text, num_instances=m)
    assert pl.labels.tolist() == truth.tolist() and pl.num_skipped == 0

    torch.manual_seed(0)
    student = Student(StudentConfig(in_dim=d, hidden_dim=64, out_dim=c, dropout=0.0))
    loss_fn = DistillLoss()
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    pooled = student.pool(feats, masks)[pl.instances]  # Mask3D is frozen: pool once
    for _ in range(100):
        out = loss_fn(student.project(pooled), pl.targets, text, pl.labels)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    student.eval()
    with torch.no_grad():
        pred = (student(feats, masks) @ text.T).argmax(dim=1)
    assert (pred == pl.labels).all(), f"agreement {(pred == pl.labels).float().mean():.2f}"
    assert out["loss"].item() < 0.5 * loss_fn(F.normalize(torch.randn(m, c, generator=g), dim=1),
                                              pl.targets, text, pl.labels)["loss"].item()
