"""Class tables of the builtin datasets (facts of the datasets, written as data).

Each entry: (dataset id, name, isthing, (R, G, B) colour).
- COCO panoptic: 133 categories (80 things + 53 stuff), ids as in `panoptic_val2017.json`.
- ADE20K SceneParsing: 150 classes, id = train id (0..149); `isthing` is the split of the ADE20K
  panoptic / instance task (100 things, 50 stuff).
- Cityscapes: the 19 train ids, id = Cityscapes label id.
- Mapillary Vistas v1.2: 65 classes, id = class index (0..64); 65 ("Unlabeled") is void.
"""

from __future__ import annotations

# fmt: off
COCO_CATEGORIES: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (1, "person", 1, (220, 20, 60)), (2, "bicycle", 1, (119, 11, 32)), (3, "car", 1, (0, 0, 142)),
    (4, "motorcycle", 1, (0, 0, 230)), (5, "airplane", 1, (106, 0, 228)), (6, "bus", 1, (0, 60, 100)),
    (7, "train", 1, (0, 80, 100)), (8, "truck", 1, (0, 0, 70)), (9, "boat", 1, (0, 0, 192)),
    (10, "traffic light", 1, (250, 170, 30)), (11, "fire hydrant", 1, (100, 170, 30)),
    (13, "stop sign", 1, (220, 220, 0)), (14, "parking meter", 1, (175, 116, 175)),
    (15, "bench", 1, (250, 0, 30)), (16, "bird", 1, (165, 42, 42)), (17, "cat", 1, (255, 77, 255)),
    (18, "dog", 1, (0, 226, 252)), (19, "horse", 1, (182, 182, 255)), (20, "sheep", 1, (0, 82, 0)),
    (21, "cow", 1, (120, 166, 157)), (22, "elephant", 1, (110, 76, 0)), (23, "bear", 1, (174, 57, 255)),
    (24, "zebra", 1, (199, 100, 0)), (25, "giraffe", 1, (72, 0, 118)), (27, "backpack", 1, (255, 179, 240)),
    (28, "umbrella", 1, (0, 125, 92)), (31, "handbag", 1, (209, 0, 151)), (32, "tie", 1, (188, 208, 182)),
    (33, "suitcase", 1, (0, 220, 176)), (34, "frisbee", 1, (255, 99, 164)), (35, "skis", 1, (92, 0, 73)),
    (36, "snowboard", 1, (133, 129, 255)), (37, "sports ball", 1, (78, 180, 255)), (38, "kite", 1, (0, 228, 0)),
    (39, "baseball bat", 1, (174, 255, 243)), (40, "baseball glove", 1, (45, 89, 255)),
    (41, "skateboard", 1, (134, 134, 103)), (42, "surfboard", 1, (145, 148, 174)),
    (43, "tennis racket", 1, (255, 208, 186)), (44, "bottle", 1, (197, 226, 255)),
    (46, "wine glass", 1, (171, 134, 1)), (47, "cup", 1, (109, 63, 54)), (48, "fork", 1, (207, 138, 255)),
    (49, "knife", 1, (151, 0, 95)), (50, "spoon", 1, (9, 80, 61)), (51, "bowl", 1, (84, 105, 51)),
    (52, "banana", 1, (74, 65, 105)), (53, "apple", 1, (166, 196, 102)), (54, "sandwich", 1, (208, 195, 210)),
    (55, "orange", 1, (255, 109, 65)), (56, "broccoli", 1, (0, 143, 149)), (57, "carrot", 1, (179, 0, 194)),
    (58, "hot dog", 1, (209, 99, 106)), (59, "pizza", 1, (5, 121, 0)), (60, "donut", 1, (227, 255, 205)),
    (61, "cake", 1, (147, 186, 208)), (62, "chair", 1, (153, 69, 1)), (63, "couch", 1, (3, 95, 161)),
    (64, "potted plant", 1, (163, 255, 0)), (65, "bed", 1, (119, 0, 170)), (67, "dining table", 1, (0, 182, 199)),
    (70, "toilet", 1, (0, 165, 120)), (72, "tv", 1, (183, 130, 88)), (73, "laptop", 1, (95, 32, 0)),
    (74, "mouse", 1, (130, 114, 135)), (75, "remote", 1, (110, 129, 133)), (76, "keyboard", 1, (166, 74, 118)),
    (77, "cell phone", 1, (219, 142, 185)), (78, "microwave", 1, (79, 210, 114)), (79, "oven", 1, (178, 90, 62)),
    (80, "toaster", 1, (65, 70, 15)), (81, "sink", 1, (127, 167, 115)), (82, "refrigerator", 1, (59, 105, 106)),
    (84, "book", 1, (142, 108, 45)), (85, "clock", 1, (196, 172, 0)), (86, "vase", 1, (95, 54, 80)),
    (87, "scissors", 1, (128, 76, 255)), (88, "teddy bear", 1, (201, 57, 1)), (89, "hair drier", 1, (246, 0, 122)),
    (90, "toothbrush", 1, (191, 162, 208)),
    (92, "banner", 0, (255, 255, 128)), (93, "blanket", 0, (147, 211, 203)), (95, "bridge", 0, (150, 100, 100)),
    (100, "cardboard", 0, (168, 171, 172)), (107, "counter", 0, (146, 112, 198)), (109, "curtain", 0, (210, 170, 100)),
    (112, "door-stuff", 0, (92, 136, 89)), (118, "floor-wood", 0, (218, 88, 184)), (119, "flower", 0, (241, 129, 0)),
    (122, "fruit", 0, (217, 17, 255)), (125, "gravel", 0, (124, 74, 181)), (128, "house", 0, (70, 70, 70)),
    (130, "light", 0, (255, 228, 255)), (133, "mirror-stuff", 0, (154, 208, 0)), (138, "net", 0, (193, 0, 92)),
    (141, "pillow", 0, (76, 91, 113)), (144, "platform", 0, (255, 180, 195)), (145, "playingfield", 0, (106, 154, 176)),
    (147, "railroad", 0, (230, 150, 140)), (148, "river", 0, (60, 143, 255)), (149, "road", 0, (128, 64, 128)),
    (151, "roof", 0, (92, 82, 55)), (154, "sand", 0, (254, 212, 124)), (155, "sea", 0, (73, 77, 174)),
    (156, "shelf", 0, (255, 160, 98)), (159, "snow", 0, (255, 255, 255)), (161, "stairs", 0, (104, 84, 109)),
    (166, "tent", 0, (169, 164, 131)), (168, "towel", 0, (225, 199, 255)), (171, "wall-brick", 0, (137, 54, 74)),
    (175, "wall-stone", 0, (135, 158, 223)), (176, "wall-tile", 0, (7, 246, 231)), (177, "wall-wood", 0, (107, 255, 200)),
    (178, "water-other", 0, (58, 41, 149)), (180, "window-blind", 0, (183, 121, 142)),
    (181, "window-other", 0, (255, 73, 97)), (184, "tree-merged", 0, (107, 142, 35)),
    (185, "fence-merged", 0, (190, 153, 153)), (186, "ceiling-merged", 0, (146, 139, 141)),
    (187, "sky-other-merged", 0, (70, 130, 180)), (188, "cabinet-merged", 0, (134, 199, 156)),
    (189, "table-merged", 0, (209, 226, 140)), (190, "floor-other-merged", 0, (96, 36, 108)),
    (191, "pavement-merged", 0, (96, 96, 96)), (192, "mountain-merged", 0, (64, 170, 64)),
    (193, "grass-merged", 0, (152, 251, 152)), (194, "dirt-merged", 0, (208, 229, 228)),
    (195, "paper-merged", 0, (206, 186, 171)), (196, "food-other-merged", 0, (152, 161, 64)),
    (197, "building-other-merged", 0, (116, 112, 0)), (198, "rock-merged", 0, (0, 114, 143)),
    (199, "wall-other-merged", 0, (102, 102, 156)), (200, "rug-merged", 0, (250, 141, 255)),
)

