"""The app served on a loopback port, driven by gradio_client like a script would.

Upload a gallery scene -> the annotated image has the input's size and only known class names; a bad file
-> an error sentence, and the next good request still succeeds; an upload over the size limit is refused.
The ``pixel`` endpoint answers for the session's last segmentation with the class and top-5 computed here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image

from offseg_vis.app.callbacks import AppContext, AppSettings
from offseg_vis.app.examples import example_images
from offseg_vis.app.inputs import InputLimits
from offseg_vis.app.server import TEMP_ENV, start
from offseg_vis.app.testing import checkpoints_or_untrained

gradio_client = pytest.importorskip("gradio_client")

MAX_FILE_MB = 0.25


@pytest.fixture(scope="module")
def served(tmp_path_factory, monkeypatch_module):
    torch.set_flush_denormal(True)
    temp_dir = tmp_path_factory.mktemp("app-temp")
    paths = checkpoints_or_untrained(tmp_path_factory.mktemp("checkpoints"))
    settings = AppSettings(limits=InputLimits(max_file_mb=MAX_FILE_MB), warm_up_umap=False)
    ctx = AppContext.from_checkpoints(paths, settings)
    app = start(ctx, port=free_port(), temp_dir=temp_dir)
    client = gradio_client.Client(
        app.url,
        verbose=False,
        analytics_enabled=False,
        download_files=str(tmp_path_factory.mktemp("downloads")),
    )
    try:
        yield app, client, ctx
    finally:
        app.close()
        torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Module-wide monkeypatch: start() sets GRADIO_TEMP_DIR; restore it afterwards."""
    mp = pytest.MonkeyPatch()
    mp.delenv(TEMP_ENV, raising=False)
    mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    yield mp
    mp.undo()


def _segment(client, path):
    return client.predict(gradio_client.handle_file(str(path)), api_name="/segment")


def test_bound_to_loopback_with_one_public_endpoint(served):
    app, client, _ = served
    assert app.url.startswith("http://127.0.0.1:")
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/segment", "/pixel"}
    assert app.demo.max_file_size == int(MAX_FILE_MB * 1024 * 1024)


def test_segment_an_example_over_http(served):
    app, client, ctx = served
    path = example_images()[0]
    annotated, shares = _segment(client, path)
    with Image.open(path) as original, Image.open(annotated["image"]) as returned:
        assert returned.size == original.size
    names = set(ctx.registry.get(None).class_names)
    labels = [a["label"] for a in annotated["annotations"]]
    assert labels and set(labels) <= names
    for a in annotated["annotations"]:
        with Image.open(a["image"]) as mask:
            assert mask.size == original.size
    assert shares["headers"] == ["class", "share (%)", "pixels"]
    assert [row[0] for row in shares["data"]] == labels  # same classes, largest first
    assert sum(float(row[1]) for row in shares["data"]) == pytest.approx(100.0, abs=0.1)
    # The upload was stored inside the app's temp folder.
    stored = [p for p in app.temp_dir.rglob("*.png") if p.read_bytes() == path.read_bytes()]
    assert stored


def test_bad_file_gives_a_sentence_and_the_server_keeps_serving(served, tmp_path):
    _, client, _ = served
    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not pixels")
    with pytest.raises(gradio_client.exceptions.AppError, match="not an image this app can read"):
        _segment(client, bad)
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(gradio_client.exceptions.AppError, match="truncated|not an image"):
        _segment(client, truncated)
    annotated, shares = _segment(client, example_images()[1])
    assert annotated["annotations"] and shares["data"]


def test_upload_over_the_limit_is_refused(served, tmp_path):
    _, client, _ = served
    big = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > MAX_FILE_MB * 1024 * 1024
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        _segment(client, big)  # gradio_client checks the limit the app announces
    # The server enforces it too, for anyone posting directly (a browser, curl).
    import httpx

    app = served[0]
    with open(big, "rb") as f:
        files = {"files": ("noise.png", f, "image/png")}
        reply = httpx.post(f"{app.url}gradio_api/upload", files=files, trust_env=False)
    assert reply.status_code == 413
    annotated, _ = _segment(client, example_images()[0])  # still serving
    assert annotated["annotations"]


def test_pixel_endpoint_after_segment_in_the_same_session(served):
    from offseg_vis.analysis.explore import pixel_to_cell
    from offseg_vis.analysis.probe import probe

    app, _, ctx = served
    client = gradio_client.Client(app.url, verbose=False, analytics_enabled=False)  # a fresh session
    with pytest.raises(gradio_client.exceptions.AppError, match="Segment an image first"):
        client.predict(10, 10, api_name="/pixel")
    path = example_images()[0]
    _segment(client, path)
    image = np.asarray(Image.open(path).convert("RGB"))
    offset = ctx.registry.get(None)
    twin, _ = ctx.registry.twin_for(offset)
    ol = probe(offset.model, [image])[0]
    lin = probe(twin.model, [image])[0]
    names = offset.class_names
    x, y = 70, 41
    r, c = (int(v) for v in pixel_to_cell(x, y, ol.feature_size, ol.padded_size))
    answer = client.predict(x, y, api_name="/pixel")
    assert (answer["x"], answer["y"], answer["cell"]) == (x, y, [r, c])
    assert answer["offset_learning"]["predicted"] == names[ol.prediction[y, x]]
    assert answer["per_pixel_twin"]["predicted"] == names[lin.prediction[y, x]]
    for key, p in (("offset_learning", ol), ("per_pixel_twin", lin)):
        logits = p.logits[:, r, c].astype(np.float64)
        best = np.argsort(-logits, kind="stable")[:5]
        top5 = answer[key]["top5"]
        assert [t["class"] for t in top5] == [names[k] for k in best]
        # rounded to 4 decimals in the answer; the model runs in float32 in both places
        np.testing.assert_allclose([t["score"] for t in top5], logits[best], atol=6e-5)
    with pytest.raises(gradio_client.exceptions.AppError, match="outside the image"):
        client.predict(image.shape[1], 0, api_name="/pixel")
    assert client.predict(0, 0, api_name="/pixel")["x"] == 0  # still serving this session
