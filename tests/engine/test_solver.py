import math

import pytest
import torch
from torch import nn

from mask2former.config import get_cfg
from mask2former.engine.solver import (
    GradientClipSettings,
    build_lr_scheduler,
    build_optimizer,
    clip_gradients,
    clipped_step,
)
from mask2former.layers import FrozenBatchNorm2d


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.qkv = nn.Linear(4, 12)


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = FrozenBatchNorm2d(4)
        self.attn = _Attention()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.norm = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.query_feat = nn.Embedding(5, 4)
        self.proj = nn.Linear(4, 4)
        self.frozen_layer = nn.Linear(4, 4)
        self.frozen_layer.requires_grad_(False)
        self.tied = self.proj  # shared module: its parameters must appear once


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _hyper(optimizer):
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_fused_adamw_step_matches_the_update_rule_written_out():
    """The optimizer uses PyTorch's fused kernel on the CPU; two steps of it give what AdamW's
    formula (decoupled weight decay, bias-corrected moments) gives, per parameter group."""
    model = _Model()
    optimizer = build_optimizer(_cfg(), model)
    assert all(g["fused"] for g in optimizer.param_groups)
    generator = torch.Generator().manual_seed(0)
    expected = {}
    for group in optimizer.param_groups:
        lr, decay = group["lr"], group["weight_decay"]
        (beta1, beta2), eps = group["betas"], group["eps"]
        for p in group["params"]:
            value, m, v = p.detach().clone().double(), torch.zeros_like(p, dtype=torch.float64), 0
            for step in (1, 2):
                grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
                m = beta1 * m + (1 - beta1) * grad
                v = beta2 * v + (1 - beta2) * grad**2
                value = value * (1 - lr * decay)
                m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
                value = value - lr * m_hat / (v_hat.sqrt() + eps)
            expected[p] = value
    generator.manual_seed(0)
    grads = {  # the same draws, in the same order as above
        p: [torch.randn(p.shape, generator=generator, dtype=torch.float64) for _ in (1, 2)] for p in expected
    }
    for step in (0, 1):
        for p, g in grads.items():
            p.grad = g[step].float()
        optimizer.step()
    for p, value in expected.items():
        torch.testing.assert_close(p.detach().double(), value, rtol=1e-5, atol=1e-6)


def test_param_groups_lr_and_weight_decay():
    model = _Model()
    optimizer = build_optimizer(_cfg(), model)
    assert isinstance(optimizer, torch.optim.AdamW)
    hp = _hyper(optimizer)
    bb = model.backbone
    expected = {
        bb.conv.weight: (0.01, 0.05),
        bb.bn.weight: (0.01, 0.0),
        bb.bn.bias: (0.01, 0.0),
        bb.attn.relative_position_bias_table: (0.01, 0.0),
        bb.attn.qkv.weight: (0.01, 0.05),
        bb.absolute_pos_embed: (0.01, 0.0),
        model.norm.weight: (0.1, 0.0),
        model.gn.bias: (0.1, 0.0),
        model.query_feat.weight: (0.1, 0.0),
        model.proj.weight: (0.1, 0.05),
        model.proj.bias: (0.1, 0.05),
    }
    for param, (lr, wd) in expected.items():
        assert hp[id(param)] == pytest.approx((lr, wd))
    trainable = [p for p in model.parameters() if p.requires_grad]  # parameters() already dedups
    assert len(hp) == sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    assert id(model.frozen_layer.weight) not in hp


def test_bias_settings_and_sgd():
    model = _Model()
    cfg = _cfg(OPTIMIZER="SGD", BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_BIAS=0.5, MOMENTUM=0.8, NESTEROV=True)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.8 and optimizer.param_groups[0]["nesterov"]
    hp = _hyper(optimizer)
    assert hp[id(model.proj.bias)] == pytest.approx((0.2, 0.5))
    assert hp[id(model.backbone.bn.bias)] == pytest.approx((0.02, 0.5))
    assert hp[id(model.proj.weight)] == pytest.approx((0.1, 0.05))


