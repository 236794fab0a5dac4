"""ClassMapImage writes exactly the pixels gr.AnnotatedImage writes, only faster."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from offseg_vis.app.components import ClassMapImage  # noqa: E402
from offseg_vis.app.render import annotations  # noqa: E402


def _decoded(data) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """AnnotatedImageData -> (base image, [(mask RGBA, label)]) read back from the written files."""
    base = np.asarray(Image.open(data.image.path))
    return base, [(np.asarray(Image.open(a.image.path).convert("RGBA")), a.label) for a in data.annotations]


@pytest.mark.parametrize("with_colours", [True, False])
def test_class_map_image_writes_the_stock_pixels(tmp_path, monkeypatch, with_colours):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    prediction = rng.integers(0, 5, (37, 53))
    names = ["sky", "tree", "road", "car", "person"]
    value = (image, annotations(prediction, names))
    colours = {"sky": "#1f77b4", "tree": "#2ca02c", "road": "#7f7f7f", "car": "#d62728"} if with_colours else None
    ours = ClassMapImage(format="png", color_map=colours, render=False).postprocess(value)
    stock = gr.AnnotatedImage(format="png", color_map=colours, render=False).postprocess(value)
    base, masks = _decoded(ours)
    stock_base, stock_masks = _decoded(stock)
    np.testing.assert_array_equal(base, stock_base)
    assert [label for _, label in masks] == [label for _, label in stock_masks]
    for (mask, _), (stock_mask, _) in zip(masks, stock_masks):
        np.testing.assert_array_equal(mask, stock_mask)
    # the comparison can fail: another opacity changes the alpha channel
    other = ClassMapImage(format="png", color_map=colours, render=False).postprocess(
        (image, [(m * 0.5, label) for m, label in value[1]])
    )
    assert not np.array_equal(_decoded(other)[1][0][0], masks[0][0])


def test_class_map_image_passes_other_values_to_the_stock_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    image = np.zeros((20, 30, 3), np.uint8)
    data = ClassMapImage(format="png", render=False).postprocess((image, [((2, 3, 12, 15), "box")]))
    mask = np.asarray(Image.open(data.annotations[0].image.path).convert("RGBA"))
    assert mask[3, 2, 3] == 255 and mask[0, 0, 3] == 0  # the stock box outline
    assert ClassMapImage(render=False).postprocess(None) is None


def test_class_map_image_uses_the_annotated_image_frontend():
    assert ClassMapImage(render=False).get_block_name() == gr.AnnotatedImage(render=False).get_block_name()
