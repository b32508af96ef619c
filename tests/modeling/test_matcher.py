import itertools

import pytest
import torch
import torch.nn.functional as F

from mask2former.layers.extension import compiled_op_available
from mask2former.modeling import point_sampling
from mask2former.modeling.matcher import MAX_COST, HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost


def _random_problem(generator, num_queries=6, num_classes=4, sizes=(3, 0, 2), hw=(8, 8)):
    outputs = {
        "pred_logits": torch.randn(len(sizes), num_queries, num_classes + 1, generator=generator),
        "pred_masks": torch.randn(len(sizes), num_queries, *hw, generator=generator),
    }
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,), generator=generator),
            "masks": torch.rand(n, 2 * hw[0], 2 * hw[1], generator=generator) > 0.5,
        }
        for n in sizes
    ]
    return outputs, targets


def test_cost_functions_closed_form():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])  # [Q=2, P=2]
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # [N=3, P=2]
    p = logits.sigmoid()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected_ce = torch.stack(
        [torch.stack([bce(logits[q], targets[n]) for n in range(3)]) for q in range(2)]
    )  # [2, 3]
    torch.testing.assert_close(batch_sigmoid_ce_cost(logits, targets), expected_ce)
    expected_dice = torch.stack(
        [
            torch.stack(
                [
                    1 - (2 * (p[q] * targets[n]).sum() + 1) / (p[q].sum() + targets[n].sum() + 1)
                    for n in range(3)
                ]
            )
            for q in range(2)
        ]
    )
    torch.testing.assert_close(batch_dice_cost(logits, targets), expected_dice)


@pytest.mark.parametrize("scale", [1.0, 12.0], ids=["unsure", "confident"])
def test_sigmoid_ce_cost_matches_elementwise_bce_at_the_training_size(scale):
    """The closed form (softplus row sum minus one product) against element-wise BCE in float64,
    with unsure or confident logits and soft targets at P = 12544 points."""
    generator = torch.Generator().manual_seed(0)
    logits = scale * torch.randn(100, 12544, generator=generator)  # [Q, P]
    targets = torch.rand(7, 12544, generator=generator).round()  # [N, P]
    targets[0] = torch.rand(12544, generator=generator)  # a soft (bilinearly sampled) target
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    x, t = logits.double()[:, None, :], targets.double()[None, :, :]  # [Q, 1, P], [1, N, P]
    expected = bce(x.expand(-1, 7, -1), t.expand(100, -1, -1), reduction="none").mean(-1)  # [Q, N]
    torch.testing.assert_close(
        batch_sigmoid_ce_cost(logits, targets).double(), expected, rtol=1e-5, atol=1e-4
    )


def test_known_optimum_matches_brute_force(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=32)
    outputs, targets = _random_problem(generator, num_queries=5, sizes=(3,))
    points = torch.rand(1, 32, 2, generator=generator)
    monkeypatch.setattr(
        point_sampling, "uniform_points", lambda shape, device, dtype: points.to(device, dtype)
    )
    cost = matcher.cost_matrix(
        outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"], targets[0]["masks"]
    )  # [5, 3]
    best = min(itertools.permutations(range(5), 3), key=lambda qs: sum(cost[q, n] for n, q in enumerate(qs)))
    rows, cols = matcher(outputs, targets)[0]
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64
    assert torch.equal(rows, rows.sort().values)
    assert {(int(q), int(n)) for q, n in zip(rows, cols)} == {(q, n) for n, q in enumerate(best)}


def test_obvious_assignment():
    # Query 2 predicts target 0 exactly (class and mask), query 0 predicts target 1.
    masks_t = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks_t[0, :8] = True
    masks_t[1, 8:] = True
    pred_masks = torch.full((1, 3, 16, 16), -10.0)
    pred_masks[0, 2] = torch.where(masks_t[0], 10.0, -10.0)
    pred_masks[0, 0] = torch.where(masks_t[1], 10.0, -10.0)
    pred_logits = torch.full((1, 3, 4), -5.0)
    pred_logits[0, 2, 1] = 5.0
    pred_logits[0, 0, 2] = 5.0
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=64)
    rows, cols = matcher(
        {"pred_logits": pred_logits, "pred_masks": pred_masks},
        [{"labels": torch.tensor([1, 2]), "masks": masks_t}],
    )[0]
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]


def test_batched_matches_per_image(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    outputs, targets = _random_problem(generator, sizes=(3, 0, 2, 6))
    draws = [
        torch.rand(1, 50, 2, generator=generator) for _ in range(3)
    ]  # images without targets draw nothing
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=50)

    def replay_from(queue):
        return lambda shape, device, dtype: queue.pop(0).to(device, dtype)

    monkeypatch.setattr(point_sampling, "uniform_points", replay_from(list(draws)))
    batched = matcher(outputs, targets)
    queue = list(draws)
    monkeypatch.setattr(point_sampling, "uniform_points", replay_from(queue))
    for b, target in enumerate(targets):
        single = matcher({k: v[b : b + 1] for k, v in outputs.items()}, [target])[0]
        assert torch.equal(single[0], batched[b][0]) and torch.equal(single[1], batched[b][1])
    assert not queue
    assert batched[1][0].numel() == 0 and batched[1][1].numel() == 0
    assert batched[1][0].dtype == torch.int64
    assert len(batched[3][0]) == 6  # 6 queries, 6 targets: everything matched


