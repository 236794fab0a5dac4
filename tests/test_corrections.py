"""Correction map: fixed / broken / changed-still-wrong / unchanged, per pixel and per class."""

from __future__ import annotations

import numpy as np
import pytest

from offseg_vis.analysis import compare
from offseg_vis.analysis.corrections import (
    BROKEN,
    CHANGED,
    CHANGED_WRONG,
    CODE_COLORS,
    FIXED,
    IGNORED,
    UNCHANGED,
    correction_codes,
    correction_map,
    corrections_table,
    total_class_counts,
)
from offseg_vis.analysis.synthetic import make_probe
from offseg_vis.errors import InputError

BEFORE = np.array([[0, 1, 2, 1, 0]])
AFTER = np.array([[0, 2, 1, 1, 2]])
LABEL = np.array([[0, 2, 2, 255, 1]])
# pixel 0: 0->0 unchanged; 1: 1->2 with label 2 fixed; 2: 2->1 label 2 broken; 3: ignored;
# 4: 0->2 label 1 changed-still-wrong.


def test_codes_share_the_twin_comparisons_colours():
    # One colour per meaning across the app's two maps: each correction code is drawn like the twin outcome it
    # corresponds to (matched by name here, so renumbering either module breaks this test, not the figures).
    twin_of = {
        UNCHANGED: compare.BOTH_RIGHT,
        FIXED: compare.FIXED,
        BROKEN: compare.BROKEN,
        CHANGED_WRONG: compare.BOTH_WRONG,
        IGNORED: compare.IGNORED,
    }
    for code, twin in twin_of.items():
        assert CODE_COLORS[code] == compare.OUTCOME_COLORS[twin]
    assert list(CODE_COLORS) == [UNCHANGED, FIXED, BROKEN, CHANGED_WRONG, CHANGED, IGNORED]
    assert len(set(CODE_COLORS.values())) == len(CODE_COLORS)  # CHANGED has a colour of its own


def test_codes_with_label():
    codes = correction_codes(BEFORE, AFTER, LABEL)
    np.testing.assert_array_equal(codes, [[UNCHANGED, FIXED, BROKEN, IGNORED, CHANGED_WRONG]])


def test_codes_without_label_are_changed_or_unchanged():
    codes = correction_codes(BEFORE, AFTER)
    np.testing.assert_array_equal(codes, [[UNCHANGED, CHANGED, CHANGED, UNCHANGED, CHANGED]])


def test_counts_per_ground_truth_class():
    cm = correction_map((BEFORE, AFTER), LABEL, num_classes=3)
    assert cm.counts() == {"fixed": 1, "broken": 1, "changed, still wrong": 1, "unchanged": 1}
    # rows = ground-truth class; columns follow code_order (fixed, broken, changed-wrong, unchanged)
    expected = np.array([[0, 0, 0, 1], [0, 0, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(cm.class_counts, expected)
    assert cm.net_fixed() == 0
    assert cm.changed_fraction() == pytest.approx(3 / 4)


def test_counts_without_label_use_the_after_class():
    cm = correction_map((BEFORE, AFTER), num_classes=3)
    # after = [0, 2, 1, 1, 2]; changed = [F, T, T, F, T]
    np.testing.assert_array_equal(cm.class_counts, [[0, 1], [1, 1], [2, 0]])
    assert cm.counts() == {"changed": 3, "unchanged": 2}
    assert not cm.has_label and cm.net_fixed() == 0


def test_probe_input_uses_its_predictions_and_label():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 5, 3))
    w = np.eye(3)
    lab = rng.integers(0, 3, (4, 5))
    p = make_probe(feats, w, lab, feature_offset=rng.normal(size=feats.shape))
    cm = correction_map(p)
    expected = correction_codes(p.prediction_before_offsets, p.prediction, lab)
    np.testing.assert_array_equal(cm.codes, expected)
    assert cm.class_counts.sum() == lab.size
    # fixed - broken equals the change in correctly classified pixels
    gain = (p.prediction == lab).sum() - (p.prediction_before_offsets == lab).sum()
    assert cm.net_fixed() == gain


def test_linear_probe_has_nothing_changed():
    rng = np.random.default_rng(1)
    p = make_probe(rng.normal(size=(3, 3, 2)), np.eye(2), rng.integers(0, 2, (3, 3)))
    cm = correction_map(p)
    assert (cm.codes == UNCHANGED).all()


def test_totals_and_table():
    a = correction_map((BEFORE, AFTER), LABEL, num_classes=3)
    b = correction_map((BEFORE, BEFORE), LABEL, num_classes=3)
    counts, order = total_class_counts([a, b])
    assert counts.sum() == 8 and order == a.code_order
    text = corrections_table([a, b], ["x", "y", "z"])
    assert "total" in text and "fixed" in text
    with pytest.raises(InputError, match="Mix"):
        total_class_counts([a, correction_map((BEFORE, AFTER), num_classes=3)])


def test_shape_errors():
    with pytest.raises(InputError, match="same shape"):
        correction_codes(BEFORE, AFTER[:, :3])
    with pytest.raises(InputError, match="label"):
        correction_codes(BEFORE, AFTER, LABEL[:, :2])
    with pytest.raises(InputError, match="ImageProbe or a pair"):
        correction_map(np.zeros(3))


def test_offset_effect_scores_before_and_after():
    from offseg_vis.analysis.corrections import offset_effect

    lab = np.array([[0, 0, 1, 1]])
    p = make_probe(
        np.zeros((1, 4, 2)),
        np.eye(2),
        lab,
        prediction=np.array([[0, 0, 1, 1]]),
        prediction_before_offsets=np.array([[0, 1, 1, 1]]),
        feature_offset=np.zeros((1, 4, 2)),
    )
    eff = offset_effect([p])
    assert eff["aAcc_after"] == 1.0 and eff["aAcc_before"] == 0.75
    assert eff["mIoU_after"] == 1.0 and eff["mIoU_before"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    with pytest.raises(InputError, match="labels"):
        offset_effect([make_probe(np.zeros((1, 4, 2)), np.eye(2))])
