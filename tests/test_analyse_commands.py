"""`offseg analyse twin` counts what the shipped Offset Learning checkpoint fixed and broke against its twin,
exactly as a pixel loop over the two models' own predictions does, with Student-t intervals that scipy's
one-sample t-test reproduces; it refuses checkpoints that are not twins."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import stats

from offseg_vis.analysis.stats import t_interval
from offseg_vis.cli import main
from offseg_vis.data.fashion_scenes import FashionScenes, default_root
from offseg_vis.engine.checkpoint import load_model
from offseg_vis.engine.config import shipped_checkpoints_dir
from offseg_vis.models.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")

COUNT = 6


def _shipped(classifier: str) -> str:
    return str(shipped_checkpoints_dir() / f"offseg-mbv2_{classifier}.safetensors")


def _predictions(path: str, images: list[np.ndarray]) -> list[np.ndarray]:
    """The model's own full-resolution prediction: argmax of ``predict`` (logits upsampled first)."""
    model, _ = load_model(path, "cpu")
    out = []
    with torch.no_grad():
        for image in images:
            x = model.normalize(torch.from_numpy(image.copy()).permute(2, 0, 1)[None])
            out.append(model.predict(x)[0].argmax(0).numpy())
    return out


def _number(page: str, pattern: str) -> float:
    return float(re.search(pattern, page).group(1).replace(",", ""))


@pytest.mark.numeric
def test_twin_page_counts_match_a_pixel_loop_and_scipy_intervals(tmp_path, capsys):
    out = tmp_path / "twin.md"
    assert (
        main(["analyse", "twin", _shipped("offset"), _shipped("linear"), "--images", str(COUNT), "--out", str(out)])
        == 0
    )
    page = out.read_text()
    scenes = FashionScenes("val", length=COUNT, progress=False)
    images, labels = [scenes[i][0] for i in range(COUNT)], [scenes[i][1] for i in range(COUNT)]
    ol, lin = _predictions(_shipped("offset"), images), _predictions(_shipped("linear"), images)
    counts = np.zeros((COUNT, 4), np.int64)  # fixed, broken, both wrong, both right
    for i in range(COUNT):
        for y in range(labels[i].shape[0]):
            for x in range(labels[i].shape[1]):
                gt = labels[i][y, x]
                if gt == 255:
                    continue
                a, b = ol[i][y, x] == gt, lin[i][y, x] == gt
                counts[i, 0 if a and not b else 1 if b and not a else 2 if not a else 3] += 1
    exact = True
    for row, name in enumerate(("fixed", "broken", "both wrong", "both right")):
        got = _number(page, rf"\| {name}[^|]*\| ([\d,]+) \|")
        # a tie between the two best classes may resolve differently at the last bit: allow 2 pixels
        assert abs(got - counts[:, row].sum()) <= 2, (name, got, counts[:, row].sum())
        exact &= got == counts[:, row].sum()
    assert f"{COUNT} images, {labels[0].size * COUNT:,} labelled pixels" in page
    net = (counts[:, 0] - counts[:, 1]).astype(float)
    want = stats.ttest_1samp(net, 0.0).confidence_interval(0.95)
    bounds = re.search(r"net fixed pixels per image: [-+\d.]+ px \[([-+\d.]+), ([-+\d.]+)\]", page)
    tol = 0.05 if exact else 2.0  # printed to 0.1 px; a tied pixel moves one image's difference by 1
    assert float(bounds.group(1)) == pytest.approx(want.low, abs=tol)
    assert float(bounds.group(2)) == pytest.approx(want.high, abs=tol)
    # mIoU from per-class set counts (classes seen in label or prediction, the mmseg protocol)
    for pred, position in ((ol, 1), (lin, 2)):
        ious = []
        for c in range(11):
            inter = sum(int(((p == c) & (g == c)).sum()) for p, g in zip(pred, labels))
            union = sum(int((((p == c) & (g != 255)) | (g == c)).sum()) for p, g in zip(pred, labels))
            if union:
                ious.append(inter / union)
        got = float(re.search(r"mIoU on these scenes ([\d.]+) % vs ([\d.]+) %", page).group(position))
        assert got == pytest.approx(100 * np.mean(ious), abs=0.006 if exact else 0.1)
    assert "The cards record the same recipe, data, seed and training steps (twins)." in page
    assert "val scenes 0..5 (generator 2.0, seed 0, size 128, style 0.5)" in page
    assert "offseg analyse twin" in page
    # the only path in the page is the --out it was given: no data folder of this machine
    assert page.count(str(tmp_path)) == 1 and str(default_root()) not in page


@pytest.mark.numeric
def test_t_interval_is_scipys_one_sample_interval():
    values = [3.0, -1.5, 2.25, 7.0, 0.5]
    want = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert t_interval(values) == pytest.approx((want.low, want.high), rel=1e-12)
    assert t_interval([1.0]) is None and t_interval([1.0, float("nan")]) is None


def test_twin_refuses_swapped_or_unpaired_checkpoints(tmp_path, capsys):
    assert main(["analyse", "twin", _shipped("linear"), _shipped("offset"), "--images", "2"]) == 2
    assert "Offset Learning checkpoint first" in capsys.readouterr().err
    model, card = load_model(_shipped("linear"), "cpu")
    card["config"]["runtime"]["seed"] = 1  # trained alike but for the seed: not its twin
    other = save_weights(model, tmp_path / "other_linear", metadata=card)
    assert main(["analyse", "twin", _shipped("offset"), str(other), "--images", "2"]) == 2
    err = capsys.readouterr().err
    assert "are not twins" in err and "Traceback" not in err
