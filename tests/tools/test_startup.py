"""Start-up: what each entry point imports. Every check runs in a fresh interpreter, since this
test session has imported everything already. The properties, not times, are asserted: the
figures are in README.md (Benchmarks)."""

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Slow to import and not needed to build a ResNet model and run it on an image.
HEAVY = (
    "torchvision",  # imports torch._dynamo (torchvision.ops)
    "torch._dynamo",
    "sympy",
    "timm",  # Swin only
    "scipy",  # Hungarian matching: training only
    "tensorboard",
    "torch.utils.tensorboard",
    "mask2former.data.transforms",  # training augmentations (torchvision, OpenCV)
    "mask2former.data.dataset_mappers",
    "mask2former.data.build",
)


def loaded_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter at the repository root; return the modules of HEAVY,
    pycocotools, cv2 and torch that it left imported."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json as _json, sys as _sys
        _names = {list(HEAVY) + ["pycocotools", "cv2", "torch"]!r}
        print("LOADED=" + _json.dumps([m for m in _names if m in _sys.modules]))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("LOADED=")][-1]
    return json.loads(line[len("LOADED=") :])


def test_package_import_loads_nothing_heavy():
    assert loaded_after("import mask2former") == []


def test_demo_help_does_not_import_torch():
    loaded = loaded_after(
        """
        import runpy, sys
        sys.argv = ["demo/demo.py", "--help"]
        try:
            runpy.run_path("demo/demo.py", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        """
    )
    assert loaded == []


def test_config_model_and_catalog_imports_stay_light():
    """The catalog (with the builtin datasets registered), config and model code load neither
    torchvision / Dynamo nor the training-only libraries, nor OpenCV. (pycocotools.mask, a small
    C extension that mask decoding uses, may load.)"""
    loaded = loaded_after(
        """
        import mask2former.config, mask2former.modeling, mask2former.data
        from mask2former.data import MetadataCatalog
        assert MetadataCatalog.get("coco_2017_val_panoptic").thing_classes
        """
    )
    assert set(loaded) <= {"torch", "pycocotools"}


def test_predictor_on_one_image_imports_only_what_inference_needs():
    loaded = loaded_after(
        """
        import numpy as np
        from mask2former.config import get_cfg
        from mask2former.inference import Predictor
        from mask2former.utils.visualizer import Visualizer

        cfg = get_cfg()
        cfg.merge_from_file("configs/shapes/maskformer2_R18_shapes.yaml")
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64])
        predictor = Predictor(cfg)
        image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        result = predictor(image)
        Visualizer(image[:, :, ::-1], predictor.metadata).draw_sem_seg(result["sem_seg"])
        """
    )
    assert [m for m in loaded if m in HEAVY] == []


def test_training_imports_still_work_lazily():
    """Names of mask2former.data that are imported on first use resolve to the real objects."""
    loaded = loaded_after(
        """
        import mask2former.data as data
        from mask2former.data import build_detection_train_loader, transforms
        from mask2former.data.build import build_detection_train_loader as direct
        assert build_detection_train_loader is direct
        assert data.DATASET_MAPPER_REGISTRY.get("MaskFormerSemanticDatasetMapper") is data.MaskFormerSemanticDatasetMapper
        assert transforms.shortest_edge_size(2, 3000, 800, 1333) == (1, 1333)
        assert "build_dataset_mapper" in dir(data)
        try:
            data.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("unknown names must raise AttributeError")
        """
    )
    assert "mask2former.data.transforms" in loaded


def test_first_deformable_attention_call_compiles_in_one_graph():
    """`_resolve_impl` is marked as a constant for Dynamo without importing it at module import:
    a first call inside `torch.compile(fullgraph=True)` (extension not loaded before) still
    compiles to one graph, forward and backward."""
    loaded = loaded_after(
        """
        import importlib
        import torch

        msda = importlib.import_module("mask2former.layers.ms_deform_attn")
        assert "torch._dynamo" not in __import__("sys").modules
        shapes, starts = torch.tensor([[4, 5], [2, 3]]), torch.tensor([0, 20])
        value = torch.randn(1, 26, 2, 4, requires_grad=True)
        locations = torch.rand(1, 3, 2, 2, 2, 2)
        weights = torch.rand(1, 3, 2, 2, 2).softmax(-1)
        fn = torch.compile(msda.ms_deform_attn, backend="aot_eager", fullgraph=True)
        out = fn(value, shapes, starts, locations, weights)
        out.sum().backward()
        expected = msda.ms_deform_attn_reference(value.detach(), shapes, locations, weights)
        torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)
        """
    )
    assert "torch._dynamo" in loaded
