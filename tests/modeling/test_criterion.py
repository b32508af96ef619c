import pytest
import torch
import torch.nn.functional as F

from mask2former.config import get_cfg
from mask2former.modeling import point_sampling
from mask2former.modeling.criterion import SetCriterion, build_criterion, dice_loss, sigmoid_ce_loss
from mask2former.modeling.matcher import HungarianMatcher
from mask2former.utils.testing import load_fixture


def _replay(monkeypatch, draws):
    """Make every uniform draw pop the next recorded tensor (checking its shape)."""
    queue = list(draws)

    def replay(shape, device, dtype):
        assert queue, "more random draws than recorded"
        t = queue.pop(0)
        assert tuple(t.shape) == tuple(shape), (tuple(t.shape), tuple(shape))
        return t.to(device, dtype)

    monkeypatch.setattr(point_sampling, "uniform_points", replay)
    return queue


def _cfg(num_classes=7, dec_layers=4, deep_supervision=True, num_points=1024):
    cfg = get_cfg()
    mf = cfg.MODEL.MASK_FORMER
    mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.NO_OBJECT_WEIGHT = 2.0, 5.0, 5.0, 0.1
    mf.DEC_LAYERS, mf.DEEP_SUPERVISION = dec_layers, deep_supervision
    mf.TRAIN_NUM_POINTS, mf.OVERSAMPLE_RATIO, mf.IMPORTANCE_SAMPLE_RATIO = num_points, 3.0, 0.75
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    return cfg


def _random_outputs(generator, batch=2, queries=5, num_classes=3, hw=(8, 8), aux=0):
    def one():
        return {
            "pred_logits": torch.randn(
                batch, queries, num_classes + 1, generator=generator, requires_grad=True
            ),
            "pred_masks": torch.randn(batch, queries, *hw, generator=generator, requires_grad=True),
        }

    outputs = one()
    outputs["aux_outputs"] = [one() for _ in range(aux)]
    return outputs


def test_matches_original_training_losses(monkeypatch):
    head = load_fixture("reference_tiny_r18.pt")["head"]
    ref = load_fixture("reference_tiny_r18_train.pt")
    assert ref["train_num_points"] == 1024 and ref["weights"]["no_object"] == 0.1
    targets = []
    for t in ref["targets"]:
        masks = t["masks"]  # [N, h, w] bool at image size
        padded = F.pad(masks, (0, 128 - masks.shape[2], 0, 128 - masks.shape[1]))  # [N, 128, 128]
        targets.append({"labels": t["labels"], "masks": padded})
    criterion = build_criterion(_cfg())
    remaining = _replay(monkeypatch, ref["random_draws"])
    assignments = []
    matcher_forward = criterion.matcher.forward

    def recording_forward(outputs, targets):
        result = matcher_forward(outputs, targets)
        assignments.append(result)
        return result

    monkeypatch.setattr(criterion.matcher, "forward", recording_forward)
    losses = criterion(head, targets)

    assert not remaining, f"{len(remaining)} recorded draws left unused"
    assert len(assignments) == len(ref["assignments"]) == 4
    for got_level, ref_level in zip(assignments, ref["assignments"]):
        for (rows, cols), (ref_rows, ref_cols) in zip(got_level, ref_level):
            assert torch.equal(rows, ref_rows) and torch.equal(cols, ref_cols)
    assert set(losses) == set(ref["losses"])
    for key, value in ref["losses"].items():
        torch.testing.assert_close(losses[key], value, rtol=1e-4, atol=1e-4, msg=key)


def test_mask_losses_closed_form():
    logits = torch.tensor([[0.0, 2.0, -1.0], [3.0, -3.0, 0.5]])  # [N=2, P=3]
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.5, 1.0]])
    num_masks = 4.0
    p = torch.sigmoid(logits)
    bce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))  # [2, 3]
    torch.testing.assert_close(sigmoid_ce_loss(logits, targets, num_masks), bce.mean(1).sum() / num_masks)
    # Mask 0: p = (0.5, 0.8808, 0.2689), t = (1, 0, 0): 1 - (2*0.5 + 1) / (1.6497 + 1 + 1).
    dice0 = 1 - (2 * 0.5 + 1) / (p[0].sum() + 1 + 1)
    dice1 = 1 - (2 * (p[1] * targets[1]).sum() + 1) / (p[1].sum() + 2.5 + 1)
    torch.testing.assert_close(dice_loss(logits, targets, num_masks), (dice0 + dice1) / num_masks)
    torch.testing.assert_close(dice0, torch.tensor(1 - 2 / 3.6497), atol=1e-4, rtol=0)


