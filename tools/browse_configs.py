#!/usr/bin/env python
"""Browse the model-zoo configs: task, dataset, backbone, reported results and weights URL of
each, or one config merged with overrides. The same as `python -m mask2former.model_zoo`.

    python tools/browse_configs.py --task panoptic --dataset coco
    python tools/browse_configs.py --show coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml SOLVER.IMS_PER_BATCH 8
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.model_zoo import main  # noqa: E402

if __name__ == "__main__":
    main()