ADE20K_150_CATEGORIES: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (0, "wall", 0, (120, 120, 120)), (1, "building", 0, (180, 120, 120)), (2, "sky", 0, (6, 230, 230)),
    (3, "floor", 0, (80, 50, 50)), (4, "tree", 0, (4, 200, 3)), (5, "ceiling", 0, (120, 120, 80)),
    (6, "road", 0, (140, 140, 140)), (7, "bed", 1, (204, 5, 255)), (8, "windowpane", 1, (230, 230, 230)),
    (9, "grass", 0, (4, 250, 7)), (10, "cabinet", 1, (224, 5, 255)), (11, "sidewalk", 0, (235, 255, 7)),
    (12, "person", 1, (150, 5, 61)), (13, "earth", 0, (120, 120, 70)), (14, "door", 1, (8, 255, 51)),
    (15, "table", 1, (255, 6, 82)), (16, "mountain", 0, (143, 255, 140)), (17, "plant", 0, (204, 255, 4)),
    (18, "curtain", 1, (255, 51, 7)), (19, "chair", 1, (204, 70, 3)), (20, "car", 1, (0, 102, 200)),
    (21, "water", 0, (61, 230, 250)), (22, "painting", 1, (255, 6, 51)), (23, "sofa", 1, (11, 102, 255)),
    (24, "shelf", 1, (255, 7, 71)), (25, "house", 0, (255, 9, 224)), (26, "sea", 0, (9, 7, 230)),
    (27, "mirror", 1, (220, 220, 220)), (28, "rug", 0, (255, 9, 92)), (29, "field", 0, (112, 9, 255)),
    (30, "armchair", 1, (8, 255, 214)), (31, "seat", 1, (7, 255, 224)), (32, "fence", 1, (255, 184, 6)),
    (33, "desk", 1, (10, 255, 71)), (34, "rock", 0, (255, 41, 10)), (35, "wardrobe", 1, (7, 255, 255)),
    (36, "lamp", 1, (224, 255, 8)), (37, "bathtub", 1, (102, 8, 255)), (38, "railing", 1, (255, 61, 6)),
    (39, "cushion", 1, (255, 194, 7)), (40, "base", 0, (255, 122, 8)), (41, "box", 1, (0, 255, 20)),
    (42, "column", 1, (255, 8, 41)), (43, "signboard", 1, (255, 5, 153)), (44, "chest of drawers", 1, (6, 51, 255)),
    (45, "counter", 1, (235, 12, 255)), (46, "sand", 0, (160, 150, 20)), (47, "sink", 1, (0, 163, 255)),
    (48, "skyscraper", 0, (140, 140, 140)), (49, "fireplace", 1, (250, 10, 15)), (50, "refrigerator", 1, (20, 255, 0)),
    (51, "grandstand", 0, (31, 255, 0)), (52, "path", 0, (255, 31, 0)), (53, "stairs", 1, (255, 224, 0)),
    (54, "runway", 0, (153, 255, 0)), (55, "case", 1, (0, 0, 255)), (56, "pool table", 1, (255, 71, 0)),
    (57, "pillow", 1, (0, 235, 255)), (58, "screen door", 1, (0, 173, 255)), (59, "stairway", 0, (31, 0, 255)),
    (60, "river", 0, (11, 200, 200)), (61, "bridge", 0, (255, 82, 0)), (62, "bookcase", 1, (0, 255, 245)),
    (63, "blind", 0, (0, 61, 255)), (64, "coffee table", 1, (0, 255, 112)), (65, "toilet", 1, (0, 255, 133)),
    (66, "flower", 1, (255, 0, 0)), (67, "book", 1, (255, 163, 0)), (68, "hill", 0, (255, 102, 0)),
    (69, "bench", 1, (194, 255, 0)), (70, "countertop", 1, (0, 143, 255)), (71, "stove", 1, (51, 255, 0)),
    (72, "palm", 1, (0, 82, 255)), (73, "kitchen island", 1, (0, 255, 41)), (74, "computer", 1, (0, 255, 173)),
    (75, "swivel chair", 1, (10, 0, 255)), (76, "boat", 1, (173, 255, 0)), (77, "bar", 0, (0, 255, 153)),
    (78, "arcade machine", 1, (255, 92, 0)), (79, "hovel", 0, (255, 0, 255)), (80, "bus", 1, (255, 0, 245)),
    (81, "towel", 1, (255, 0, 102)), (82, "light", 1, (255, 173, 0)), (83, "truck", 1, (255, 0, 20)),
    (84, "tower", 0, (255, 184, 184)), (85, "chandelier", 1, (0, 31, 255)), (86, "awning", 1, (0, 255, 61)),
    (87, "streetlight", 1, (0, 71, 255)), (88, "booth", 1, (255, 0, 204)), (89, "television receiver", 1, (0, 255, 194)),
    (90, "airplane", 1, (0, 255, 82)), (91, "dirt track", 0, (0, 10, 255)), (92, "apparel", 1, (0, 112, 255)),
    (93, "pole", 1, (51, 0, 255)), (94, "land", 0, (0, 194, 255)), (95, "bannister", 1, (0, 122, 255)),
    (96, "escalator", 0, (0, 255, 163)), (97, "ottoman", 1, (255, 153, 0)), (98, "bottle", 1, (0, 255, 10)),
    (99, "buffet", 0, (255, 112, 0)), (100, "poster", 0, (143, 255, 0)), (101, "stage", 0, (82, 0, 255)),
    (102, "van", 1, (163, 255, 0)), (103, "ship", 1, (255, 235, 0)), (104, "fountain", 1, (8, 184, 170)),
    (105, "conveyer belt", 0, (133, 0, 255)), (106, "canopy", 0, (0, 255, 92)), (107, "washer", 1, (184, 0, 255)),
    (108, "plaything", 1, (255, 0, 31)), (109, "swimming pool", 0, (0, 184, 255)), (110, "stool", 1, (0, 214, 255)),
    (111, "barrel", 1, (255, 0, 112)), (112, "basket", 1, (92, 255, 0)), (113, "waterfall", 0, (0, 224, 255)),
    (114, "tent", 0, (112, 224, 255)), (115, "bag", 1, (70, 184, 160)), (116, "minibike", 1, (163, 0, 255)),
    (117, "cradle", 0, (153, 0, 255)), (118, "oven", 1, (71, 255, 0)), (119, "ball", 1, (255, 0, 163)),
    (120, "food", 1, (255, 204, 0)), (121, "step", 1, (255, 0, 143)), (122, "tank", 0, (0, 255, 235)),
    (123, "trade name", 1, (133, 255, 0)), (124, "microwave", 1, (255, 0, 235)), (125, "pot", 1, (245, 0, 255)),
    (126, "animal", 1, (255, 0, 122)), (127, "bicycle", 1, (255, 245, 0)), (128, "lake", 0, (10, 190, 212)),
    (129, "dishwasher", 1, (214, 255, 0)), (130, "screen", 1, (0, 204, 255)), (131, "blanket", 0, (20, 0, 255)),
    (132, "sculpture", 1, (255, 255, 0)), (133, "hood", 1, (0, 153, 255)), (134, "sconce", 1, (0, 41, 255)),
    (135, "vase", 1, (0, 255, 204)), (136, "traffic light", 1, (41, 0, 255)), (137, "tray", 1, (41, 255, 0)),
    (138, "ashcan", 1, (173, 0, 255)), (139, "fan", 1, (0, 245, 255)), (140, "pier", 0, (71, 0, 255)),
    (141, "crt screen", 0, (122, 0, 255)), (142, "plate", 1, (0, 255, 184)), (143, "monitor", 1, (0, 92, 255)),
    (144, "bulletin board", 1, (184, 255, 0)), (145, "shower", 0, (0, 133, 255)), (146, "radiator", 1, (255, 214, 0)),
    (147, "glass", 1, (25, 194, 194)), (148, "clock", 1, (102, 255, 0)), (149, "flag", 1, (92, 0, 255)),
)

