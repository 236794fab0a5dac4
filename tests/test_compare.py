"""compare_to_baseline: Offset Learning vs its per-pixel twin, with hand-built predictions (known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from offseg_vis.analysis.compare import (
    BOTH_RIGHT,
    BOTH_WRONG,
    BROKEN,
    FIXED,
    IGNORED,
    OUTCOMES,
    compare_predictions,
    compare_to_baseline,
    twin_codes,
)
from offseg_vis.analysis.synthetic import make_probe
from offseg_vis.errors import InputError

# One row of 7 pixels, 3 classes. Pixel by pixel (label, OL, twin) -> outcome:
LABEL = np.array([[0, 1, 2, 2, 255, 1, 0]])
OL = np.array([[0, 1, 0, 1, 2, 2, 0]])
TWIN = np.array([[1, 0, 2, 0, 2, 1, 0]])
# 0: (0, 0, 1) fixed; 1: (1, 1, 0) fixed; 2: (2, 0, 2) broken; 3: (2, 1, 0) both wrong (different wrong
# classes); 4: ignored; 5: (1, 2, 1) broken; 6: (0, 0, 0) both right.
CODES = [[FIXED, FIXED, BROKEN, BOTH_WRONG, IGNORED, BROKEN, BOTH_RIGHT]]


def test_codes_known_answer():
    np.testing.assert_array_equal(twin_codes(OL, TWIN, LABEL), CODES)
    assert twin_codes(OL, TWIN, LABEL).dtype == np.uint8


def test_counts_per_image_class_and_total_known_answer():
    # A second image: 2x2, all both-right except one fixed pixel of class 2.
    label2 = np.array([[2, 2], [0, 0]])
    ol2 = label2.copy()
    twin2 = label2.copy()
    twin2[0, 0] = 1
    comp = compare_predictions([OL, ol2], [TWIN, twin2], [LABEL, label2], 3, ["a", "b", "c"])
    assert OUTCOMES == ("fixed", "broken", "both_wrong", "both_right")
    np.testing.assert_array_equal(comp.image_counts, [[2, 2, 1, 1], [1, 0, 0, 3]])
    # by ground-truth class: class 0 -> pixels 0 (fixed), 6 (both right), and image 2's two zeros (both right)
    # class 1 -> pixel 1 (fixed), 5 (broken); class 2 -> pixels 2 (broken), 3 (both wrong), image 2: fixed, right
    np.testing.assert_array_equal(comp.class_counts, [[1, 0, 0, 3], [1, 1, 0, 0], [1, 1, 1, 1]])
    assert comp.totals() == {"fixed": 3, "broken": 2, "both_wrong": 1, "both_right": 4}
    assert comp.image_totals(1) == {"fixed": 1, "broken": 0, "both_wrong": 0, "both_right": 3}
    # The four outcomes sum to the labelled pixels (6 + 4; the ignored pixel is in none).
    assert comp.labelled_pixels == 10 == int(comp.class_counts.sum())
    assert comp.net_fixed == 1
    acc_ol, acc_twin = comp.accuracies()
    assert acc_ol == pytest.approx(7 / 10) and acc_twin == pytest.approx(6 / 10)
    assert "fixed 3 and broke 2 (net +1)" in comp.summary()
    table = comp.table().splitlines()
    assert table[-1].split() == ["total", "3", "2", "1", "4", "+1"]
    np.testing.assert_array_equal(comp.codes[0], CODES)


def test_random_predictions_against_a_naive_loop():
    rng = np.random.default_rng(0)
    k = 4
    labels = [rng.integers(0, k, (5, 6)) for _ in range(3)]
    for lab in labels:
        lab[rng.random(lab.shape) < 0.2] = 255
    ols = [rng.integers(0, k, (5, 6)) for _ in range(3)]
    twins = [rng.integers(0, k, (5, 6)) for _ in range(3)]
    comp = compare_predictions(ols, twins, labels, k)
    expected = np.zeros((k, 4), dtype=np.int64)
    for lab, ol, tw in zip(labels, ols, twins):
        for y in range(5):
            for x in range(6):
                g = lab[y, x]
                if g == 255:
                    continue
                a, b = ol[y, x] == g, tw[y, x] == g
                col = 0 if (a and not b) else 1 if (b and not a) else 2 if not a else 3
                expected[g, col] += 1
    np.testing.assert_array_equal(comp.class_counts, expected)
    np.testing.assert_array_equal(comp.image_counts.sum(1), [int((lab != 255).sum()) for lab in labels])


def _pair(label, ol_pred, twin_pred, image_seed=0):
    feats = np.random.default_rng(image_seed).normal(size=(*label.shape, 2))
    ol = make_probe(feats, np.eye(3, 2), label, class_offset=np.zeros((3, 2)), prediction=ol_pred)
    twin = make_probe(feats, np.eye(3, 2), label, prediction=twin_pred)
    return ol, twin


def test_probes_known_answer_and_refusals():
    ol, twin = _pair(LABEL, OL, TWIN)
    comp = compare_to_baseline([ol], [twin], ["a", "b", "c"])
    assert comp.totals() == {"fixed": 2, "broken": 2, "both_wrong": 1, "both_right": 1}
    assert compare_to_baseline(ol, twin).totals() == comp.totals()  # single probes are accepted too
    # not the same images: a different size, different pixels, different labels, different counts
    small_ol, small_twin = _pair(np.zeros((1, 3), np.int64), np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(InputError, match="same images"):
        compare_to_baseline([ol], [small_twin])
    other = make_probe(np.ones((1, 7, 2)), np.eye(3, 2), LABEL, prediction=TWIN)
    other.image = other.image + 1  # same shape, other pixels
    with pytest.raises(InputError, match="same images"):
        compare_to_baseline([ol], [other])
    relabelled = make_probe(np.ones((1, 7, 2)), np.eye(3, 2), np.zeros((1, 7)), prediction=TWIN)
    with pytest.raises(InputError, match="different labels"):
        compare_to_baseline([ol], [relabelled])
    with pytest.raises(InputError, match="same images"):
        compare_to_baseline([ol, small_ol], [twin])
    with pytest.raises(InputError, match="first"):
        compare_to_baseline([twin], [ol])
    unlabelled_ol, unlabelled_twin = (
        make_probe(np.ones((1, 7, 2)), np.eye(3, 2), None, class_offset=np.zeros((3, 2))),
        make_probe(np.ones((1, 7, 2)), np.eye(3, 2), None),
    )
    with pytest.raises(InputError, match="ground truth"):
        compare_to_baseline([unlabelled_ol], [unlabelled_twin])
    with pytest.raises(InputError, match="one shape"):
        twin_codes(OL, TWIN[:, :3], LABEL)
    with pytest.raises(InputError, match="outside"):
        compare_predictions([OL], [TWIN], [LABEL + 5 * (LABEL != 255)], 3)
