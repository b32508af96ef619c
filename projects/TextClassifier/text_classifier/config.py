"""The config keys this extension adds (Detectron2's config adder pattern)."""

from mask2former.config import CfgNode


def add_text_classifier_config(cfg: CfgNode) -> None:
    """Add MODEL.TEXT_CLASSIFIER to `cfg` in place; call it before `merge_from_file`.

    EMBED_DIM: width D of the class-name embeddings.
    TEMPERATURE: the logits are cosine similarities divided by it.
    TEST_CLASSES: class names kept at inference (empty: every class of DATASETS.TRAIN[0])."""
    cfg.MODEL.TEXT_CLASSIFIER = CfgNode()
    cfg.MODEL.TEXT_CLASSIFIER.EMBED_DIM = 64
    cfg.MODEL.TEXT_CLASSIFIER.TEMPERATURE = 0.07
    cfg.MODEL.TEXT_CLASSIFIER.TEST_CLASSES = []


def text_classifier_config(cfg: CfgNode) -> CfgNode:
    """cfg.MODEL.TEXT_CLASSIFIER, or an error saying how to add it. (MODEL also holds Detectron2
    keys this project does not use, so a config file loaded without the adder only warns that
    it ignores MODEL.TEXT_CLASSIFIER.)"""
    if "TEXT_CLASSIFIER" not in cfg.MODEL:
        raise ValueError(
            "the config has no MODEL.TEXT_CLASSIFIER: call add_text_classifier_config(cfg) before "
            "merge_from_file (projects/TextClassifier/train_net.py does)"
        )
    return cfg.MODEL.TEXT_CLASSIFIER
