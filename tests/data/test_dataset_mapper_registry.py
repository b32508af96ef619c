"""INPUT.DATASET_MAPPER_NAME selects a mapper from DATASET_MAPPER_REGISTRY (fvcore's Registry,
keyed by class name) or by the original project's names; a user's mapper registers itself."""

import random

import pytest

from mask2former.config import get_cfg
from mask2former.data import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from mask2former.data.build import MapDataset
from mask2former.data.dataset_mappers import MAPPER_CONFIG_NAMES


def _cfg(name: str):
    cfg = get_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = name
    return cfg


@pytest.mark.parametrize("config_name", sorted(MAPPER_CONFIG_NAMES))
def test_original_names_select_the_registered_classes(config_name):
    mapper = build_dataset_mapper(_cfg(config_name), True)
    assert type(mapper) is DATASET_MAPPER_REGISTRY.get(MAPPER_CONFIG_NAMES[config_name])
    assert type(build_dataset_mapper(_cfg(type(mapper).__name__), True)) is type(mapper)


def test_user_mapper_registered_and_given_a_per_sample_generator():
    @DATASET_MAPPER_REGISTRY.register()
    class DrawOneNumberMapper:
        takes_rng = True

        def __init__(self, cfg, is_train: bool = True):
            self.is_train = is_train

        def __call__(self, dataset_dict: dict, rng: random.Random) -> dict:
            return {**dataset_dict, "draw": rng.random()}

    try:
        mapper = build_dataset_mapper(_cfg("DrawOneNumberMapper"), True)
        dataset = MapDataset([{"file_name": "a"}], mapper, seed=4)
        assert dataset[(2, 0)]["draw"] == dataset[(2, 0)]["draw"] != dataset[(3, 0)]["draw"]
        # The seed derivation of the global reseeding it replaces: resumed runs see the same draws.
        assert dataset[(2, 0)]["draw"] == random.Random((4 * 1_000_003 + 2) % 2**32).random()
    finally:
        DATASET_MAPPER_REGISTRY._obj_map.pop("DrawOneNumberMapper")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="'nope' is not registered; known: .*mask_former_semantic"):
        build_dataset_mapper(_cfg("nope"), True)
