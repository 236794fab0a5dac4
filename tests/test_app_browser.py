"""A real browser: Playwright drives Debian's Chromium (headless, no sandbox, no GPU, no background
networking) through upload -> Segment -> annotated image and legend, and saves a screenshot.

A second test segments a gallery scene, clicks a pixel of the clickable segmentation and checks that the
pixel panel names the classes computed here and that the E map marks that pixel.

The same code paths (:func:`offseg_vis.app.browser.segment_in_browser`, :func:`~offseg_vis.app.browser.
explore_pixel_in_browser`) make the README screenshots (``scripts/screenshot_app.py``).
Skipped only when no Chromium binary exists at all.
"""

from __future__ import annotations

import pytest
import torch
from conftest import free_port
from PIL import Image

from offseg_vis.app.browser import explore_pixel_in_browser, find_chromium, segment_in_browser
from offseg_vis.app.callbacks import AppContext, AppSettings
from offseg_vis.app.examples import example_images
from offseg_vis.app.server import TEMP_ENV, start
from offseg_vis.app.testing import checkpoints_or_untrained

pytestmark = pytest.mark.browser

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary on this machine (make setup installs Debian's)"
)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(app context, running app) on a free loopback port with the shipped (or untrained) checkpoints."""
    pytest.importorskip("playwright", reason="the playwright package is part of the test extra")
    monkeypatch.delenv(TEMP_ENV, raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    torch.set_flush_denormal(True)
    ctx = AppContext.from_checkpoints(
        checkpoints_or_untrained(tmp_path / "checkpoints"), AppSettings(warm_up_umap=False)
    )
    app = start(ctx, port=free_port(), temp_dir=tmp_path / "app-temp")
    try:
        yield ctx, app
    finally:
        app.close()
        torch.set_flush_denormal(False)


@needs_chromium
def test_upload_segment_and_screenshot_in_chromium(tmp_path, served):
    ctx, app = served
    shot = tmp_path / "app.png"
    run = segment_in_browser(app.url, example_images()[0], screenshot=shot, chromium=CHROMIUM, timeout_s=240)
    names = ctx.registry.get(None).class_names
    assert run.annotated_visible
    assert run.legend and set(run.legend) <= set(names)
    assert all(name in run.shares_text for name in run.legend)
    assert "Segmented a 128×128 image" in run.status
    assert run.blocked == []  # the page asked for nothing outside the app
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height >= 1000


@needs_chromium
def test_click_a_pixel_marks_it_in_the_map_in_chromium(tmp_path, served):
    import numpy as np

    from offseg_vis.analysis.explore import cell_to_pixel
    from offseg_vis.analysis.probe import probe

    ctx, app = served
    scene = example_images()[0]
    x, y = 70, 41
    shot = tmp_path / "app_pixel.png"
    run = explore_pixel_in_browser(app.url, scene, (x, y), screenshot=shot, chromium=CHROMIUM, timeout_s=240)
    offset = ctx.registry.get(None)
    twin, _ = ctx.registry.twin_for(offset)
    image = np.asarray(Image.open(scene).convert("RGB"))
    ol, lin = probe(offset.model, [image])[0], probe(twin.model, [image])[0]
    names = offset.class_names
    assert (run.x, run.y) == (x, y)  # the click landed on image pixel (x, y)
    assert f"Pixel (x={x}, y={y})" in run.pixel_text
    assert f"Offset Learning predicts {names[ol.prediction[y, x]]}" in run.pixel_text
    assert f"the per-pixel twin {names[lin.prediction[y, x]]}" in run.pixel_text
    # The E map marks the pixel: its cell's centre, with the class the model predicts there.
    r, c = y * ol.feature_size[0] // ol.padded_size[0], x * ol.feature_size[1] // ol.padded_size[1]
    cx, cy = (int(v) for v in cell_to_pixel(r, c, ol.feature_size, ol.padded_size, ol.input_size))
    marks_e = [m for m in run.marked if "kind: clicked pixel: E;" in m]
    marks_e2 = [m for m in run.marked if "kind: clicked pixel: E′;" in m]
    assert marks_e and marks_e2
    assert all(f"pixel: ({cx}, {cy})" in m and f"predicted: {names[ol.prediction[cy, cx]]}" in m for m in marks_e)
    assert run.blocked == [] and not [e for e in run.console_errors if "gradio_api" in e]
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height >= 600