def test_non_finite_logits_do_not_crash():
    generator = torch.Generator().manual_seed(2)
    outputs, targets = _random_problem(generator, sizes=(3, 2))
    outputs["pred_logits"][0, 0] = float("nan")
    outputs["pred_logits"][0, 1, 0] = float("inf")
    outputs["pred_masks"][0, 2] = float("nan")
    outputs["pred_masks"][1, :] = float("-inf")
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=20)
    cost = matcher.cost_matrix(
        outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"], targets[0]["masks"]
    )
    assert bool(torch.isfinite(cost).all())
    assert bool((cost[0] == MAX_COST).all())  # a NaN prediction is the worst match
    indices = matcher(outputs, targets)
    assert [len(r) for r, _ in indices] == [3, 2]
    assert 0 not in indices[0][0].tolist()  # the NaN query is avoided when others are available


def test_autocast_bf16_costs_are_fp32():
    generator = torch.Generator().manual_seed(3)
    outputs, targets = _random_problem(generator, sizes=(2,))
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = outputs["pred_logits"][0].bfloat16()
        masks = outputs["pred_masks"][0].bfloat16()
        cost = matcher.cost_matrix(logits, masks, targets[0]["labels"], targets[0]["masks"])
        indices = matcher({"pred_logits": logits[None], "pred_masks": masks[None]}, targets)
    assert cost.dtype == torch.float32
    assert len(indices[0][0]) == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_points"):
        HungarianMatcher(1.0, 1.0, 1.0, 0)
    matcher = HungarianMatcher(1.0, 1.0, 1.0, 4)
    outputs = {"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 8, 8)}
    with pytest.raises(ValueError, match="targets"):
        matcher(outputs, [])
    with pytest.raises(ValueError, match="target 0"):
        matcher(outputs, [{"labels": torch.tensor([0, 1]), "masks": torch.zeros(1, 8, 8)}])


@pytest.mark.parametrize("num_points", [12544, 12545, 7])
def test_compiled_logit_terms_match_float64(num_points):
    """`mask2former::sigmoid_and_sums` (the CPU pass the matcher's mask costs read) against float64, at
    the training size, with a row length that is not a multiple of the 16 lanes and one shorter than
    them, logits from unsure to saturated, and exact zeros, infinities and a NaN."""
    assert compiled_op_available("cpu"), "mask2former._C is not built"
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.1, 1.0, 4.0, 30.0, 200.0])[:, None]
    logits = scales * torch.randn(5, num_points, generator=generator)  # [Q, P]
    logits[1, :4] = torch.tensor([0.0, -0.0, 87.5, -1000.0])
    sigmoid, softplus_sum, sigmoid_sum = torch.ops.mask2former.sigmoid_and_sums(logits)
    x = logits.double()
    torch.testing.assert_close(sigmoid.double(), x.sigmoid(), rtol=0, atol=2e-7)
    torch.testing.assert_close(softplus_sum.double(), F.softplus(x).sum(-1), rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(sigmoid_sum.double(), x.sigmoid().sum(-1), rtol=2e-6, atol=1e-5)

    special = torch.tensor([[float("inf"), float("-inf"), 0.0], [float("nan"), 1.0, -2.0]])
    sigmoid, softplus_sum, sigmoid_sum = torch.ops.mask2former.sigmoid_and_sums(special)
    torch.testing.assert_close(sigmoid[0], torch.tensor([1.0, 0.0, 0.5]))
    assert softplus_sum[0] == float("inf") and softplus_sum[1].isnan()  # a NaN logit: a NaN cost
    torch.testing.assert_close(sigmoid_sum[0], torch.tensor(1.5))
    with pytest.raises(RuntimeError, match=r"logits must be float32 \[Q, P\]"):
        torch.ops.mask2former.sigmoid_and_sums(logits.double())
    torch.library.opcheck(torch.ops.mask2former.sigmoid_and_sums, (logits,))


def test_mask_costs_on_the_cpu_match_float64():
    """Both mask costs from float32 logits on the CPU (through the compiled pass) against the same costs
    in float64 (PyTorch ops)."""
    generator = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(100, 1000, generator=generator)  # [Q, P]
    targets = torch.rand(6, 1000, generator=generator).round()  # [N, P]
    x, t = logits.double(), targets.double()
    expected_ce = (F.softplus(x).sum(-1)[:, None] - x @ t.T) / 1000
    probs = x.sigmoid()
    expected_dice = 1 - (2 * probs @ t.T + 1) / (probs.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)
    torch.testing.assert_close(
        batch_sigmoid_ce_cost(logits, targets).double(), expected_ce, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(batch_dice_cost(logits, targets).double(), expected_dice, rtol=1e-5, atol=1e-6)
