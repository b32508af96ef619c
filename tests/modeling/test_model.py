"""The model end to end on small random inputs: training losses and gradients, inference
outputs, registries, shapes and bad input."""

from __future__ import annotations

import pytest
import torch

from mask2former.modeling import BACKBONE_REGISTRY, build_model
from mask2former.structures import Instances
from mask2former.utils.testing import tiny_cfg


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _instances(h: int, w: int, boxes: list[tuple[int, int, int, int, int]]) -> Instances:
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, (_, y0, x0, y1, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    return Instances((h, w), gt_classes=torch.tensor([b[0] for b in boxes], dtype=torch.long), gt_masks=masks)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_training_losses_and_every_parameter_gets_a_gradient(model):
    model.train()
    batch = [
        {"image": _image(70, 93), "instances": _instances(70, 93, [(0, 5, 5, 40, 50), (3, 30, 20, 70, 93)])},
        {"image": _image(64, 64, 1), "instances": _instances(64, 64, [])},  # no targets at all
    ]
    losses = model(batch)
    assert set(losses) == {f"loss_{k}{s}" for k in ("ce", "mask", "dice") for s in ("", "_0", "_1", "_2")}
    total = sum(losses.values())
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient for {name}"
            assert torch.isfinite(p.grad).all(), name


def test_inference_batch_of_different_sizes(model):
    model.eval()
    with torch.no_grad():
        out = model([{"image": _image(70, 93)}, {"image": _image(50, 41, 2), "height": 100, "width": 82}])
    assert len(out) == 2
    assert out[0]["sem_seg"].shape == (5, 70, 93)
    assert out[1]["sem_seg"].shape == (5, 100, 82)
    seg, info = out[1]["panoptic_seg"]
    assert seg.shape == (100, 82) and seg.dtype == torch.int32
    assert set(seg.unique().tolist()) <= {0} | {s["id"] for s in info}
    inst = out[1]["instances"]
    assert inst.image_size == (100, 82)
    assert inst.pred_masks.shape[1:] == (100, 82)
    assert (inst.scores[:-1] >= inst.scores[1:]).all(), "instances are sorted by score"
    assert set(inst.pred_classes.tolist()) <= {0, 1, 2}, "panoptic on: instances keep thing classes only"


def test_topk_never_exceeds_queries_times_classes():
    cfg = tiny_cfg()
    cfg.merge_from_list(["TEST.DETECTIONS_PER_IMAGE", 1000, "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", False])
    model = build_model(cfg).eval()
    with torch.no_grad():
        inst = model([{"image": _image(64, 64)}])[0]["instances"]
    assert len(inst) == 8 * 5


def test_bad_inputs_are_named(model):
    model.eval()
    with pytest.raises(ValueError, match="empty batch"):
        model([])
    with pytest.raises(ValueError, match=r"\[3, H, W\].*\(1, 32, 32\)"):
        model([{"image": torch.zeros(1, 32, 32, dtype=torch.uint8)}])
    with pytest.raises(ValueError, match=r"\(4, 32, 32\)"):
        model([{"image": torch.zeros(4, 32, 32, dtype=torch.uint8)}])


def test_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = tiny_cfg()
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(RuntimeError, match="MODEL.DEVICE cpu"):
        build_model(cfg)


def test_panoptic_without_metadata_is_a_clear_error():
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = ("dataset_nobody_registered",)
    with pytest.raises(ValueError, match="dataset_nobody_registered"):
        build_model(cfg)


def test_outside_module_registered_and_built_from_yaml(tmp_path):
    """A user's backbone, registered from outside the package, is picked by name from YAML."""
    from mask2former.layers import ShapeSpec
    from mask2former.modeling.backbone import Backbone

    class TinyStrided(Backbone):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList(
                torch.nn.Conv2d(c_in, c_out, 3, stride=s, padding=1)
                for c_in, c_out, s in [(3, 16, 4), (16, 24, 2), (24, 32, 2), (32, 40, 2)]
            )
            self._out_features = ["res2", "res3", "res4", "res5"]
            self._out_feature_channels = dict(zip(self._out_features, [16, 24, 32, 40]))
            self._out_feature_strides = dict(zip(self._out_features, [4, 8, 16, 32]))

        def forward(self, x):
            out = {}
            for name, conv in zip(self._out_features, self.convs):
                x = torch.relu(conv(x))
                out[name] = x
            return out

    @BACKBONE_REGISTRY.register()
    def build_user_tiny_backbone(cfg, input_shape: ShapeSpec):
        return TinyStrided()

    yaml_path = tmp_path / "user.yaml"
    yaml_path.write_text("MODEL:\n  BACKBONE:\n    NAME: build_user_tiny_backbone\n")
    cfg = tiny_cfg()
    cfg.merge_from_file(str(yaml_path))
    model = build_model(cfg).eval()
    assert isinstance(model.backbone, TinyStrided)
    with torch.no_grad():
        out = model([{"image": _image(64, 96)}])
    assert out[0]["sem_seg"].shape == (5, 64, 96)


# Largest |difference| to float32 of the semantic scores (values in [0.09, 2.0]) and of the instance
# scores, measured over seeds 0-2 on the CPU with bfloat16 (8-bit mantissa; linears and attention
# projections on oneDNN with bfloat16 weights): 0.040 and 0.0077; mean semantic difference at most
# 0.0134. Tolerances are about 1.5 times that.
LOW_PRECISION_TOLERANCE = {  # dtype: (max semantic, mean semantic, max instance score)
    "bfloat16": (0.06, 0.02, 0.012),
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_inference_keeps_float32_outputs(dtype):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    reference = build_model(cfg).eval()
    cfg.MODEL.INFERENCE_DTYPE = dtype
    low = build_model(cfg).eval()
    low.load_state_dict(reference.state_dict())
    inputs = [{"image": _image(64, 96)}]
    with torch.no_grad():
        ref_out, low_out = reference(inputs)[0], low(inputs)[0]
    assert low_out["sem_seg"].dtype == torch.float32
    assert low_out["instances"].scores.dtype == torch.float32
    # the CPU only emulates float16, so float16 runs as bfloat16 there (with one warning)
    assert low.inference_dtype == torch.bfloat16
    max_sem, mean_sem, max_score = LOW_PRECISION_TOLERANCE["bfloat16"]
    sem_diff = (low_out["sem_seg"] - ref_out["sem_seg"]).abs()
    assert sem_diff.max() <= max_sem and sem_diff.mean() <= mean_sem, (sem_diff.max(), sem_diff.mean())
    scores, ref_scores = low_out["instances"].scores.sort().values, ref_out["instances"].scores.sort().values
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=max_score)


def test_unknown_inference_dtype_is_named():
    cfg = tiny_cfg()
    cfg.MODEL.INFERENCE_DTYPE = "float8"
    with pytest.raises(ValueError, match="MODEL.INFERENCE_DTYPE"):
        build_model(cfg)


@pytest.mark.slow
def test_compiled_model_matches_eager_and_keeps_parameter_names():
    """MODEL.COMPILE: backbone and head through torch.compile (with the custom deformable op)."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    eager = build_model(cfg).eval()
    cfg.MODEL.COMPILE = True
    compiled = build_model(cfg).eval()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    inputs = [{"image": _image(64, 96)}]
    with torch.no_grad():
        ref, out = eager(inputs)[0], compiled(inputs)[0]
    torch.testing.assert_close(out["sem_seg"], ref["sem_seg"], rtol=1e-4, atol=1e-4)
    assert torch.equal(out["panoptic_seg"][0], ref["panoptic_seg"][0])
