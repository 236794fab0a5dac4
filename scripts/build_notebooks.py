"""Write the notebooks in ``notebooks/`` from the cell lists below (edit here, then re-run).

    python scripts/build_notebooks.py          # (re)writes notebooks/*.ipynb, outputs stripped

Notebooks are stored without outputs: diffs stay reviewable, the repository stays small, and a stored
output could silently disagree with the checkpoint a reader has. ``tests/test_notebooks.py`` runs every
notebook end to end (``OFFSEG_FAST=1``), so they cannot rot.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"

SETUP = """\
%matplotlib inline
from IPython.display import display

from offseg_vis.analysis import notebook_support as nb
from offseg_vis.analysis import plots

S = nb.setup()  # OFFSEG_FAST=1 -> small sizes, one torch thread (what the test suite runs)
CLASSES, PALETTE = nb.class_names(), nb.palette()
S"""

FAST_NOTE = (
    "Run it as is for the full version; with the environment variable `OFFSEG_FAST=1` (what `make test` "
    "does) it uses fewer images, points and steps."
)

MODEL_NOTE = (
    "The models are the shipped checkpoints `checkpoints/offseg-mbv2_offset` and "
    "`checkpoints/offseg-mbv2_linear` when present. **If they are not there, a small model is trained first "
    "(a few minutes on CPU; cached in `runs/notebooks/`) and the printed source says so** — its numbers are "
    "then only a smoke test."
)


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


NOTEBOOKS: dict[str, list] = {
    "01_quickstart.ipynb": [
        md(f"""
# 01 · Quickstart: load OffSeg-MBV2 and segment FashionScenes

Load a trained OffSeg-MBV2 (MobileNetV2 + light decoder + Offset Learning classifier), segment a few
FashionScenes validation images, and print the per-class IoU table. {FAST_NOTE}

{MODEL_NOTE}
"""),
        code(SETUP),
        code("""
offset = nb.load_or_train("offset")
print(offset.source)
print(offset.metadata.get("metrics", {}).get("mIoU", "no stored metrics"))"""),
        md(
            "## Segment a few validation scenes\n`probe` runs the model once and keeps, per image, the prediction "
            "and everything the classifier computed (used by the other notebooks)."
        ),
        code("""
from offseg_vis.analysis import probe

images, labels, names = nb.val_samples(4)
probes = probe(offset.model, images, labels)
plots.plot_segmentation_grid(probes, CLASSES, PALETTE)"""),
        md(
            "## Per-class IoU on the validation set\nThe engine's evaluator (dataset-level confusion matrix, "
            "mmseg protocol)."
        ),
        code("""
metrics = nb.evaluate_val(offset.model, S.eval_images)
print(f"{S.eval_images} validation scenes")
print(metrics.table())"""),
        code("""
display(plots.plot_iou_bars({"OffSeg-MBV2 (offset)": metrics.iou}, CLASSES))
plots.plot_confusion_matrix(metrics.confusion, CLASSES)"""),
        md("## Your own image\nAny RGB `uint8` array works; here one more validation scene without its label."),
        code("""
image = nb.val_samples(1, start=10)[0][0]
(p,) = probe(offset.model, [image])
plots.plot_prediction_overlay(p.image, p.prediction, CLASSES, PALETTE, title="prediction")"""),
    ],
    "02_misalignment.ipynb": [
        md(f"""
# 02 · What Offset Learning changed, and misalignment (a class-centred analogue of the paper's Fig. 3)

First the paper's comparison: the Offset Learning model against its **per-pixel twin** (same recipe, data
and seed, linear classifier) on the same images, pixel by pixel against the ground truth — *fixed* (twin
wrong, OL right), *broken* (twin right, OL wrong), *both wrong*, *both right*.

Then the misalignment measurement. For every image, the *ideal* class prototypes are the least-squares
solution of M = W*·Eᵀ: **W\\* = M·(Eᵀ)⁺**, with M the one-hot ground truth at the classifier's grid (ignore
pixels removed) and E the pixel features. If one fixed W suited every image, the W\\*_k of different images
would point the same way. We measure, on class-centred prototypes (the part shared by all classes cannot
change a prediction),

