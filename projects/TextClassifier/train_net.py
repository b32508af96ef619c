#!/usr/bin/env python
"""Train or evaluate the text-classifier Mask2Former: tools/train_net.py's command line with this
project's config keys and registrations (Detectron2's pattern for projects).

    python projects/TextClassifier/train_net.py \
        --config-file projects/TextClassifier/configs/text_maskformer_R18_shapes.yaml
    python projects/TextClassifier/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS <model.pth>
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# tools/ first, so that `train_net` is tools/train_net.py and not this file; this folder (for
# `text_classifier`) follows. Workers started by --num-gpus inherit this path.
sys.path[:0] = [os.path.join(_HERE, "..", "..", "tools"), _HERE]

from text_classifier import add_text_classifier_config  # noqa: E402  (registers the components)
from train_net import cli  # noqa: E402  (tools/train_net.py)

if __name__ == "__main__":
    cli(config_adders=(add_text_classifier_config,))
