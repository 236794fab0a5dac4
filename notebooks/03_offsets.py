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
# # 03 · What the offsets do: against the per-pixel twin, offset magnitudes, attention maps
#
# **What Offset Learning changed** is measured against its per-pixel twin (same recipe, data and seed, linear
# classifier): per pixel *fixed* (twin wrong, OL right), *broken* (twin right, OL wrong), *both wrong*, *both
# right*. Inside the module, the coupled logits A = E·Wᵀ give a **class attention** (softmax over pixels: where
# each class looks) and a **position attention** (softmax over classes: which classes a pixel mixes), and from
# them the class offset ΔW and the feature offset ΔE.
#
# The last section is an **ablation, offsets switched off**: the same offset model with ΔW = ΔE = 0 (argmax of
# norm(E·Wᵀ), a classifier nobody trained) against the model itself. It shows how much the predictions lean on
# the offsets, not what they gain over a per-pixel model. Run it as is for the full version; with the environment variable `OFFSEG_FAST=1` (what `make test` does) it uses fewer images, points and steps.
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
from offseg_vis.analysis import compare_to_baseline, correction_map, corrections_table, offset_effect, probe

offset, linear = nb.load_twins()  # refuses a pair whose cards record different recipes
images, labels, names = nb.val_samples(S.n_images)
probes = probe(offset.model, images, labels)
twin_probes = probe(linear.model, images, labels, need={"prediction"})

# %% [markdown]
# ## What Offset Learning changed: against its per-pixel twin

# %%
twin = compare_to_baseline(probes, twin_probes, CLASSES)
print(twin.summary())
print()
print(twin.table())

# %% [markdown]
# ## Where the effect is: the `+looks` pair
# On plain FashionScenes a class looks alike in every image, so a per-pixel classifier has little to gain from
# offsets. The `+looks` setting gives each class one colour and stripe texture per scene (and two classes per
# scene): the pair `offseg-mbv2_offset-looks` / `_linear-looks` was trained on it like the pair above (same
# recipe, data and seed in each pair), and is compared here on the `+looks` val scenes.

# %%
looks_offset, looks_linear = nb.load_twins(preset="looks")
looks_images, looks_labels, _ = nb.val_samples(S.n_images, preset="looks")
looks_twin = compare_to_baseline(
    probe(looks_offset.model, looks_images, looks_labels, need={"prediction"}),
    probe(looks_linear.model, looks_images, looks_labels, need={"prediction"}),
    CLASSES,
)
print(looks_twin.summary())
display(plots.plot_twin_comparison(looks_twin, 0, looks_images[0]))

# %% [markdown]
# ## One image

# %%
p = probes[0]
display(plots.plot_twin_comparison(twin, 0, p.image))
display(plots.plot_feature_offset_magnitude(p))
display(plots.plot_position_entropy(p))
plots.plot_class_attention(p, classes=sorted(set(p.label.ravel().tolist()) - {255}), class_names=CLASSES)

# %% [markdown]
# ## Class offsets ‖ΔW‖/‖W‖ over the images

# %%
plots.plot_class_offset_norms(probes, CLASSES, PALETTE)

# %% [markdown]
# ## Ablation: offsets switched off
# The offset model with ΔW = ΔE = 0 against the same model with its offsets (not a trained baseline).

# %%
maps = [correction_map(p) for p in probes]
print(corrections_table(maps, CLASSES))
print("ablation, net pixels turned right by switching the offsets on:", sum(m.net_fixed() for m in maps))
effect = offset_effect(probes)
print(f"offsets switched off: mIoU {100 * effect['mIoU_before']:.1f} %, aAcc {100 * effect['aAcc_before']:.1f} %; "
      f"with them: mIoU {100 * effect['mIoU_after']:.1f} %, aAcc {100 * effect['aAcc_after']:.1f} %")
plots.plot_correction_map(maps[0], probes[0].image, CLASSES)

# %% [markdown]
# ## Explore: pick an image and a class
# (Widgets need a live kernel; a static render shows the default choice.)

# %%
from ipywidgets import Dropdown, interact


def show(image=0, cls=1):
    q = probes[image]
    display(plots.plot_prediction_overlay(q.image, q.prediction, CLASSES, PALETTE, label=q.label))
    display(plots.plot_twin_comparison(twin, image, q.image))
    display(plots.plot_class_attention(q, classes=[cls], class_names=CLASSES, ncols=1))


interact(show, image=Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0),
         cls=Dropdown(options=[(c, k) for k, c in enumerate(CLASSES)], value=1));