* **W\\* consistency** — mean cross-image cosine of one class's W\\*_k (the heatmaps);
* **W–W\\* alignment** — mean cos(W_k, W\\*_k): how well the classifier's prototype (fixed W, or the
  image-specific W' after the offsets) points at the image's ideal one;
* the **sanity check** — mIoU of argmax(W\\*·Eᵀ) against the ground truth (the paper reports ≈95 % on ADE20K).

The pseudo-inverse is ill-posed, and its cut-off changes these scores, so the last section sweeps the
regulariser and keeps only the orderings that hold across it (`docs/misalignment_sweep.md` has the full
run). The offset and linear models' E are different feature spaces. {FAST_NOTE}

{MODEL_NOTE}
"""),
        code(SETUP),
        code("""
offset = nb.load_or_train("offset")
linear = nb.load_or_train("linear")
print("offset:", offset.source)
print("linear:", linear.source)"""),
        code("""
from offseg_vis.analysis import compare_to_baseline, misalignment_suite, per_class_table, probe, summary_table

images, labels, names = nb.val_samples(S.n_images)
offset_probes = probe(offset.model, images, labels)
linear_probes = probe(linear.model, images, labels)
print(f"{len(images)} validation images")"""),
        md("## What Offset Learning changed: against its per-pixel twin"),
        code("""
twin = compare_to_baseline(offset_probes, linear_probes, CLASSES)
print(twin.summary())
print()
print(twin.table())"""),
        code("""plots.plot_twin_comparison(twin, 0, images[0])"""),
        md("## Misalignment at the default pseudo-inverse cut-off (rcond 1e-5)"),
        code("""
reports = misalignment_suite(offset_probes, linear_probes, CLASSES)
print(summary_table(reports))"""),
        md("### Per class"),
        code("""
print("W* consistency across images (higher = one prototype fits more images)")
print(per_class_table(reports, "consistency"))
print()
print("W-W* alignment cos(W, W*) (after: cos(W', W*') with the image's own W')")
print(per_class_table(reports, "alignment"))"""),
        md(
            "### A class-centred analogue of the paper's Fig. 3: cross-image cosine similarity of W\\*_k\nSix "
            "classes seen in the most images, up to 10 images each; coolwarm on [-1, 1] as in the paper."
        ),
        code("""
shown = reports["offset: before (E, W)"].frequent_classes(6)
for rep in reports.values():
    display(plots.plot_cosine_heatmaps(rep, classes=shown))"""),
        md("### Summary per class"),
        code("""plots.plot_misalignment_summary(reports)"""),
        md("""
### How W' moves
`embed_consistency` is the mean cross-image cosine of the classifier's own prototype: 1 for a fixed W, lower
when the class offsets adapt W' to each image.
"""),
        code("""print(per_class_table(reports, "embed_consistency"))"""),
        md("""
## Do the scores survive their knob?
W\\* mined with the pseudo-inverse over rcond, with ridge regression over λ, and as knob-free class means.
Only orderings with one sign at every setting are statements about the models.
"""),
        code("""
from offseg_vis.analysis.misalignment import misalignment_sweep, stable_orderings

sweep = misalignment_sweep(offset_probes, linear_probes, CLASSES, rconds=(1e-5, 1e-2, 1e-1), ridges=(1e-5, 1e-3, 1e-1))
print(sweep.markdown())
print()
for metric in ("consistency", "alignment"):
    for check in stable_orderings(sweep, metric):
        print("holds:" if check.holds else "does not hold:", check.statement)"""),
        code("""plots.plot_misalignment_sweep(sweep)"""),
    ],
    "03_offsets.ipynb": [
        md(f"""
# 03 · What the offsets do: against the per-pixel twin, offset magnitudes, attention maps

**What Offset Learning changed** is measured against its per-pixel twin (same recipe, data and seed, linear
classifier): per pixel *fixed* (twin wrong, OL right), *broken* (twin right, OL wrong), *both wrong*, *both
right*. Inside the module, the coupled logits A = E·Wᵀ give a **class attention** (softmax over pixels: where
each class looks) and a **position attention** (softmax over classes: which classes a pixel mixes), and from
them the class offset ΔW and the feature offset ΔE.

