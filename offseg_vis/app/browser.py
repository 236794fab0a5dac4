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
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM_ENV = "OFFSEG_CHROMIUM"
PANELS = (
    "correction",
    "feature-offset",
    "attention",
    "disagreement",
    "embedding",
)  # elem_ids of result images
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
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError(f"No Chromium found; install Debian's chromium or set ${CHROMIUM_ENV}.")
    host = urlparse(url).hostname or "127.0.0.1"
    timeout_ms = timeout_s * 1000
    blocked: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(timeout_ms)

            def route(r) -> None:
                if _is_local(r.request.url, host):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#segment-button").wait_for(state="visible")
            page.locator("#input-image input[type=file]").set_input_files(str(image))
            # The upload shows a preview before the button may be pressed.
            page.locator("#input-image img").first.wait_for(state="visible")
            page.locator("#segment-button").click()
            page.locator("#segmentation img").first.wait_for(state="visible")
            legend = page.locator("#segmentation .legend-item")
            legend.first.wait_for(state="visible")
            page.locator("#status p").first.wait_for(state="visible")
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
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
                run.screenshot = Path(screenshot)
            return run
        finally:
            browser.close()
