"""Write the README's "What the workbench shows" figures and numbers under docs/figures/.

    python scripts/make_figures.py [--n-images 60] [--max-points 20000] [--out docs/figures] [--fast]

Uses the shipped checkpoints ``checkpoints/offseg-mbv2_{offset,linear}.safetensors`` (and the ``-looks`` pair
for the +looks twin figure); without them a small model is trained first (see
``offseg_vis.analysis.notebook_support.load_or_train``) and the summary says so.
Writes ``twin_comparison.png`` and ``twin_comparison_looks.png`` (Offset Learning vs its per-pixel twin on plain
and on +looks scenes: the primary view),
``misalignment_fig3.png``, ``misalignment_summary.png``, ``correction_map.png`` (the ablation with the
offsets switched off), ``umap_before_after.png`` and ``summary.md`` (the measured numbers, ready to quote).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from offseg_vis.analysis import (
    compare_to_baseline,
    correction_map,
    corrections_table,
    embed_pixels,
    misalignment_suite,
    offset_effect,
    per_class_table,
    plots,
    probe,
    summary_table,
)
from offseg_vis.analysis import notebook_support as nb


def _twin_figure(twin, images):
    """The twin comparison on the image where the two classifiers disagree most against the ground truth."""
    changed = [t["fixed"] + t["broken"] for t in (twin.image_totals(i) for i in range(len(images)))]
    pick = int(np.argmax(changed))
    return plots.plot_twin_comparison(twin, pick, images[pick])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=60, help="FashionScenes val images analysed")
    parser.add_argument("--max-points", type=int, default=20_000, help="points of the joint UMAP")
    parser.add_argument("--out", type=Path, default=nb.repo_root() / "docs" / "figures")
    parser.add_argument("--fast", action="store_true", help="tiny sizes (a smoke test of the script)")
    parser.add_argument("--dpi", type=int, default=110)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on shared cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fast:
        args.n_images, args.max_points = 8, 2000
    args.out.mkdir(parents=True, exist_ok=True)
    names, colours = nb.class_names(), nb.palette()

    start = time.perf_counter()
    offset, linear = nb.load_or_train("offset", fast=args.fast), nb.load_or_train("linear", fast=args.fast)
    images, labels, _ = nb.val_samples(args.n_images)
    offset_probes = probe(offset.model, images, labels)
    linear_probes = probe(linear.model, images, labels)

    twin = compare_to_baseline(offset_probes, linear_probes, names)
    reports = misalignment_suite(offset_probes, linear_probes, names)
    save = {"twin_comparison.png": _twin_figure(twin, images)}
    looks_offset = nb.load_or_train("offset", fast=args.fast, preset="looks")
    looks_linear = nb.load_or_train("linear", fast=args.fast, preset="looks")
    looks_images, looks_labels, _ = nb.val_samples(args.n_images, preset="looks")
    looks_twin = compare_to_baseline(
        probe(looks_offset.model, looks_images, looks_labels, need={"prediction"}),
        probe(looks_linear.model, looks_images, looks_labels, need={"prediction"}),
        names,
    )
    save["twin_comparison_looks.png"] = _twin_figure(looks_twin, looks_images)
    save["misalignment_fig3.png"] = plots.plot_cosine_heatmap_comparison(reports)
    save["misalignment_summary.png"] = plots.plot_misalignment_summary(reports)

    maps = [correction_map(p) for p in offset_probes]
    # Show the image where the offsets changed the most pixels.
    best = int(np.argmax([m.changed_fraction() for m in maps]))
    save["correction_map.png"] = plots.plot_correction_map(maps[best], offset_probes[best].image, names)

    emb = embed_pixels(offset_probes, max_points=args.max_points, cache_dir=nb.cache_dir(), model_key=offset.key,
                       data_key=f"fashion-scenes-val[:{args.n_images}]")
    save["umap_before_after.png"] = plots.plot_joint_embedding(emb, names, colours)

    for name, fig in save.items():
        fig.savefig(args.out / name, dpi=args.dpi)
    fixed = sum(m.net_fixed() for m in maps)
    effect = offset_effect(offset_probes)
    summary = [
        "# Measured by scripts/make_figures.py",
        "",
        f"- offset model: {offset.source} ({offset.checkpoint.name}, sha256 {offset.key})",
        f"- linear model: {linear.source} ({linear.checkpoint.name}, sha256 {linear.key})",
        f"- data: the first {args.n_images} FashionScenes val scenes; UMAP on {emb.params['points']} points",
        "",
        "## Misalignment (W* = M·(Eᵀ)⁺ per image)",
        "",
        "At rcond 1e-5 only. No ordering of two models holds across the regulariser sweep "
        "(`offseg analyse sweep`, docs/misalignment_sweep.md); do not read one into these numbers.",
        "",
        "```",
        summary_table(reports),
        "```",
        "",
        "Per class, consistency of W* across images:",
        "",
        "```",
        per_class_table(reports, "consistency"),
        "```",
        "",
        "Per class, alignment cos(W, W*):",
        "",
        "```",
        per_class_table(reports, "alignment"),
        "```",
        "",
        f"## Offset Learning vs its per-pixel twin ({len(offset_probes)} images)",
        "",
        "```",
        twin.summary(),
        "",
        twin.table(),
        "```",
        "",
        f"## The +looks pair against its twin (the first {args.n_images} +looks val scenes)",
        "",
        f"- offset model: {looks_offset.source} ({looks_offset.checkpoint.name}, sha256 {looks_offset.key})",
        f"- linear model: {looks_linear.source} ({looks_linear.checkpoint.name}, sha256 {looks_linear.key})",
        "",
        "```",
        looks_twin.summary(),
        "",
        looks_twin.table(),
        "```",
        "",
        f"## Ablation: offsets switched off (offset model, {len(maps)} images; net changed to right = {fixed})",
        "",
        f"Without its offsets (argmax of norm(E·Wᵀ)) the offset model scores mIoU "
        f"{100 * effect['mIoU_before']:.1f} % / aAcc {100 * effect['aAcc_before']:.1f} %; with them "
        f"{100 * effect['mIoU_after']:.1f} % / {100 * effect['aAcc_after']:.1f} % on these images.",
        "",
        "```",
        corrections_table(maps, names),
        "```",
        "",
        f"_Generated in {time.perf_counter() - start:.0f} s._",
    ]
    (args.out / "summary.md").write_text("\n".join(summary) + "\n", encoding="utf-8")
    print("\n".join(summary))
    for name in [*save, "summary.md"]:
        print("wrote", args.out / name)


if __name__ == "__main__":
    main()