CITYSCAPES_CATEGORIES: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (7, "road", 0, (128, 64, 128)), (8, "sidewalk", 0, (244, 35, 232)), (11, "building", 0, (70, 70, 70)),
    (12, "wall", 0, (102, 102, 156)), (13, "fence", 0, (190, 153, 153)), (17, "pole", 0, (153, 153, 153)),
    (19, "traffic light", 0, (250, 170, 30)), (20, "traffic sign", 0, (220, 220, 0)),
    (21, "vegetation", 0, (107, 142, 35)), (22, "terrain", 0, (152, 251, 152)), (23, "sky", 0, (70, 130, 180)),
    (24, "person", 1, (220, 20, 60)), (25, "rider", 1, (255, 0, 0)), (26, "car", 1, (0, 0, 142)),
    (27, "truck", 1, (0, 0, 70)), (28, "bus", 1, (0, 60, 100)), (31, "train", 1, (0, 80, 100)),
    (32, "motorcycle", 1, (0, 0, 230)), (33, "bicycle", 1, (119, 11, 32)),
)

MAPILLARY_VISTAS_CATEGORIES: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (0, "Bird", 1, (165, 42, 42)), (1, "Ground Animal", 1, (0, 192, 0)), (2, "Curb", 0, (196, 196, 196)),
    (3, "Fence", 0, (190, 153, 153)), (4, "Guard Rail", 0, (180, 165, 180)), (5, "Barrier", 0, (90, 120, 150)),
    (6, "Wall", 0, (102, 102, 156)), (7, "Bike Lane", 0, (128, 64, 255)), (8, "Crosswalk - Plain", 1, (140, 140, 200)),
    (9, "Curb Cut", 0, (170, 170, 170)), (10, "Parking", 0, (250, 170, 160)), (11, "Pedestrian Area", 0, (96, 96, 96)),
    (12, "Rail Track", 0, (230, 150, 140)), (13, "Road", 0, (128, 64, 128)), (14, "Service Lane", 0, (110, 110, 110)),
    (15, "Sidewalk", 0, (244, 35, 232)), (16, "Bridge", 0, (150, 100, 100)), (17, "Building", 0, (70, 70, 70)),
    (18, "Tunnel", 0, (150, 120, 90)), (19, "Person", 1, (220, 20, 60)), (20, "Bicyclist", 1, (255, 0, 0)),
    (21, "Motorcyclist", 1, (255, 0, 100)), (22, "Other Rider", 1, (255, 0, 200)),
    (23, "Lane Marking - Crosswalk", 1, (200, 128, 128)), (24, "Lane Marking - General", 0, (255, 255, 255)),
    (25, "Mountain", 0, (64, 170, 64)), (26, "Sand", 0, (230, 160, 50)), (27, "Sky", 0, (70, 130, 180)),
    (28, "Snow", 0, (190, 255, 255)), (29, "Terrain", 0, (152, 251, 152)), (30, "Vegetation", 0, (107, 142, 35)),
    (31, "Water", 0, (0, 170, 30)), (32, "Banner", 1, (255, 255, 128)), (33, "Bench", 1, (250, 0, 30)),
    (34, "Bike Rack", 1, (100, 140, 180)), (35, "Billboard", 1, (220, 220, 220)), (36, "Catch Basin", 1, (220, 128, 128)),
    (37, "CCTV Camera", 1, (222, 40, 40)), (38, "Fire Hydrant", 1, (100, 170, 30)), (39, "Junction Box", 1, (40, 40, 40)),
    (40, "Mailbox", 1, (33, 33, 33)), (41, "Manhole", 1, (100, 128, 160)), (42, "Phone Booth", 1, (142, 0, 0)),
    (43, "Pothole", 0, (70, 100, 150)), (44, "Street Light", 1, (210, 170, 100)), (45, "Pole", 1, (153, 153, 153)),
    (46, "Traffic Sign Frame", 1, (128, 128, 128)), (47, "Utility Pole", 1, (0, 0, 80)),
    (48, "Traffic Light", 1, (250, 170, 30)), (49, "Traffic Sign (Back)", 1, (192, 192, 192)),
    (50, "Traffic Sign (Front)", 1, (220, 220, 0)), (51, "Trash Can", 1, (140, 140, 20)), (52, "Bicycle", 1, (119, 11, 32)),
    (53, "Boat", 1, (150, 0, 255)), (54, "Bus", 1, (0, 60, 100)), (55, "Car", 1, (0, 0, 142)),
    (56, "Caravan", 1, (0, 0, 90)), (57, "Motorcycle", 1, (0, 0, 230)), (58, "On Rails", 1, (0, 80, 100)),
    (59, "Other Vehicle", 1, (128, 64, 64)), (60, "Trailer", 1, (0, 0, 110)), (61, "Truck", 1, (0, 0, 70)),
    (62, "Wheeled Slow", 1, (0, 0, 192)), (63, "Car Mount", 0, (32, 32, 32)), (64, "Ego Vehicle", 0, (120, 10, 10)),
)
# fmt: on


def panoptic_metadata(categories) -> dict:
    """Detectron2's panoptic metadata convention from a class table: `thing_classes` /
    `stuff_classes` both list every class (stuff_classes in table order, so the semantic label of
    a class is its contiguous id), `thing_dataset_id_to_contiguous_id` for things only,
    `stuff_dataset_id_to_contiguous_id` for every class."""
    names = [c[1] for c in categories]
    colors = [list(c[3]) for c in categories]
    all_map = {c[0]: i for i, c in enumerate(categories)}
    thing_map = {c[0]: i for i, c in enumerate(categories) if c[2]}
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": thing_map,
        "stuff_dataset_id_to_contiguous_id": all_map,
    }


def instance_metadata(categories) -> dict:
    """Metadata for an instance-only dataset: only the things, renumbered 0..T-1."""
    things = [c for c in categories if c[2]]
    return {
        "thing_classes": [c[1] for c in things],
        "thing_colors": [list(c[3]) for c in things],
        "thing_dataset_id_to_contiguous_id": {c[0]: i for i, c in enumerate(things)},
    }


def semantic_metadata(categories) -> dict:
    return {"stuff_classes": [c[1] for c in categories], "stuff_colors": [list(c[3]) for c in categories]}
