"""The app's callbacks as plain functions: input decoding (every bad input), model cards, panels.

Uses the shipped checkpoints when ``checkpoints/`` has any, else untrained OffSeg-MBV2 checkpoints
written to a temp folder, so it passes before and after the trained models land.
"""

from __future__ import annotations

import argparse
import dataclasses
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from offseg_vis.analysis import offsets
from offseg_vis.analysis.compare import OUTCOME_COLORS, compare_to_baseline
from offseg_vis.analysis.corrections import BROKEN, CODE_COLORS, FIXED, UNCHANGED, correction_map
from offseg_vis.analysis.probe import probe
from offseg_vis.app import callbacks, pixels, render
from offseg_vis.app.callbacks import AppContext, AppSettings
from offseg_vis.app.embedding_budget import EmbeddingSettings, UmapTimer
from offseg_vis.app.examples import ExampleMasks, example_images, example_label, mask_path, scene_preset
from offseg_vis.app.inputs import InputLimits, load_image
from offseg_vis.app.models import ModelRegistry, card_scene_preset, load_checkpoint
from offseg_vis.app.testing import checkpoints_or_untrained, write_untrained_checkpoints
from offseg_vis.data.fashion_scenes import CLASSES, PALETTE, SCENE_PRESETS, FashionScenesConfig, generate_scene
from offseg_vis.errors import CheckpointError, InputError

# ----------------------------------------------------------------------------- input files


