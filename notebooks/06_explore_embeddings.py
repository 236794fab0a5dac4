# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Explore pixel embeddings: linked map ↔ image views
#
# Every point is one pixel of a FashionScenes validation scene. The map places each pixel twice — by
# its feature **E** (before the offsets) and by **E′ = E + ΔE** (after) — in **one** 2-D map fitted on
# both, so switching between them moves each point from where E puts it to where E′ puts it.
#
# * **Lasso** a group of points (shift + drag in the map): the images below show where those pixels are.
# * **E / E′** toggles the coordinates, with an animated transition.
# * **Colour** by ground-truth class, by correct / wrong, or by *fixed / broken* against the per-pixel
#   twin (the same recipe with a linear classifier).
# * **Click** one point: its 20 cosine-nearest pixels of the same image, in E and in E′ separately.
#
# The map is a WebGL scatter (`jupyter-scatter`): 100,000 points and more stay interactive. The
# callbacks are plain functions of `offseg_vis.analysis.explore`, tested without a browser. Fast mode
# (`OFFSEG_FAST=1`) uses few images, few points and PCA.

# %%
# %matplotlib inline
import numpy as np
from IPython.display import Image, display

from offseg_vis.analysis import explore
from offseg_vis.analysis import notebook_support as ns
from offseg_vis.analysis.probe import probe

s = ns.setup()
N_IMAGES, MAX_PIXELS, METHOD = (8, 3000, "pca") if s.fast else (160, 100_000, "umap")
print(f"{'fast' if s.fast else 'full'} mode: {N_IMAGES} validation scenes, up to {MAX_PIXELS:,} pixels, {METHOD}")

# %%
offset, twin = ns.load_twins()
images, labels, names = ns.val_samples(N_IMAGES)
need = {"features", "refined_features", "class_embed", "refined_class_embed"}
probes = probe(offset.model, images, labels, need=need)
twin_probes = probe(twin.model, images, labels, need={"prediction"})

# %% [markdown]
# One row per sampled pixel (stratified by class): where it is, its class, the prediction, and the
# twin's outcome. Then one map for E and E′ together.

# %%
table = explore.pixel_table(probes, MAX_PIXELS, twin_probes=twin_probes, class_names=ns.class_names())
print(table.describe())
pmap = explore.pixel_map(
    probes, table, method=METHOD, cache_dir=ns.cache_dir(), model_key=offset.key, n_epochs=s.umap_epochs
)
print(f"{len(table):,} points; {pmap.describe()}")
frame = explore.scatter_frame(table, pmap, ns.palette())
frame.head()

# %% [markdown]
# ## The linked view
# Lasso points in the map; the strip below shows the scenes that hold most of them. Hover a point for
# its class, image coordinates and whether it is correct.

# %%
import ipywidgets as widgets  # noqa: E402
from jscatter import Scatter  # noqa: E402

_, class_colours = explore.colour_by(table, "class", ns.palette())
scatter = Scatter(
    data=frame, x="ex", y="ey", color_by="by_class", color_map=class_colours, height=480, legend=True,
    tooltip=True, tooltip_properties=["class_name", "predicted_name", "image", "x", "y", "correct", "outcome"],
)  # fmt: skip
space = widgets.ToggleButtons(options=["E", "E'"], description="features")
colour = widgets.Dropdown(options=list(explore.COLOUR_BY), value="class", description="colour by")
panel = widgets.Image(format="png")
status = widgets.HTML(explore.selection_summary(table, []))


def on_selection(selected):
    """Lasso -> the pixels in the images (one point -> its nearest pixels in E and E′)."""
    if len(selected) == 1:
        png, text, _ = explore.neighbours_view(table, probes, int(selected[0]))
    else:
        view = explore.selection_view(table, images, selected)
        png, text = view.png, view.summary
    panel.value, status.value = png, text


def on_space(change):
    xy = ("ex", "ey") if change["new"] == "E" else ("e2x", "e2y")
    scatter.xy(*xy, animate=True)


def on_colour(change):
    _, cmap = explore.colour_by(table, change["new"], ns.palette())
    scatter.color(by=f"by_{change['new']}", map=cmap)


scatter.widget.observe(lambda change: on_selection(change["new"] if change["new"] is not None else []), "selection")
space.observe(on_space, "value")
colour.observe(on_colour, "value")
widgets.VBox([widgets.HBox([space, colour]), scatter.show(), status, panel])

# %% [markdown]
# ## The same callbacks without a mouse
# A lasso around the middle of the *trouser* pixels in E′, then the same callback the widget runs. This
# cell also leaves a static picture for readers of the executed notebook.

# %%
trouser = ns.class_names().index("trouser")
lasso = explore.lasso_box(pmap.coords("E'"), table.label == trouser, spread=0.5)
selected = explore.points_in_polygon(pmap.coords("E'"), lasso)
scatter.selection(selected)  # the widget shows it too
on_selection(selected)
print(status.value)
display(Image(panel.value))
explore.snapshot_figure(table, pmap, selected, by="twin")

# %% [markdown]
# One trouser pixel and its 20 most similar pixels of the same scene, searched in E (left) and in E′
# (right): the offsets change who a pixel's neighbours are.

# %%
one = int(np.flatnonzero(table.label == trouser)[0])
png, text, found = explore.neighbours_view(table, probes, one)
print(text)
display(Image(png))