The last section is an **ablation, offsets switched off**: the same offset model with ΔW = ΔE = 0 (argmax of
norm(E·Wᵀ), a classifier nobody trained) against the model itself. It shows how much the predictions lean on
the offsets, not what they gain over a per-pixel model. {FAST_NOTE}

{MODEL_NOTE}
"""),
        code(SETUP),
        code("""
from offseg_vis.analysis import compare_to_baseline, correction_map, corrections_table, offset_effect, probe

offset = nb.load_or_train("offset")
linear = nb.load_or_train("linear")
print("offset:", offset.source)
print("linear (the twin):", linear.source)
images, labels, names = nb.val_samples(S.n_images)
probes = probe(offset.model, images, labels)
twin_probes = probe(linear.model, images, labels, need={"prediction"})"""),
        md("## What Offset Learning changed: against its per-pixel twin"),
        code("""
twin = compare_to_baseline(probes, twin_probes, CLASSES)
print(twin.summary())
print()
print(twin.table())"""),
        md("## One image"),
        code("""
p = probes[0]
display(plots.plot_twin_comparison(twin, 0, p.image))
display(plots.plot_feature_offset_magnitude(p))
display(plots.plot_position_entropy(p))
plots.plot_class_attention(p, classes=sorted(set(p.label.ravel().tolist()) - {255}), class_names=CLASSES)"""),
        md("## Class offsets ‖ΔW‖/‖W‖ over the images"),
        code("""plots.plot_class_offset_norms(probes, CLASSES, PALETTE)"""),
        md("""
## Ablation: offsets switched off
The offset model with ΔW = ΔE = 0 against the same model with its offsets (not a trained baseline).
"""),
        code("""
maps = [correction_map(p) for p in probes]
print(corrections_table(maps, CLASSES))
print("ablation, net pixels turned right by switching the offsets on:", sum(m.net_fixed() for m in maps))
effect = offset_effect(probes)
print(f"offsets switched off: mIoU {100 * effect['mIoU_before']:.1f} %, aAcc {100 * effect['aAcc_before']:.1f} %; "
      f"with them: mIoU {100 * effect['mIoU_after']:.1f} %, aAcc {100 * effect['aAcc_after']:.1f} %")
plots.plot_correction_map(maps[0], probes[0].image, CLASSES)"""),
        md(
            "## Explore: pick an image and a class\n(Widgets need a live kernel; a static render shows the "
            "default choice.)"
        ),
        code("""
from ipywidgets import Dropdown, interact


def show(image=0, cls=1):
    q = probes[image]
    display(plots.plot_prediction_overlay(q.image, q.prediction, CLASSES, PALETTE, label=q.label))
    display(plots.plot_twin_comparison(twin, image, q.image))
    display(plots.plot_class_attention(q, classes=[cls], class_names=CLASSES, ncols=1))


interact(show, image=Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0),
         cls=Dropdown(options=[(c, k) for k, c in enumerate(CLASSES)], value=1));"""),
    ],
    "04_umap_embeddings.ipynb": [
        md(f"""
# 04 · Pixel features before and after refinement, in one UMAP

