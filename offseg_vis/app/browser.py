"""Drive the running app in a real Chromium (Playwright): upload, click Segment, wait, screenshot.

One code path for the browser test and the README screenshot (``scripts/screenshot_app.py``). Chromium
runs headless, sandbox-less and GPU-less, with its background networking switched off, and every request
that does not go to the app itself is aborted: the page must work offline.

Needs the ``playwright`` Python package and a Chromium binary (Debian's ``/usr/bin/chromium``; no
``playwright install`` download).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM_ENV = "OFFSEG_CHROMIUM"
PANELS = (
    "correction",
    "feature-offset",
    "attention",
    "disagreement",
    "pixel-picture",
)  # elem_ids of result images (the clickable segmentation comes last, after the map)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium() -> str | None:
    """``$OFFSEG_CHROMIUM``, else chromium / chromium-browser / google-chrome on the PATH, else None."""
    env = os.environ.get(CHROMIUM_ENV)
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class BrowserRun:
    """What the browser saw.

    Attributes:
        annotated_visible: the segmentation image is shown.
        legend: class names in the segmentation's legend.
        shares_text: text of the per-class shares table.
        status: the status line under the button.
        blocked: outside URLs the page tried to load (all aborted).
        console_errors: JavaScript console errors.
        screenshot: the saved PNG, if asked for.
    """

    annotated_visible: bool
    legend: list[str]
    shares_text: str
    status: str
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def _is_local(url: str, app_host: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    return parsed.hostname in (app_host, "127.0.0.1", "localhost")


@contextmanager
def browser_page(url: str, chromium: str | None, timeout_s: float, viewport: tuple[int, int]):
    """A headless Chromium page on ``url`` that may load nothing but the app; yields (page, blocked URLs,
    console errors).

    Raises:
        RuntimeError: no Chromium found.
    """
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError(f"No Chromium found; install Debian's chromium or set ${CHROMIUM_ENV}.")
    host = urlparse(url).hostname or "127.0.0.1"
    blocked: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(timeout_s * 1000)

            def route(r) -> None:
                if _is_local(r.request.url, host):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url, wait_until="domcontentloaded")
            yield page, blocked, errors
        finally:
            browser.close()


def _upload_and_segment(page, image: str | Path):
    """Upload ``image``, press Segment, wait for the annotated image, its legend and the status."""
    page.locator("#segment-button").wait_for(state="visible")
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    # The upload shows a preview before the button may be pressed.
    page.locator("#input-image img").first.wait_for(state="visible")
    page.locator("#segment-button").click()
    page.locator("#segmentation img").first.wait_for(state="visible")
    legend = page.locator("#segmentation .legend-item")
    legend.first.wait_for(state="visible")
    page.locator("#status p").first.wait_for(state="visible")
    return legend


def _save(page, screenshot) -> Path | None:
    if screenshot is None:
        return None
    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    return Path(screenshot)


def segment_in_browser(
    url: str,
    image: str | Path,
    screenshot: str | Path | None = None,
    wait_for_embedding: bool = False,
    chromium: str | None = None,
    timeout_s: float = 120.0,
    viewport: tuple[int, int] = (1400, 1000),
) -> BrowserRun:
    """Open ``url``, upload ``image``, click Segment and wait for the annotated image and its legend.

    Args:
        url: the app's local URL.
        image: file to upload.
        screenshot: save a full-page PNG here (after the result, and the embedding when waited for).
        wait_for_embedding: also wait until every panel, the embedding last, shows its picture.
        chromium: browser binary (default :func:`find_chromium`).
        timeout_s: upper bound for each wait.

    Raises:
        RuntimeError: no Chromium found. Playwright's TimeoutError when the page never shows a result.
    """
    with browser_page(url, chromium, timeout_s, viewport) as (page, blocked, errors):
        legend = _upload_and_segment(page, image)
        if wait_for_embedding:
            # Panel images load lazily: bring each into view so it loads (and shows in the screenshot).
            for panel in PANELS:
                page.locator(f"#{panel}").scroll_into_view_if_needed()
                page.locator(f"#{panel} img").first.wait_for(state="visible")
            page.evaluate("window.scrollTo(0, 0)")
        run = BrowserRun(
            annotated_visible=page.locator("#segmentation img").first.is_visible(),
            legend=[t.strip() for t in legend.all_inner_texts()],
            shares_text=page.locator("#shares").inner_text(),
            status=page.locator("#status").inner_text(),
            blocked=blocked,
            console_errors=errors,
        )
        run.screenshot = _save(page, screenshot)
        return run


@dataclass
class PixelRun:
    """What the browser saw after clicking a pixel.

    Attributes:
        pixel_text: the pixel panel's sentence (names the classes).
        marked: aria labels of the E map's marks that stand for the clicked pixel (Vega draws the map as
            SVG, one labelled mark per point).
        legend: the E map's legend entries.
        x, y: the pixel fields after the click (the image pixel the click landed on).
        blocked, console_errors, screenshot: as in :class:`BrowserRun`.
    """

    pixel_text: str
    marked: list[str]
    legend: list[str]
    x: float | None
    y: float | None
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def explore_pixel_in_browser(
    url: str,
    image: str | Path,
    pixel: tuple[int, int],
    screenshot: str | Path | None = None,
    chromium: str | None = None,
    timeout_s: float = 120.0,
    viewport: tuple[int, int] = (1400, 1000),
) -> PixelRun:
    """Segment ``image``, wait for the map, click image pixel ``pixel`` = (x, y) on the clickable
    segmentation and wait for the pixel panel and the map's marker; screenshot the exploration section.
    """
    x, y = pixel
    with browser_page(url, chromium, timeout_s, viewport) as (page, blocked, errors):
        _upload_and_segment(page, image)
        page.locator("#map-before svg").first.wait_for(state="visible")
        img = page.locator("#pixel-picture img").first
        img.scroll_into_view_if_needed()
        img.wait_for(state="visible")
        nat_w, nat_h, box_w, box_h = img.evaluate("e => [e.naturalWidth, e.naturalHeight, e.width, e.height]")
        h, w = _image_size(image)
        scale = min(box_w / nat_w, box_h / nat_h)
        off_x, off_y = (box_w - nat_w * scale) / 2, (box_h - nat_h * scale) / 2
        f = nat_w / w  # the picture is the image enlarged by an integer factor
        img.click(position={"x": off_x + (x + 0.5) * f * scale, "y": off_y + (y + 0.5) * f * scale})
        page.locator("#pixel-text p").filter(has_text="Pixel (x=").first.wait_for(state="visible")
        marks = page.locator('#map-before [aria-label*="clicked pixel"]')
        marks.first.wait_for(state="attached")
        run = PixelRun(
            pixel_text=page.locator("#pixel-text").inner_text(),
            marked=[m.get_attribute("aria-label") or "" for m in marks.all()],
            legend=[(t or "").strip() for t in page.locator("#map-before .role-legend-label text").all_text_contents()],
            x=_number(page, "#pixel-x"),
            y=_number(page, "#pixel-y"),
            blocked=blocked,
            console_errors=errors,
        )
        page.locator("#map-text").scroll_into_view_if_needed()
        run.screenshot = _save_section(page, screenshot)
        return run


def _image_size(image: str | Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(image) as im:
        return im.height, im.width


def _number(page, selector: str) -> float | None:
    value = page.locator(f"{selector} input").first.input_value()
    try:
        return float(value)
    except ValueError:
        return None


def _save_section(page, screenshot) -> Path | None:
    """Screenshot the exploration section: from the map settings to the pixel panel's attention chart."""
    if screenshot is None:
        return None
    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    top = page.locator("#embedding-method").bounding_box()
    bottom = page.locator("#pixel-attention").bounding_box()
    scroll = page.evaluate("() => [window.scrollX, window.scrollY]")
    width = page.viewport_size["width"]
    y0 = top["y"] + scroll[1] - 10
    y1 = bottom["y"] + scroll[1] + bottom["height"] + 10
    page.screenshot(path=str(screenshot), full_page=True, clip={"x": 0, "y": y0, "width": width, "height": y1 - y0})
    return Path(screenshot)
