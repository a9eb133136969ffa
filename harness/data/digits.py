"""scikit-learn's digits (8x8 grayscale, 10 classes, bundled with scikit-learn): the offline CPU
quickstart. A fixed split (never the trial's seed) holds out DIGITS_TEST_SIZE images as the test set.

The images are read from the file scikit-learn ships (`sklearn/datasets/data/digits.csv.gz`) the way
`sklearn.datasets.load_digits` reads it (`numpy.loadtxt`), and the split is the list of test
positions below, which `sklearn.model_selection.train_test_split` gave (stratified, random_state
DIGITS_SPLIT_SEED): the same arrays without importing scikit-learn, whose import takes 1.5 s of every
trial's process on the CPU quickstart's scale (a trial of seconds). tests/test_data.py checks both
against scikit-learn's own functions.
"""

from __future__ import annotations

import gzip
from importlib.machinery import PathFinder
from pathlib import Path

import numpy as np
import torch

from harness.data.datasets import ImageData, channel_stats, register_dataset

# The fixed digits split: the test set never depends on the trial seed.
DIGITS_TEST_SIZE = 450
DIGITS_SPLIT_SEED = 0


@register_dataset("digits", num_classes=10, num_train=1347)
def _digits(root: Path | None, *, download: bool, holdout: bool) -> ImageData:
    return _load_digits()


def digits_file() -> Path:
    """The digits file scikit-learn ships, found on sys.path without importing scikit-learn."""
    spec = PathFinder.find_spec("sklearn")
    folders = spec.submodule_search_locations if spec is not None else None
    path = Path(next(iter(folders))) / "datasets" / "data" / "digits.csv.gz" if folders else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"digits: scikit-learn's digits.csv.gz not found ({path or 'scikit-learn is not installed'}); "
            "pip install scikit-learn"
        )
    return path


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 grey levels 0..16, targets (1797,)), as sklearn.datasets.load_digits."""
    with gzip.open(digits_file(), "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _load_digits() -> ImageData:
    grey, target = read_digits()
    # 0..16 grey levels -> 0..255
    # (1797, 1, 8, 8) as a view: its channel axis has stride 1, so torch takes these images for
    # channels-last too and the CPU convolutions sum in that order; a contiguous copy changes the test
    # metrics in their 9th digit (the recorded metrics, tests/test_recorded.py, were made this way)
    images = np.rint(grey * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = target.astype(np.int64)
    is_test = np.zeros(len(y), dtype=bool)
    is_test[list(DIGITS_TEST_POSITIONS)] = True
    # Sorted, so that "the first n images of a class" follows the file's order.
    train_pos, test_pos = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    train_x = torch.from_numpy(images[train_pos])
    mean, std = channel_stats(train_x)
    return ImageData(
        name="digits",
        num_classes=10,
        classes=[str(d) for d in range(10)],
        channels=1,
        image_size=8,
        mean=mean,
        std=std,
        pad=1,
        flip=False,  # a mirrored 2 is not a 2
        in_memory=True,
        train_x=train_x,
        train_y=y[train_pos],
        train_indices=np.arange(len(train_pos), dtype=np.int64),
        test_x=torch.from_numpy(images[test_pos]),
        test_y=y[test_pos],
    )


# sklearn.model_selection.train_test_split(np.arange(1797), test_size=DIGITS_TEST_SIZE, stratify=targets,
# random_state=DIGITS_SPLIT_SEED)'s test positions, sorted (45, 46, 44, 46, 45, 46, 45, 45, 43, 45 per class)
# fmt: off
DIGITS_TEST_POSITIONS = (
    21, 24, 28, 34, 35, 37, 39, 42, 45, 46, 51, 57, 75, 77, 78, 81, 87, 95, 96, 99, 102, 103, 105, 110,
    117, 119, 131, 132, 134, 148, 159, 166, 170, 173, 186, 188, 197, 198, 202, 204, 205, 211, 212, 213,
    214, 220, 227, 231, 236, 240, 243, 245, 246, 252, 254, 264, 267, 275, 276, 279, 283, 286, 293, 298,
    304, 305, 306, 307, 308, 312, 314, 326, 328, 335, 339, 344, 345, 346, 353, 364, 372, 374, 376, 379,
    380, 382, 386, 387, 393, 397, 403, 405, 407, 410, 413, 417, 420, 423, 425, 430, 432, 433, 440, 442,
    452, 454, 458, 466, 467, 472, 481, 493, 496, 497, 499, 500, 506, 511, 513, 520, 524, 526, 527, 528,
    538, 553, 556, 560, 565, 567, 568, 569, 573, 587, 593, 604, 608, 610, 616, 619, 637, 639, 641, 644,
    649, 650, 652, 666, 667, 675, 694, 700, 701, 702, 704, 705, 709, 716, 719, 731, 734, 738, 741, 744,
    749, 760, 766, 767, 768, 770, 771, 772, 783, 786, 787, 788, 789, 794, 799, 800, 802, 805, 806, 808,
    811, 812, 813, 820, 822, 830, 837, 852, 853, 854, 855, 857, 860, 865, 876, 885, 888, 890, 893, 899,
    900, 905, 908, 911, 918, 923, 926, 929, 937, 938, 943, 944, 945, 946, 949, 951, 960, 970, 973, 977,
    978, 985, 988, 989, 990, 992, 995, 997, 1002, 1003, 1005, 1006, 1007, 1009, 1010, 1012, 1014, 1016,
    1023, 1024, 1027, 1030, 1035, 1037, 1038, 1047, 1049, 1051, 1053, 1056, 1073, 1076, 1081, 1086, 1088,
    1090, 1096, 1098, 1101, 1107, 1108, 1116, 1118, 1121, 1123, 1136, 1138, 1141, 1148, 1150, 1151, 1152,
    1157, 1159, 1161, 1162, 1167, 1168, 1169, 1170, 1173, 1174, 1176, 1180, 1187, 1192, 1201, 1204, 1207,
    1211, 1214, 1217, 1220, 1221, 1224, 1232, 1233, 1242, 1246, 1253, 1255, 1261, 1262, 1264, 1268, 1269,
    1270, 1287, 1292, 1295, 1296, 1297, 1298, 1299, 1302, 1310, 1312, 1313, 1319, 1321, 1327, 1330, 1331,
    1332, 1335, 1336, 1340, 1347, 1350, 1351, 1352, 1353, 1364, 1367, 1371, 1372, 1375, 1395, 1397, 1400,
    1404, 1405, 1406, 1415, 1424, 1429, 1435, 1440, 1442, 1448, 1449, 1450, 1455, 1466, 1467, 1470, 1471,
    1474, 1476, 1482, 1484, 1487, 1496, 1497, 1503, 1505, 1509, 1512, 1513, 1516, 1520, 1521, 1529, 1530,
    1532, 1540, 1542, 1551, 1558, 1560, 1563, 1566, 1567, 1574, 1576, 1579, 1582, 1590, 1591, 1596, 1599,
    1602, 1606, 1608, 1610, 1613, 1614, 1617, 1626, 1628, 1629, 1634, 1637, 1638, 1645, 1650, 1655, 1660,
    1664, 1666, 1668, 1673, 1674, 1680, 1687, 1688, 1691, 1692, 1696, 1697, 1700, 1704, 1706, 1715, 1717,
    1723, 1726, 1728, 1733, 1734, 1739, 1742, 1750, 1755, 1758, 1760, 1767, 1770, 1771, 1772, 1776, 1778,
    1781, 1787, 1789, 1791,
)
# fmt: on