Pixels are sampled per class (stratified, ignore dropped, seeded). **One** UMAP is fitted on the features
before (E) and after (E') the offsets together, so both live in the same map; the class embeddings W
(stars) and each image's W' (diamonds) are placed with the same map; arrows show where the offsets move a
subset of pixels. Rows are L2-normalised first (Offset Learning's LayerNorm over classes removes a
pixel's feature scale, so direction is what classifies). Maps are cached in `.cache/analysis/`. {FAST_NOTE}

{MODEL_NOTE}
"""),
        code(SETUP),
        code("""
from offseg_vis.analysis import embed_pixels, probe

offset = nb.load_or_train("offset")
linear = nb.load_or_train("linear")
print("offset:", offset.source)
print("linear:", linear.source)
images, labels, names = nb.val_samples(S.n_images)
data_key = f"fashion-scenes-val[:{S.n_images}]"
offset_probes = probe(offset.model, images, labels)
linear_probes = probe(linear.model, images, labels)"""),
        code("""
emb = embed_pixels(offset_probes, max_points=S.max_points, n_epochs=S.umap_epochs, cache_dir=nb.cache_dir(),
                   model_key=offset.key, data_key=data_key)
print(f"{len(emb.classes)} pixels, {emb.params['points']} points; fit {emb.fit_seconds:.1f} s "
      f"(from cache: {emb.from_cache})")
plots.plot_joint_embedding(emb, CLASSES, PALETTE)"""),
        md("## The per-pixel baseline's features (one map, no offsets)"),
        code("""
emb_linear = embed_pixels(linear_probes, max_points=S.max_points // 2, n_epochs=S.umap_epochs,
                          cache_dir=nb.cache_dir(), model_key=linear.key, data_key=data_key)
plots.plot_joint_embedding(emb_linear, CLASSES, PALETTE)"""),
        md(
            "## Explore: choose classes and images\n(Widgets need a live kernel; a static render shows the "
            "default choice.)"
        ),
        code("""
from ipywidgets import SelectMultiple, interact


def show(classes=(1, 2, 3), images=tuple(range(len(names)))):
    display(plots.plot_joint_embedding(emb, CLASSES, PALETTE, classes=list(classes), images=list(images),
                                       point_size=4))


interact(show,
         classes=SelectMultiple(options=[(c, k) for k, c in enumerate(CLASSES)], value=(1, 2, 3)),
         images=SelectMultiple(options=[(n, i) for i, n in enumerate(names)], value=tuple(range(len(names)))));"""),
        md(
            '## Fast fallback\n`method="pca"` gives a linear 2-D map in well under a second (what the app uses '
            "when it must answer quickly)."
        ),
        code("""
emb_pca = embed_pixels(offset_probes, max_points=S.max_points, method="pca")
plots.plot_joint_embedding(emb_pca, CLASSES, PALETTE)"""),
    ],
    "05_train_offset_vs_linear.ipynb": [
        md(f"""
# 05 · Train both classifiers briefly and compare

Trains OffSeg-MBV2 twice from the CPU default config (`configs/offseg-mbv2_fashion-scenes.yaml`, ImageNet
MobileNetV2 backbone), once with the Offset Learning classifier and once with the per-pixel 1×1 baseline,
for the same short schedule, then compares loss curves and validation mIoU. A short run shows the trend
only; the shipped checkpoints (if present) are evaluated alongside for reference. {FAST_NOTE}
"""),
        code(SETUP),
        code("""
runs = {}
for classifier in ("offset", "linear"):
    runs[classifier] = nb.train_small(classifier, S.compare_steps, S.batch_size, S.eval_images)
    print(f"{classifier}: {runs[classifier].steps} steps, mIoU {100 * runs[classifier].best_miou:.1f} "
          f"on {S.eval_images} val scenes, {runs[classifier].images_per_second:.1f} img/s")"""),
        code("""plots.plot_training_curves({c: r.history for c, r in runs.items()})"""),
        code("""
ious = {f"{c} ({S.compare_steps} steps)": r.final_metrics.iou for c, r in runs.items()}
for classifier in ("offset", "linear"):
    path = nb.shipped_checkpoint(classifier)
    if path is not None:
        ious[f"{classifier} (shipped)"] = nb.evaluate_val(nb.load_or_train(classifier).model, S.eval_images).iou
plots.plot_iou_bars(ious, CLASSES)"""),
        code("""
for classifier, result in runs.items():
    print(f"== {classifier}")
    print(result.final_metrics.table())"""),
    ],
}


def build(out_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Write every notebook (outputs empty, the python3 kernel) and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.validate(nb)
        path = out_dir / name
        # Stable cell ids keep re-generated files identical when nothing changed.
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{path.stem[:2]}-{i:02d}"
        nbformat.write(nb, path)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in build():
        print(p.relative_to(NOTEBOOKS_DIR.parent))
