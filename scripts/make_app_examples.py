"""Write the app's example gallery: a few FashionScenes val scenes (and their masks) as small PNGs.

Scenes are chosen greedily among the first ``--pool`` val scenes so that together they show every class,
then by how many classes each adds. ``--preset`` draws them from an experiment scene preset (e.g.
``looks``: per-scene class colours and two classes per scene, the setting of the shipped
``offseg-mbv2_*-looks`` checkpoints); the file names then start with the preset. Output:
``offseg_vis/app/examples/[PRESET_]val_NNNNNN.png`` and ``...mask.png`` (class ids as 8-bit gray). Only
that preset's previous files are replaced. Deterministic: the same files on every machine.

    python scripts/make_app_examples.py [--count 8] [--pool 60]
    python scripts/make_app_examples.py --preset looks --count 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from offseg_vis.app.examples import EXAMPLES_DIR, example_images, mask_path
from offseg_vis.data.fashion_scenes import CLASSES, SCENE_PRESETS, FashionScenesConfig, generate_scene


def choose_scenes(
    pool: int, count: int, config: FashionScenesConfig
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Greedy cover of the item classes over val scenes 0..pool-1 -> [(index, image, mask)]."""
    scenes = [(i, *generate_scene("val", i, config)) for i in range(pool)]
    chosen, seen = [], set()
    while len(chosen) < count:
        best = max(
            (s for s in scenes if s[0] not in {c[0] for c in chosen}),
            key=lambda s: (len(set(np.unique(s[2]).tolist()) - seen), len(np.unique(s[2])), -s[0]),
        )
        chosen.append(best)
        seen |= set(np.unique(best[2]).tolist())
    return sorted(chosen, key=lambda s: s[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="number of scenes (default 8)")
    parser.add_argument("--pool", type=int, default=60, help="choose among the first N val scenes")
    parser.add_argument(
        "--preset", default="", choices=sorted(SCENE_PRESETS), help="scene preset (default: plain FashionScenes)"
    )
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    args = parser.parse_args()
    config = FashionScenesConfig(**SCENE_PRESETS[args.preset])
    stem = f"{args.preset}_val_" if args.preset else "val_"
    args.out.mkdir(parents=True, exist_ok=True)
    for old in example_images(args.out):  # replace this preset's previous gallery, keep the others
        if old.name.startswith(stem):
            old.unlink()
            mask_path(old).unlink(missing_ok=True)
    covered = set()
    for index, image, mask in choose_scenes(args.pool, args.count, config):
        name = args.out / f"{stem}{index:06d}.png"
        Image.fromarray(image).save(name, optimize=True)
        Image.fromarray(mask.astype(np.uint8)).save(mask_path(name), optimize=True)
        covered |= set(np.unique(mask).tolist())
        print(f"{name.name}: {', '.join(CLASSES[c] for c in np.unique(mask))}")
    missing = [CLASSES[c] for c in range(len(CLASSES)) if c not in covered]
    shown = ", ".join(missing) or "none"
    preset = f"preset {args.preset or 'plain'}: {SCENE_PRESETS[args.preset]}"
    print(f"{args.count} scenes ({preset}); classes not shown: {shown}")


if __name__ == "__main__":
    main()
