"""TensorBoard projector export of pixel embeddings: plain files, no TensorFlow.

``tensorboard --logdir DIR`` finds ``DIR/projector_config.pbtxt`` (the projector also accepts the log
folder itself as a "run" when it holds no event files) and reads, for every ``embeddings { ... }`` entry,
a ``tensor_path`` TSV (one row per point, tab-separated floats, no header), a ``metadata_path`` TSV
(with a header row because there are several columns) and an optional sprite: one PNG holding every
point's thumbnail in a square grid, row-major, thumbnail i at grid cell (i // cols, i % cols), each
``single_image_dim`` = [16, 16] pixels. Asset paths are relative to the config's folder (the plugin
rejects paths that leave it).

What is written (n = the pixel table's rows, C = the feature width, K classes, I images):

    E.tsv            (n, C)   pixel features before the offsets
    E_refined.tsv    (n, C)   E′ = E + ΔE of the same pixels (offset models only)
    metadata.tsv     n rows   class, image, x, y, correct, predicted (+ twin, outcome with a twin)
    sprite.png       each pixel's 16 x 16 neighbourhood, shared by the E and E′ tensors
    W.tsv            (K + I·K, C)  W, then one W′ row set per image (W′ is image-specific)
    W_metadata.tsv   kind (W or W'), class, image ("all" for W)
    projector_config.pbtxt

Each file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from offseg_vis.analysis.explore import PixelTable
from offseg_vis.analysis.probe import ImageProbe
from offseg_vis.errors import InputError
from offseg_vis.models.weights import atomic_write_text

CONFIG_NAME = "projector_config.pbtxt"
SPRITE_NAME = "sprite.png"
THUMB = 16  # sprite thumbnail side: each pixel's 16 x 16 neighbourhood
MAX_SPRITE_SIDE = 8192  # the projector loads the sprite as one WebGL texture; 8192 px is the safe limit
TENSOR_E, TENSOR_E_REFINED, TENSOR_W = "E (before offsets)", "E' (after offsets)", "W and W' (per image)"


@dataclass
class ProjectorExport:
    """What :func:`export_projector` wrote.

    Attributes:
        out_dir: the folder.
        files: {file name: size in bytes}.
        points: n; dims: C; w_rows: rows of W.tsv; images: I.
        tensors: the tensor names in the config.
    """

    out_dir: Path
    files: dict[str, int]
    points: int
    dims: int
    w_rows: int
    images: int
    tensors: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def describe(self) -> str:
        listing = ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in self.files.items())
        return (
            f"wrote {len(self.files)} files ({self.total_bytes / 1e6:.2f} MB) to {self.out_dir}: {listing}; "
            f"{self.points:,} points x {self.dims} dims in {len(self.tensors) - 1} pixel tensor(s), "
            f"{self.w_rows} rows of W and W' over {self.images} image(s). "
            f"Open with: tensorboard --logdir {self.out_dir}"
        )


def _tsv_matrix(x: np.ndarray) -> str:
    """(n, C) floats -> TSV text, 6 significant digits (float32 carries ~7)."""
    return "".join("\t".join(f"{v:.6g}" for v in row) + "\n" for row in np.asarray(x, dtype=np.float64))


def _tsv_table(header: Sequence[str], columns: Sequence[Sequence]) -> str:
    """Columns -> TSV with a header row (the projector needs one when there are several columns)."""
    lines = ["\t".join(header)]
    for row in zip(*columns):
        cells = [str(v) for v in row]
        if any(("\t" in c or "\n" in c) for c in cells):
            raise InputError(f"A metadata value contains a tab or newline: {cells}; rename that class.")
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the projector files are plain readable outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def metadata_columns(table: PixelTable) -> tuple[list[str], list[np.ndarray]]:
    """The metadata rows of the pixel tensors: header and columns (class and predicted as names,
    correct as correct/wrong, and with a twin its prediction and the outcome)."""
    cols = table.columns()
    header = ["class", "image", "x", "y", "correct", "predicted"]
    values = [
        cols["class_name"],
        cols["image"],
        cols["x"],
        cols["y"],
        np.where(cols["correct"], "correct", "wrong"),
        cols["predicted_name"],
    ]
    if table.has_twin:
        header += ["twin", "outcome"]
        values += [cols["twin_name"], cols["outcome"]]
    return header, values


def pixel_sprite(images: Sequence[np.ndarray], table: PixelTable, thumb: int = THUMB) -> np.ndarray:
    """Every row's ``thumb`` x ``thumb`` neighbourhood in one square sprite (row-major grid).

    The patch of row j covers image rows y-thumb/2 .. y+thumb/2-1 (columns alike); the image is
    edge-padded so border pixels get full patches.

    Returns:
        (cols·thumb, cols·thumb, 3) uint8 with cols = ⌈√n⌉; cells past n stay black.
    """
    n = len(table)
    cols = max(1, math.ceil(math.sqrt(n)))
    if cols * thumb > MAX_SPRITE_SIDE:
        most = (MAX_SPRITE_SIDE // thumb) ** 2
        raise InputError(
            f"{n:,} points need a {cols * thumb}-pixel sprite; the projector takes at most {MAX_SPRITE_SIDE} "
            f"pixels a side, i.e. {most:,} points. Use --points {most} or fewer."
        )
    half = thumb // 2
    padded = [np.pad(np.asarray(img, np.uint8), ((half, half), (half, half), (0, 0)), mode="edge") for img in images]
    sprite = np.zeros((cols * thumb, cols * thumb, 3), dtype=np.uint8)
    for j in range(n):
        img = padded[table.image[j]]
        y, x = int(table.y[j]), int(table.x[j])  # +half offset of the padding cancels the -half of the patch
        gy, gx = divmod(j, cols)
        sprite[gy * thumb : (gy + 1) * thumb, gx * thumb : (gx + 1) * thumb] = img[y : y + thumb, x : x + thumb]
    return sprite


def _embedding_block(name: str, tensor: str, shape: tuple[int, int], metadata: str, sprite: bool) -> str:
    lines = [
        "embeddings {",
        f'  tensor_name: "{name}"',
        f'  tensor_path: "{tensor}"',
        f'  metadata_path: "{metadata}"',
        f"  tensor_shape: {shape[0]}",
        f"  tensor_shape: {shape[1]}",
    ]
    if sprite:
        lines += [
            "  sprite {",
            f'    image_path: "{SPRITE_NAME}"',
            f"    single_image_dim: {THUMB}",
            f"    single_image_dim: {THUMB}",
            "  }",
        ]
    return "\n".join(lines + ["}"]) + "\n"


def gather_rows(probes: Sequence[ImageProbe], table: PixelTable, name: str) -> np.ndarray:
    """(n, C) feature ``name`` ("features" or "refined_features") at the table's cells."""
    out = np.zeros((len(table), probes[0].embed_dims), dtype=np.float32)
    for i, p in enumerate(probes):
        sel = np.flatnonzero(table.image == i)
        out[sel] = getattr(p, name)[table.row[sel], table.col[sel]]
    return out