def _png(width: int, height: int, bit_depth: int = 8, color_type: int = 2, raw: bytes = b"") -> bytes:
    """A PNG written by hand (for sizes and depths Pillow will not write)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _rgb(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")]
)
def test_accepted_formats_decode_to_rgb(tmp_path, fmt, suffix):
    img = _rgb()
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(img).save(path, format=fmt)
    loaded = load_image(path)
    assert loaded.image.shape == (40, 60, 3) and loaded.image.dtype == np.uint8
    assert loaded.original_size == (40, 60)
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless
        np.testing.assert_array_equal(loaded.image, img)


def test_modes_grayscale_palette_bilevel(tmp_path):
    gray = np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) % 256
    Image.fromarray(gray.astype(np.uint8), "L").save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png").image
    np.testing.assert_array_equal(out, np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2))
    pal = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png").image, np.asarray(pal.convert("RGB")))
    Image.fromarray(gray.astype(np.uint8) > 127).save(tmp_path / "one.png")  # mode "1"
    assert set(np.unique(load_image(tmp_path / "one.png").image)) <= {0, 255}


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red-ish everywhere
    rgba[:16, :, 3] = 255  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.image[:16, :, :], np.broadcast_to([200, 0, 0], (16, 32, 3)))
    np.testing.assert_array_equal(loaded.image[16:], np.full((16, 32, 3), 255))
    assert any("white" in n for n in loaded.notices)


def test_sixteen_bit_gray_and_rgb(tmp_path):
    values = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16).repeat(16, 0).repeat(16, 1)
    Image.fromarray(values).save(tmp_path / "g16.png")  # mode I;16
    out = load_image(tmp_path / "g16.png").image
    assert out.shape == (32, 32, 3)
    assert [out[0, 0, 0], out[0, 16, 0], out[16, 0, 0], out[16, 16, 0]] == [0, 100, 255, 7]
    # 16-bit RGB PNG (Pillow cannot write it): every channel = 0xABCD -> high byte 0xAB.
    row = b"\x00" + bytes.fromhex("abcd") * 3 * 20
    (tmp_path / "rgb16.png").write_bytes(_png(20, 20, bit_depth=16, color_type=2, raw=row * 20))
    out = load_image(tmp_path / "rgb16.png").image
    assert out.shape == (20, 20, 3) and int(out[0, 0, 0]) == 0xAB


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((30, 50, 3), dtype=np.uint8)
    img[:, :10] = 255  # white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.image.shape == (50, 30, 3)  # turned upright
    assert loaded.original_size == (50, 30)
    assert loaded.image[:10].mean() > 200 and loaded.image[20:].mean() < 50  # left band is now on top
    assert any("EXIF" in n for n in loaded.notices)


def test_large_image_is_downscaled_with_a_notice(tmp_path):
    Image.fromarray(_rgb(150, 300)).save(tmp_path / "big.png")
    loaded = load_image(tmp_path / "big.png", InputLimits(max_side=100))
    assert loaded.image.shape == (50, 100, 3)
    assert loaded.original_size == (150, 300)
    assert any("downscaled to 100×50" in n for n in loaded.notices)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("text", "not an image"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("gif", "not supported"),
        ("zero", "no pixels"),
        ("bomb", "too many pixels"),
        ("tiny", "at least 16 pixels"),
        ("too_big_file", "above this app's limit"),
        ("missing", "could not be found"),
    ],
)
def test_bad_inputs_give_one_sentence(tmp_path, case, expected):
    path = tmp_path / f"{case}.png"
    limits = InputLimits()
    if case == "text":
        path.write_text("hello, I am not an image\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        Image.fromarray(_rgb(64, 64)).save(path)
        path.write_bytes(path.read_bytes()[:600])
    elif case == "gif":
        Image.fromarray(_rgb()).save(path, format="GIF")
    elif case == "zero":
        path.write_bytes(_png(0, 10))
    elif case == "bomb":
        path.write_bytes(_png(30_000, 30_000))
    elif case == "tiny":
        Image.fromarray(_rgb(4, 40)).save(path)
    elif case == "too_big_file":
        Image.fromarray(_rgb(64, 64)).save(path)
        limits = InputLimits(max_file_mb=0.001)
    with pytest.raises(InputError) as info:
        load_image(path, limits)
    message = str(info.value)
    assert expected in message
    assert message.endswith(".") and "Traceback" not in message


# ----------------------------------------------------------------------------- models and panels


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    torch.set_flush_denormal(True)  # untrained weights make denormal floats: keep them cheap
    try:
        paths = checkpoints_or_untrained(tmp_path_factory.mktemp("checkpoints"))
        yield AppContext.from_checkpoints(paths, AppSettings(warm_up_umap=False))
    finally:
        torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def example():
    path = example_images()[2]
    return (
        path,
        np.asarray(Image.open(path).convert("RGB")),
        np.asarray(Image.open(mask_path(path)), np.int64),
    )


@pytest.fixture(scope="module")
def segmented(ctx, example):
    return callbacks.segment(ctx, example[0], None)


def test_gallery_ships_scenes_with_masks():
    paths = example_images()
    plain = [p for p in paths if scene_preset(p) == ""]
    looks = [p for p in paths if scene_preset(p) == "looks"]
    assert len(plain) == 8 and len(looks) == 6 and paths == plain + looks  # plain scenes first
    masks = ExampleMasks()
    assert len(masks) == len(paths)
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        mask = masks.lookup(image)
        assert mask is not None and masks.scene_of(image) == path
        # each file is exactly the generator's val scene of its preset (an independent reference)
        index = int(path.name[: -len(".png")].rpartition("_")[2])
        want_image, want_mask = generate_scene("val", index, FashionScenesConfig(**SCENE_PRESETS[scene_preset(path)]))
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(mask, want_mask)
    assert masks.lookup(np.zeros((128, 128, 3), np.uint8)) is None
    assert {c for p in looks for c in np.unique(masks.lookup(np.asarray(Image.open(p).convert("RGB"))))} == set(
        range(len(CLASSES))
    )  # the +looks scenes show every class too
    assert example_label(plain[0]) == f"val {int(plain[0].stem.split('_')[1])}"
    assert example_label(looks[0]).startswith("+looks · val ")


def test_a_gallery_scene_of_another_setting_is_named_in_the_status(ctx):
    default = ctx.registry.get(None)
    setting = card_scene_preset(default.card)
    own = [p for p in example_images() if scene_preset(p) == (setting or "")]
    other = [p for p in example_images() if scene_preset(p) != (setting or "")]
    status = callbacks.segment(ctx, own[0]).status
    assert f"gallery scene {example_label(own[0])}" in status and "Note:" not in status
    status = callbacks.segment(ctx, other[0]).status
    if setting is None:  # an untrained checkpoint without a recorded scene setting: nothing to compare
        assert "Note:" not in status
    else:
        assert f"Note: {default.label} was trained and scored on plain scenes and this is a +looks scene" in status


def test_every_model_is_paired_with_the_twin_of_its_own_setting(ctx):
    for label in ctx.registry.labels:
        model = ctx.registry.get(label)
        twin, how = ctx.registry.twin_for(model)
        assert twin is not None and twin.classifier != model.classifier, how
        assert card_scene_preset(twin.card) == card_scene_preset(model.card)
        assert twin.path.name.replace("linear", "offset") == model.path.name.replace("linear", "offset")
        preset = card_scene_preset(model.card)
        assert (f"fashion-scenes +{preset} (class_style 1, classes_per_scene 2)" in model.card_markdown()) == (
            preset == "looks"
        )  # the card names the scenes its mIoU was measured on


def test_card_scene_preset_reads_the_val_scenes_of_the_card():
    card = {"config": {"data": {"dataset": "fashion-scenes", "dataset_options": {}, "val_options": {"length": 9}}}}
    assert card_scene_preset(card) == ""
    card["config"]["data"]["val_options"]["config"] = {"class_style": 1.0, "classes_per_scene": 2, "style": 0.5}
    assert card_scene_preset(card) == "looks"
    card["config"]["data"]["dataset_options"] = {"config": {"class_style": 0.5}}  # val options win
    assert card_scene_preset(card) == "looks"
    card["config"]["data"]["val_options"] = {}
    assert card_scene_preset(card) is None  # class_style 0.5 is no preset
    assert card_scene_preset({"config": {"data": {"dataset": "ade20k"}}}) is None and card_scene_preset({}) is None


def test_registry_puts_offset_first_and_finds_the_twin_from_the_cards(ctx):
    offset = ctx.registry.get(None)
    assert offset.is_offset and offset.label == ctx.registry.labels[0]
    twin, how = ctx.registry.twin_for(offset)
    assert twin is not None and not twin.is_offset and twin.path.name in how
    back, _ = ctx.registry.twin_for(twin)
    assert back is offset  # twins both ways
    card = offset.card_markdown()
    assert offset.model_name in card and "parameters" in card and "mIoU" in card and "ankle boot" in card
    assert offset.num_params == sum(p.numel() for p in offset.model.parameters())
    with pytest.raises(CheckpointError, match="no model called"):
        ctx.registry.get("nope")


def test_missing_and_corrupt_checkpoints_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint to serve"):
        ModelRegistry.from_paths([tmp_path])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_segment_returns_annotations_shares_and_the_probe(ctx, example, segmented):
    path, image, mask = example
    base, annotations = segmented.annotated
    np.testing.assert_array_equal(base, image)
    names = ctx.registry.get(None).class_names
    assert annotations and all(name in names for _, name in annotations)
    covered = sum((m > 0).astype(int) for m, _ in annotations)
    np.testing.assert_array_equal(covered, np.ones(image.shape[:2], int))  # every pixel in exactly one class
    assert abs(sum(row[1] for row in segmented.shares) - 100.0) < 0.1
    assert sum(row[2] for row in segmented.shares) == image.shape[0] * image.shape[1]
    p = segmented.analysis.probe
    # The gallery scene's ground truth is attached, and the probe equals a direct one.
    np.testing.assert_array_equal(p.label, mask)
    direct = probe(ctx.registry.get(None).model, [image])[0]
    np.testing.assert_array_equal(p.prediction, direct.prediction)
    assert "ground truth is known" in segmented.status


def test_segment_rejects_missing_and_bad_uploads_then_still_works(ctx, tmp_path, example):
    with pytest.raises(InputError, match="Please upload an image"):
        callbacks.segment(ctx, None)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        callbacks.segment(ctx, bad)
    small = tmp_path / "small.png"
    Image.fromarray(example[1][:48, :40]).save(small)
    result = callbacks.segment(ctx, small)
    assert result.annotated[0].shape == (48, 40, 3) and result.analysis.probe.label is None


def test_twin_discovery_needs_the_same_recipe(ctx, tmp_path):
    from offseg_vis.app.models import recipe_key

    offset = ctx.registry.get(None)
    twin, _ = ctx.registry.twin_for(offset)
    meta = dict(offset.metadata)
    assert recipe_key(meta) == recipe_key(twin.metadata)  # the shipped (or untrained) pair are twins
    if recipe_key(meta) is not None:
        changed = {**twin.metadata, "config": {**twin.metadata["config"], "runtime": {"seed": 1}}}
        other_seed = dataclasses.replace(twin, card=changed, label="other seed")
        registry = ModelRegistry([offset, other_seed])
        found, how = registry.twin_for(offset)
        assert found is None and "same recipe, data and seed" in how
        only_offset = AppContext(registry, AppSettings(warm_up_umap=False))
        assert (
            "No twin"
            in callbacks.compare(only_offset, callbacks.segment(only_offset, example_images()[0]).analysis).text
        )


def test_segment_computes_the_prediction_only(segmented):
    p = segmented.analysis.probe
    assert p.computed == {"prediction"} and p.class_attention is None and p.features is None


def test_offset_panels(ctx, segmented):
    panels = callbacks.offset_panels(ctx, segmented.analysis)
    p = segmented.analysis.probe  # now with every intermediate (computed once by the panel)
    entry = ctx.registry.get(None)
    direct = probe(entry.model, [p.image], [p.label])[0]
    np.testing.assert_array_equal(p.features, direct.features)
    np.testing.assert_array_equal(p.class_attention, direct.class_attention)
    assert panels.correction.shape == (384, 384, 3)  # 128 px scene enlarged 3x for display
    assert panels.magnitude.shape == (384 + 34, 384, 3)
    np.testing.assert_array_equal(panels.correction, render.correction_overlay(p.image, correction_map(direct)))
    ratio = offsets.feature_offset_ratio(direct)
    np.testing.assert_array_equal(
        panels.magnitude,
        render.heatmap_overlay(p.image, ratio, p.input_size, p.padded_size, cmap="magma", label="|dE| / |E|", vmin=0.0),
    )
    names = entry.class_names
    present = {names[c] for c in np.unique(p.prediction)} | {names[c] for c in np.unique(p.label)}
    assert {row[0] for row in panels.class_offsets} == present
    class_ratio = offsets.class_offset_ratio(direct)
    for name, value in panels.class_offsets:
        assert value == round(float(class_ratio[names.index(name)]), 4)
    assert panels.attention_default in panels.attention_classes
    cmap = correction_map(direct)
    assert "Ablation: offsets switched off" in panels.correction_text
    assert f"net {cmap.net_fixed():+,} pixels" in panels.correction_text
    assert f"{100 * cmap.changed_fraction():.1f} % of the pixels" in panels.correction_text
    assert "‖ΔE‖/‖E‖" in panels.magnitude_text
    image, text = callbacks.attention_panel(ctx, segmented.analysis, panels.attention_classes[-1])
    k = names.index(panels.attention_classes[-1])
    expected = render.heatmap_overlay(
        p.image,
        direct.class_attention[k],
        p.input_size,
        p.padded_size,
        cmap="inferno",
        label=f"attention: {names[k]}",
        vmin=0.0,
    )
    np.testing.assert_array_equal(image, expected)
    assert panels.attention_classes[-1] in text
    with pytest.raises(InputError, match="Unknown class"):
        callbacks.attention_panel(ctx, segmented.analysis, "unicorn")
    with pytest.raises(InputError, match="Segment an image first"):
        callbacks.offset_panels(ctx, None)


def test_correction_overlay_colours_codes():
    image = np.full((4, 4, 3), 128, np.uint8)
    before = np.zeros((4, 4), np.int64)
    after = before.copy()
    after[0, 0] = 1  # fixed (label 1)
    after[0, 1] = 1  # broken (label 0)
    label = np.zeros((4, 4), np.int64)
    label[0, 0] = 1
    cmap = correction_map((before, after), label=label, num_classes=2)
    out = render.correction_overlay(image, cmap)
    f = out.shape[0] // 4
    fixed, broken, unchanged = out[0, 0], out[0, f], out[3 * f, 3 * f]
    assert np.argmax(fixed) == 1 and fixed[1] > 130  # green dominates
    assert np.argmax(broken) == 0 and broken[0] > 150  # red dominates
    assert unchanged[0] == unchanged[1] == unchanged[2]  # gray
    assert {name for name, _, _ in render.correction_legend(cmap)} >= {"fixed", "broken"}
    assert CODE_COLORS[FIXED] != CODE_COLORS[BROKEN] != CODE_COLORS[UNCHANGED]


def test_compare_with_the_twin_equals_compare_to_baseline(ctx, segmented, example):
    panels = callbacks.compare(ctx, segmented.analysis)
    p = segmented.analysis.probe
    offset = ctx.registry.get(None)
    twin, _ = ctx.registry.twin_for(offset)
    ol = probe(offset.model, [p.image], [example[2]])[0]
    base = probe(twin.model, [p.image], [example[2]])[0]
    expected = compare_to_baseline([ol], [base], offset.class_names)
    assert panels.comparison.totals() == expected.totals()
    np.testing.assert_array_equal(panels.comparison.codes[0], expected.codes[0])
    t = expected.totals()
    assert f"fixed {t['fixed']:,} " in panels.text and f"broke {t['broken']:,} " in panels.text
    assert f"net {expected.net_fixed:+,}" in panels.text
    assert sum(t.values()) == int((example[2] != 255).sum())
    f = panels.outcome.shape[0] // p.image.shape[0]
    for code in (1, 2, 3):  # fixed, broken, both wrong: their colour blended over the gray image
        sel = expected.codes[0] == code
        if sel.any():
            pixel = panels.outcome[::f, ::f][sel][0].astype(int)
            assert np.argmax(pixel) == int(np.argmax(OUTCOME_COLORS[code]))
    np.testing.assert_array_equal(panels.outcome, render.twin_overlay(p.image, expected.codes[0]))
    differ = ol.prediction != base.prediction
    assert f"{100 * differ.mean():.1f} %" in panels.text
    magenta = np.all(panels.disagreement[::f, ::f] == render.DISAGREE_RGB, axis=-1)
    np.testing.assert_array_equal(magenta, differ)
    only_offset = AppContext(ModelRegistry([offset]), AppSettings(warm_up_umap=False))
    assert "No twin" in callbacks.compare(only_offset, segmented.analysis).text


def test_linear_model_has_no_offset_panels_and_is_compared_with_its_offset_twin(ctx, example):
    offset = ctx.registry.get(None)
    linear, _ = ctx.registry.twin_for(offset)
    result = callbacks.segment(ctx, example[0], linear.label)
    panels = callbacks.offset_panels(ctx, result.analysis)
    assert panels.correction is None and "no offsets" in panels.note
    from_linear = callbacks.compare(ctx, result.analysis)
    from_offset = callbacks.compare(ctx, callbacks.segment(ctx, example[0], offset.label).analysis)
    assert from_linear.comparison.totals() == from_offset.comparison.totals()


def test_embedding_panel_pca_and_budget_choice(ctx, segmented):
    panel = callbacks.map_panel(ctx, segmented.analysis, "pca")
    m = segmented.analysis.image_map
    p = segmented.analysis.probe
    h, w = p.feature_size
    settings = ctx.settings.embedding
    assert m.method == "pca" and m.embedding.params["points"] == 2 * len(m)  # E and E′ of every map cell
    assert len(m) <= settings.pca_points // 2 and m.stride == pixels.map_stride((h, w), settings.pca_points // 2)
    assert panel.maps.text.startswith("PCA") and f"{len(m):,} pixels" in panel.maps.text
    assert len(panel.maps.before) == len(m) + len(ctx.registry.get(None).class_names)  # points + W markers
    assert callbacks.map_panel(ctx, segmented.analysis, "pca") and segmented.analysis.image_map is m  # kept
    with pytest.raises(InputError, match="Unknown embedding method"):
        callbacks.map_panel(ctx, segmented.analysis, "tsne")
    timer = UmapTimer(EmbeddingSettings(budget_s=5.0, fit_share=0.6))
    assert timer.choose("auto", 2000)[0] == "pca"  # not calibrated yet
    timer.record(2000, 1.0)  # 0.5 ms per point -> 1 s for 2000 points
    assert timer.choose("auto", 2000)[0] == "umap"
    timer.record(2000, 20.0)  # the machine got busy: estimate now (0.5 + 10) / 2 ms per point
    method, why = timer.choose("auto", 2000)
    assert method == "pca" and "10.5 s" in why and "more than the 3.0 s (60 % of the 5 s budget" in why
    assert timer.choose("umap", 2000)[0] == "umap" and timer.choose("pca", 10)[0] == "pca"


def test_render_helpers():
    pred = np.array([[0, 0, 2], [2, 2, 2]])
    rows = render.class_shares(pred, ["a", "b", "c"])
    assert rows == [["c", 66.67, 4], ["a", 33.33, 2]]
    masks = render.annotations(pred, ["a", "b", "c"])
    assert [n for _, n in masks] == ["c", "a"] and masks[0][0].max() == pytest.approx(render.MASK_OPACITY)
    assert render.hex_color((255, 0, 16)) == "#ff0010"
    grid = np.arange(4, dtype=np.float32).reshape(2, 2)
    assert render.grid_to_image(grid, (7, 6), (8, 8)).shape == (7, 6)
    assert render.enlarge(np.zeros((100, 50, 3), np.uint8)).shape == (400, 200, 3)
    assert render.enlarge(np.zeros((500, 50, 3), np.uint8)).shape == (500, 50, 3)


def test_commands_register_app_and_demo(tmp_path):
    from offseg_vis.app.commands import register, run_app

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["app", "--checkpoint", str(tmp_path), "--port", "7999", "--max-side", "512", "--max-file-mb", "2"]
    )
    assert args.host == "127.0.0.1" and args.port == 7999 and args.max_side == 512 and args.max_file_mb == 2
    demo = parser.parse_args(["demo"])
    assert demo.func is run_app and demo.host == "127.0.0.1" and demo.checkpoint is None
    with pytest.raises(CheckpointError, match="No checkpoint to serve"):
        run_app(args)  # empty folder: a sentence, not a traceback


def test_untrained_checkpoints_carry_a_fashion_scenes_card(tmp_path):
    paths = write_untrained_checkpoints(tmp_path, classifiers=("linear",))
    entry = load_checkpoint(paths[0])
    assert entry.class_names == list(CLASSES) and entry.palette.shape == (11, 3) and entry.miou is None
    np.testing.assert_array_equal(entry.palette, np.asarray(PALETTE, np.uint8))
    assert "Classes:" not in entry.card_markdown()  # the card's own names: nothing to explain


def test_app_model_is_the_run_api_and_says_where_guessed_classes_came_from(tmp_path):
    from offseg_vis import build_model
    from offseg_vis.engine.run import LoadedRun, load_run
    from offseg_vis.models.weights import save_weights

    torch.manual_seed(0)
    path = save_weights(build_model("offseg-mbv2", 11, classifier="linear"), tmp_path / "nameless", metadata={})
    entry, run = load_checkpoint(path), load_run(path)
    assert isinstance(entry, LoadedRun)
    assert entry.class_names == run.class_names and entry.classes_source == run.classes_source
    np.testing.assert_array_equal(entry.palette, run.palette)
    assert not entry.classes_source.startswith("class names")  # the card has none: a table or generic names
    assert f"*Classes: {run.classes_source}*" in entry.card_markdown()
