# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Quickstart: load OffSeg-MBV2 and segment FashionScenes
#
# Load a trained OffSeg-MBV2 (MobileNetV2 + light decoder + Offset Learning classifier), segment a few
# FashionScenes validation images, and print the per-class IoU table. Run it as is for the full version; with the environment variable `OFFSEG_FAST=1` (what `make test` does) it uses fewer images, points and steps.
#
# The models are the shipped checkpoints `checkpoints/offseg-mbv2_offset` and `checkpoints/offseg-mbv2_linear` when present. **If they are not there, a small model is trained first (a few minutes on CPU; cached in `runs/notebooks/`) and the printed source says so** — its numbers are then only a smoke test.

# %%
# %matplotlib inline
from IPython.display import display

from offseg_vis.analysis import notebook_support as nb
from offseg_vis.analysis import plots

S = nb.setup()  # OFFSEG_FAST=1 -> small sizes, one torch thread (what the test suite runs)
CLASSES, PALETTE = nb.class_names(), nb.palette()
S

# %%
offset = nb.load_or_train("offset")
print(offset.source)
print(offset.metadata.get("metrics", {}).get("mIoU", "no stored metrics"))

# %% [markdown]
# ## Segment a few validation scenes
# `probe` runs the model once and keeps, per image, the prediction and everything the classifier computed (used by the other notebooks).

# %%
from offseg_vis.analysis import probe

images, labels, names = nb.val_samples(4)
probes = probe(offset.model, images, labels)
plots.plot_segmentation_grid(probes, CLASSES, PALETTE)

# %% [markdown]
# ## Per-class IoU on the validation set
# The engine's evaluator (dataset-level confusion matrix, mmseg protocol).

# %%
metrics = nb.evaluate_val(offset.model, S.eval_images)
print(f"{S.eval_images} validation scenes")
print(metrics.table())

# %%
display(plots.plot_iou_bars({"OffSeg-MBV2 (offset)": metrics.iou}, CLASSES))
plots.plot_confusion_matrix(metrics.confusion, CLASSES)

# %% [markdown]
# ## Your own image
# Any RGB `uint8` array works; here one more validation scene without its label.

# %%
image = nb.val_samples(1, start=10)[0][0]
(p,) = probe(offset.model, [image])
plots.plot_prediction_overlay(p.image, p.prediction, CLASSES, PALETTE, title="prediction")
