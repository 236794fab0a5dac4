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
# # 05 · Train both classifiers briefly and compare
#
# Trains OffSeg-MBV2 twice from the CPU default config (`configs/offseg-mbv2_fashion-scenes.yaml`, ImageNet
# MobileNetV2 backbone), once with the Offset Learning classifier and once with the per-pixel 1×1 baseline,
# for the same short schedule, then compares loss curves and validation mIoU. A short run shows the trend
# only; the shipped checkpoints (if present) are evaluated alongside for reference. Run it as is for the full version; with the environment variable `OFFSEG_FAST=1` (what `make test` does) it uses fewer images, points and steps.

# %%
# %matplotlib inline
from IPython.display import display

from offseg_vis.analysis import notebook_support as nb
from offseg_vis.analysis import plots

S = nb.setup()  # OFFSEG_FAST=1 -> small sizes, one torch thread (what the test suite runs)
CLASSES, PALETTE = nb.class_names(), nb.palette()
S

# %%
runs = {}
for classifier in ("offset", "linear"):
    runs[classifier] = nb.train_small(classifier, S.compare_steps, S.batch_size, S.eval_images)
    print(f"{classifier}: {runs[classifier].steps} steps, mIoU {100 * runs[classifier].best_miou:.1f} "
          f"on {S.eval_images} val scenes, {runs[classifier].images_per_second:.1f} img/s")

# %%
plots.plot_training_curves({c: r.history for c, r in runs.items()})

# %%
ious = {f"{c} ({S.compare_steps} steps)": r.final_metrics.iou for c, r in runs.items()}
for classifier in ("offset", "linear"):
    path = nb.shipped_checkpoint(classifier)
    if path is not None:
        ious[f"{classifier} (shipped)"] = nb.evaluate_val(nb.load_or_train(classifier).model, S.eval_images).iou
plots.plot_iou_bars(ious, CLASSES)

# %%
for classifier, result in runs.items():
    print(f"== {classifier}")
    print(result.final_metrics.table())
