"""A real browser: Playwright drives Debian's Chromium (headless, no sandbox, no GPU, no background
networking) through upload -> Segment -> annotated image and legend, and saves a screenshot.

The same code path (:func:`offseg_vis.app.browser.segment_in_browser`) makes the README screenshot.
Skipped only when no Chromium binary exists at all.
"""

from __future__ import annotations

import pytest
import torch
from conftest import free_port
from PIL import Image

from offseg_vis.app.browser import find_chromium, segment_in_browser
from offseg_vis.app.callbacks import AppContext, AppSettings
from offseg_vis.app.examples import example_images
from offseg_vis.app.server import TEMP_ENV, start
from offseg_vis.app.testing import checkpoints_or_untrained

pytestmark = pytest.mark.browser

CHROMIUM = find_chromium()


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary on this machine (make setup installs Debian's)"
)
def test_upload_segment_and_screenshot_in_chromium(tmp_path, monkeypatch):
    pytest.importorskip("playwright", reason="the playwright package is part of the test extra")
    monkeypatch.delenv(TEMP_ENV, raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    torch.set_flush_denormal(True)
    ctx = AppContext.from_checkpoints(
        checkpoints_or_untrained(tmp_path / "checkpoints"), AppSettings(warm_up_umap=False)
    )
    app = start(ctx, port=free_port(), temp_dir=tmp_path / "app-temp")
    try:
        shot = tmp_path / "app.png"
        run = segment_in_browser(
            app.url, example_images()[0], screenshot=shot, chromium=CHROMIUM, timeout_s=240
        )
    finally:
        app.close()
        torch.set_flush_denormal(False)
    names = ctx.registry.get(None).class_names
    assert run.annotated_visible
    assert run.legend and set(run.legend) <= set(names)
    assert all(name in run.shares_text for name in run.legend)
    assert "Segmented a 128×128 image" in run.status
    assert run.blocked == []  # the page asked for nothing outside the app
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height >= 1000