def test_unknown_names_raise_naming_the_key():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), _Model())
    optimizer = build_optimizer(_cfg(), _Model())
    with pytest.raises(ValueError, match="SOLVER.LR_SCHEDULER_NAME"):
        build_lr_scheduler(_cfg(LR_SCHEDULER_NAME="WarmupCosineLR"), optimizer)
    with pytest.raises(ValueError, match="SOLVER.WARMUP_METHOD"):
        build_lr_scheduler(_cfg(WARMUP_METHOD="exp"), optimizer)
    with pytest.raises(ValueError, match="SOLVER.CLIP_GRADIENTS.CLIP_TYPE"):
        GradientClipSettings(enabled=True, clip_type="global", clip_value=1.0, norm_type=2.0)


def _lrs(scheduler, optimizer, iters):
    """LR of group 0 at each iteration in `iters` (the scheduler stepped once per iteration)."""
    out, it = {}, 0
    for target in sorted(iters):
        while it < target:
            optimizer.step()
            scheduler.step()
            it += 1
        out[target] = optimizer.param_groups[0]["lr"]
    return out


def _single_param_optimizer(cfg):
    return build_optimizer(cfg, nn.Linear(2, 2, bias=False))


def test_poly_schedule_closed_form():
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=100, WARMUP_ITERS=10, WARMUP_FACTOR=0.01, POLY_LR_POWER=0.9
    )
    optimizer = _single_param_optimizer(cfg)
    scheduler = build_lr_scheduler(cfg, optimizer)
    iters = [0, 1, 5, 9, 10, 50, 99, 100, 120]
    got = _lrs(scheduler, optimizer, iters)
    for it in iters:
        alpha = it / 10
        warm = 0.01 * (1 - alpha) + alpha if it < 10 else 1.0
        expected = 0.1 * warm * (1 - min(it, 100) / 100) ** 0.9
        assert got[it] == pytest.approx(expected, rel=1e-9, abs=1e-15), it


def test_poly_constant_ending_and_constant_warmup():
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR",
        MAX_ITER=100,
        WARMUP_ITERS=5,
        WARMUP_METHOD="constant",
        WARMUP_FACTOR=0.5,
        POLY_LR_CONSTANT_ENDING=0.2,
    )
    optimizer = _single_param_optimizer(cfg)
    got = _lrs(build_lr_scheduler(cfg, optimizer), optimizer, [0, 4, 5, 50, 90, 99])
    assert got[0] == pytest.approx(0.1 * 0.5 * 1.0)
    assert got[4] == pytest.approx(0.1 * 0.5 * 0.96**0.9)
    assert got[5] == pytest.approx(0.1 * 0.95**0.9)
    assert got[50] == pytest.approx(0.1 * 0.5**0.9)
    assert got[90] == pytest.approx(0.1 * 0.2)  # 0.1 ** 0.9 = 0.126 < 0.2
    assert got[99] == pytest.approx(0.1 * 0.2)


def test_multistep_schedule_closed_form_and_backbone_group():
    cfg = _cfg(MAX_ITER=100, STEPS=(30, 60, 200), GAMMA=0.1, WARMUP_ITERS=10, WARMUP_FACTOR=0.001)
    model = _Model()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    backbone_group = next(
        g for g in optimizer.param_groups if any(p is model.backbone.conv.weight for p in g["params"])
    )
    expected = {0: 0.001, 5: 0.001 * 0.5 + 0.5, 10: 1.0, 29: 1.0, 30: 0.1, 59: 0.1, 60: 0.01, 99: 0.01}
    it = 0
    for target, factor in sorted(expected.items()):
        while it < target:
            optimizer.step()
            scheduler.step()
            it += 1
        assert backbone_group["lr"] == pytest.approx(0.01 * factor), target
        assert scheduler.get_last_lr()[0] == pytest.approx(optimizer.param_groups[0]["lr"])


def test_scheduler_state_dict_round_trip():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=50, WARMUP_ITERS=5)
    optimizer = _single_param_optimizer(cfg)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    optimizer_state = optimizer.state_dict()

    resumed_optimizer = _single_param_optimizer(cfg)
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed = build_lr_scheduler(cfg, resumed_optimizer)
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 17
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        resumed_optimizer.step()
        resumed.step()
        assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 20 / 50) ** 0.9)