def export_projector(probes: Sequence[ImageProbe], table: PixelTable, out_dir: str | Path) -> ProjectorExport:
    """Write the projector files for the table's pixels (module docstring).

    Args:
        probes: the probes the table was built from, with ``features`` and ``class_embed`` (and
            ``refined_features`` / ``refined_class_embed`` for an offset model).
        table: from :func:`~offseg_vis.analysis.explore.pixel_table`.
        out_dir: the folder (created; existing projector files in it are replaced).

    Returns:
        a :class:`ProjectorExport` listing the files and their sizes.
    """
    probes = list(probes)
    if len(probes) != len(table.image_shapes):
        raise InputError(f"The table covers {len(table.image_shapes)} images but {len(probes)} probes were given.")
    if len(table) == 0:
        raise InputError("The pixel table is empty; nothing to export (use more images or points).")
    offset = probes[0].is_offset_model
    for p in probes:
        p.require("features", "class_embed", *(("refined_features", "refined_class_embed") if offset else ()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sprite = pixel_sprite([p.image for p in probes], table)  # checks the sprite size before writing anything
    e = gather_rows(probes, table, "features")
    texts = {"E.tsv": _tsv_matrix(e), "metadata.tsv": _tsv_table(*metadata_columns(table))}
    blocks = [_embedding_block(TENSOR_E, "E.tsv", e.shape, "metadata.tsv", True)]
    tensors = [TENSOR_E]
    if offset:
        e2 = gather_rows(probes, table, "refined_features")
        texts["E_refined.tsv"] = _tsv_matrix(e2)
        blocks.append(_embedding_block(TENSOR_E_REFINED, "E_refined.tsv", e2.shape, "metadata.tsv", True))
        tensors.append(TENSOR_E_REFINED)
    w = probes[0].class_embed
    k = w.shape[0]
    w_rows, kinds, classes, images = [w], ["W"] * k, list(table.class_names), ["all"] * k
    if offset:
        for i, p in enumerate(probes):
            w_rows.append(p.refined_class_embed)
            kinds += ["W'"] * k
            classes += list(table.class_names)
            images += [str(i)] * k
    w_all = np.concatenate(w_rows)  # (K + I*K, C)
    texts["W.tsv"] = _tsv_matrix(w_all)
    texts["W_metadata.tsv"] = _tsv_table(["kind", "class", "image"], [kinds, classes, images])
    blocks.append(_embedding_block(TENSOR_W, "W.tsv", w_all.shape, "W_metadata.tsv", False))
    tensors.append(TENSOR_W)
    texts[CONFIG_NAME] = "".join(blocks)

    buf = io.BytesIO()
    Image.fromarray(sprite).save(buf, format="PNG")
    files = {}
    for name, text in texts.items():
        if name == CONFIG_NAME:
            continue
        atomic_write_text(out / name, text)
        files[name] = (out / name).stat().st_size
    _atomic_write_bytes(out / SPRITE_NAME, buf.getvalue())
    files[SPRITE_NAME] = (out / SPRITE_NAME).stat().st_size
    atomic_write_text(out / CONFIG_NAME, texts[CONFIG_NAME])  # last: the config names only written files
    files[CONFIG_NAME] = (out / CONFIG_NAME).stat().st_size
    return ProjectorExport(out, files, len(table), int(e.shape[1]), int(w_all.shape[0]), len(probes), tensors)