def test_losses_on_given_points(monkeypatch):
    # One image, one target; query 1 is forced to match it. With importance ratio 0 every loss point
    # is the second (uniform) draw, so the losses can be computed by hand at those points.
    masks_t = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks_t[0, :, :2] = True  # left half
    pred_masks = torch.zeros(1, 3, 4, 4)
    pred_masks[0, 1, :, :2] = 4.0
    pred_masks[0, 1, :, 2:] = -2.0
    pred_logits = torch.zeros(1, 3, 3)
    pred_logits[0, 1, 0] = 6.0
    points = torch.tensor([[[0.125, 0.5], [0.875, 0.5], [0.375, 0.125]]])  # pixel centres (x, y)
    matcher_points = torch.rand(1, 8, 2)
    _replay(monkeypatch, [matcher_points, torch.rand(1, 6, 2), points])
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=8)
    criterion = SetCriterion(
        2,
        matcher,
        {"loss_ce": 1.0, "loss_mask": 3.0, "loss_dice": 0.5},
        0.1,
        ["labels", "masks"],
        3,
        2.0,
        0.0,
    )
    losses = criterion(
        {"pred_logits": pred_logits, "pred_masks": pred_masks},
        [{"labels": torch.tensor([0]), "masks": masks_t}],
    )
    point_logits = torch.tensor([4.0, -2.0, 4.0])
    point_labels = torch.tensor([1.0, 0.0, 1.0])
    expected_bce = F.binary_cross_entropy_with_logits(point_logits, point_labels)
    p = point_logits.sigmoid()
    expected_dice = 1 - (2 * (p * point_labels).sum() + 1) / (p.sum() + 2 + 1)
    torch.testing.assert_close(losses["loss_mask"], 3.0 * expected_bce)
    torch.testing.assert_close(losses["loss_dice"], 0.5 * expected_dice)
    # Cross-entropy: query 1 -> class 0 (weight 1), queries 0 and 2 -> "no object" (weight 0.1).
    log_p = pred_logits[0].log_softmax(-1)
    expected_ce = -(log_p[1, 0] + 0.1 * log_p[0, 2] + 0.1 * log_p[2, 2]) / 1.2
    torch.testing.assert_close(losses["loss_ce"], expected_ce)


def test_empty_weight_buffer_and_weight_dict():
    criterion = build_criterion(_cfg(num_classes=7, dec_layers=4))
    assert "empty_weight" in criterion.state_dict()
    torch.testing.assert_close(criterion.empty_weight, torch.tensor([1.0] * 7 + [0.1]))
    assert criterion.num_aux == 3
    assert criterion.weight_dict["loss_dice_2"] == 5.0 and criterion.weight_dict["loss_ce_0"] == 2.0
    assert "loss_ce_3" not in criterion.weight_dict
    assert build_criterion(_cfg(deep_supervision=False)).num_aux == 0


def test_empty_and_half_empty_targets():
    generator = torch.Generator().manual_seed(0)
    criterion = build_criterion(_cfg(num_classes=3, dec_layers=2, num_points=16))
    outputs = _random_outputs(generator, aux=1)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
    losses = criterion(outputs, [empty, dict(empty)])
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    assert float(losses["loss_mask"].detach()) == 0.0 and float(losses["loss_dice"].detach()) == 0.0
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad is not None and outputs["pred_logits"].grad.abs().sum() > 0

    one = {"labels": torch.tensor([2]), "masks": torch.rand(1, 16, 16, generator=generator) > 0.5}
    outputs = _random_outputs(generator, aux=1)
    losses = criterion(outputs, [empty, one])
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    assert float(losses["loss_mask"].detach()) > 0
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad[1].abs().sum() > 0 and outputs["pred_masks"].grad[0].abs().sum() == 0


def test_deep_supervision_off_ignores_aux_and_count_mismatch_raises():
    generator = torch.Generator().manual_seed(1)
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 8, 8, generator=generator) > 0.5},
        {"labels": torch.tensor([2]), "masks": torch.rand(1, 8, 8, generator=generator) > 0.5},
    ]
    outputs = _random_outputs(generator, aux=3)
    losses = build_criterion(_cfg(num_classes=3, deep_supervision=False, num_points=8))(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    with pytest.raises(ValueError, match="DEC_LAYERS"):
        build_criterion(_cfg(num_classes=3, dec_layers=3, num_points=8))(outputs, targets)


def test_bad_inputs():
    matcher = HungarianMatcher(1.0, 1.0, 1.0, 4)
    with pytest.raises(ValueError, match="losses"):
        SetCriterion(3, matcher, {"loss_ce": 1.0}, 0.1, ["boxes"], 4, 3.0, 0.75)
    with pytest.raises(ValueError, match="loss_dice"):
        SetCriterion(3, matcher, {"loss_ce": 1.0, "loss_mask": 1.0}, 0.1, ["labels", "masks"], 4, 3.0, 0.75)
    criterion = SetCriterion(3, matcher, {"loss_ce": 1.0}, 0.1, ["labels"], 4, 3.0, 0.75)
    outputs = _random_outputs(torch.Generator().manual_seed(2))
    targets = [
        {"labels": torch.tensor([0]), "masks": torch.ones(1, 8, 8)},
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 8, 12)},
    ]
    with pytest.raises(ValueError, match="padded"):
        criterion(outputs, targets)


def test_autocast_bf16_losses_are_fp32():
    generator = torch.Generator().manual_seed(3)
    criterion = build_criterion(_cfg(num_classes=3, dec_layers=1, num_points=16))
    outputs = _random_outputs(generator)
    targets = [{"labels": torch.tensor([1]), "masks": torch.rand(1, 16, 16, generator=generator) > 0.5}] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion({k: v.bfloat16() for k, v in outputs.items() if k != "aux_outputs"}, targets)
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v)) for v in losses.values())
