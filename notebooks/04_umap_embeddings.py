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
# # 04 · Pixel features before and after refinement, in one UMAP
#
# Pixels are sampled per class (stratified, ignore dropped, seeded). **One** UMAP is fitted on the features
# before (E) and after (E') the offsets together, so both live in the same map; the class embeddings W
# (stars) and each image's W' (diamonds) are placed with the same map; arrows show where the offsets move a
# subset of pixels. Rows are L2-normalised first (Offset Learning's LayerNorm over classes removes a
# pixel's feature scale, so direction is what classifies). Maps are cached in `.cache/analysis/`. Run it as is for the full version; with the environment variable `OFFSEG_FAST=1` (what `make test` does) it uses fewer images, points and steps.
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
from offseg_vis.analysis import embed_pixels, probe

offset, linear = nb.load_twins()
images, labels, names = nb.val_samples(S.n_images)
data_key = f"fashion-scenes-val[:{S.n_images}]"
offset_probes = probe(offset.model, images, labels)
linear_probes = probe(linear.model, images, labels)

# %%
emb = embed_pixels(offset_probes, max_points=S.max_points, n_epochs=S.umap_epochs, cache_dir=nb.cache_dir(),
                   model_key=offset.key, data_key=data_key)
print(f"{len(emb.classes)} pixels, {emb.params['points']} points; fit {emb.fit_seconds:.1f} s "
      f"(from cache: {emb.from_cache})")
plots.plot_joint_embedding(emb, CLASSES, PALETTE)

# %% [markdown]
# ## The per-pixel baseline's features (one map, no offsets)

# %%
emb_linear = embed_pixels(linear_probes, max_points=S.max_points // 2, n_epochs=S.umap_epochs,
                          cache_dir=nb.cache_dir(), model_key=linear.key, data_key=data_key)
plots.plot_joint_embedding(emb_linear, CLASSES, PALETTE)

# %% [markdown]
# ## Explore: choose classes and images
# (Widgets need a live kernel; a static render shows the default choice.)

# %%
from ipywidgets import SelectMultiple, interact


def show(classes=(1, 2, 3), images=tuple(range(len(names)))):
    display(plots.plot_joint_embedding(emb, CLASSES, PALETTE, classes=list(classes), images=list(images),
                                       point_size=4))


interact(show,
         classes=SelectMultiple(options=[(c, k) for k, c in enumerate(CLASSES)], value=(1, 2, 3)),
         images=SelectMultiple(options=[(n, i) for i, n in enumerate(names)], value=tuple(range(len(names)))));

# %% [markdown]
# ## Fast fallback
# `method="pca"` gives a linear 2-D map in well under a second (what the app uses when it must answer quickly).

# %%
emb_pca = embed_pixels(offset_probes, max_points=S.max_points, method="pca")
plots.plot_joint_embedding(emb_pca, CLASSES, PALETTE)