def _params_with_grads(*grads):
    params = []
    for g in grads:
        p = nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    return params


def _clip_cfg(clip_type, value, norm_type=2.0, enabled=True):
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = enabled
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = norm_type
    return cfg


def test_clip_full_model_clips_joint_norm():
    params = _params_with_grads(torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0]))  # joint norm 5
    total = clip_gradients(_clip_cfg("full_model", 1.0), params)
    assert float(total) == pytest.approx(5.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.6, 0.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[1].grad, torch.tensor([0.0, 0.8]), rtol=1e-5, atol=1e-6)


def test_clip_norm_clips_each_parameter():
    params = _params_with_grads(torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4]))  # norms 5 and 0.5
    assert clip_gradients(GradientClipSettings.from_cfg(_clip_cfg("norm", 1.0)), params) is None
    torch.testing.assert_close(params[0].grad, torch.tensor([0.6, 0.8]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[1].grad, torch.tensor([0.3, 0.4]))


def test_clip_value_and_disabled():
    params = _params_with_grads(torch.tensor([3.0, -0.2, -7.0]))
    clip_gradients(_clip_cfg("value", 0.5), params)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.5, -0.2, -0.5]))
    params = _params_with_grads(torch.tensor([3.0, -7.0]))
    assert clip_gradients(_clip_cfg("full_model", 0.01, enabled=False), params) is None
    torch.testing.assert_close(params[0].grad, torch.tensor([3.0, -7.0]))
    no_grad = nn.Parameter(torch.zeros(2))
    assert float(clip_gradients(_clip_cfg("full_model", 1.0), [no_grad])) == 0.0
    assert math.isclose(float(clip_gradients(_clip_cfg("full_model", 1.0, norm_type=1.0), params)), 10.0)


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd"])
@pytest.mark.parametrize("clip_value", [0.5, 100.0], ids=["clipping", "under-the-limit"])
def test_clipped_step_folds_full_model_clipping_into_the_fused_step(optimizer_name, clip_value):
    """A fused optimizer's step inside `clipped_step` (the clip factor applied by the step as it reads the
    gradients) against clip_gradients then the same step, over several steps with AdamW's moments."""
    generator = torch.Generator().manual_seed(0)
    settings = GradientClipSettings.from_cfg(_clip_cfg("full_model", clip_value))
    make = {
        "adamw": lambda ps, fused: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.05, fused=fused),
        "sgd": lambda ps, fused: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=fused),
    }[optimizer_name]
    shapes = [(7, 3), (5,), (2, 2, 3)]
    folded = [nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    reference = [nn.Parameter(p.detach().clone()) for p in folded]
    folded_opt, reference_opt = make(folded, True), make(reference, False)
    for _ in range(3):
        for a, b in zip(folded, reference):
            a.grad = 3 * torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        with clipped_step(settings, folded_opt):
            assert float(folded_opt.grad_scale) >= 1.0
            folded_opt.step()
        assert not hasattr(folded_opt, "grad_scale")
        clip_gradients(settings, reference)
        reference_opt.step()
        for a, b in zip(folded, reference):
            torch.testing.assert_close(a.grad, b.grad)  # the step stores the clipped gradients
            torch.testing.assert_close(a.detach(), b.detach())


def test_clipped_step_clips_before_the_step_where_it_cannot_fold():
    """Non-fused optimizers and the other clip types clip the gradients before the step."""
    params = _params_with_grads(torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0]))  # joint norm 5
    optimizer = torch.optim.SGD(params, lr=0.0, fused=False)
    with clipped_step(GradientClipSettings.from_cfg(_clip_cfg("full_model", 1.0)), optimizer):
        torch.testing.assert_close(params[0].grad, torch.tensor([0.6, 0.0]), rtol=1e-5, atol=1e-6)
        assert not hasattr(optimizer, "grad_scale")
    params = _params_with_grads(torch.tensor([3.0, -7.0]))
    optimizer = torch.optim.SGD(params, lr=0.0, fused=True)
    with clipped_step(GradientClipSettings.from_cfg(_clip_cfg("value", 0.5)), optimizer):
        torch.testing.assert_close(params[0].grad, torch.tensor([0.5, -0.5]))
