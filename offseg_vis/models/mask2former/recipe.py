"""The paper's Mask2Former-OL training recipe (spec §3.2), as overrides of the engine's run config.

A plain nested dict with the engine's keys (``offseg_vis.engine.config.Config``), so this module
imports nothing from the engine. How the official settings map onto ours:

* lr 1e-4 for the head and ×0.1 for the backbone -> base ``lr`` 1e-5 with ``head_lr_mult`` 10;
* weight decay 0.05, but none for norm layers, ``query_embed`` / ``query_feat`` / ``level_embed`` and
  the Swin bias tables;
* gradient clipping at max-norm 0.01; poly decay with power 0.9 to 0 over 160k iterations, no warm-up;
* whole-image testing, batch 2 per GPU (16 on 8 GPUs; the official config's ``batch_size=8`` makes the
  global batch ambiguous, spec §3.2).

Not expressible in the engine's config: mmseg's shortest-edge ``RandomChoiceResize`` over
{256, 307, …, 1024} (max 2048); the closest engine setting, a (2048, 512) base scale with ratio
0.5-2.0, is used instead.
"""

from __future__ import annotations

PAPER_RECIPE: dict = {
    "name": "mask2former-swin-t_ade20k",
    "model": {"name": "mask2former-swin-t", "num_classes": 150, "classifier": "offset"},
    "data": {
        "dataset": "ade20k",
        "crop_size": [512, 512],
        "scale": [2048, 512],
        "ratio_range": [0.5, 2.0],
        "cat_max_ratio": 0.75,
        "batch_size": 2,
    },
    "optim": {
        "lr": 1e-5,
        "head_lr_mult": 10.0,
        "weight_decay": 0.05,
        "eps": 1e-8,
        "betas": [0.9, 0.999],
        "no_decay_keys": ["norm", "query_embed", "query_feat", "level_embed", "relative_position_bias_table"],
        "no_decay_norm_layers": True,
        "grad_clip": 0.01,
    },
    "schedule": {"max_iters": 160000, "warmup_iters": 0, "poly_power": 0.9, "min_lr": 0.0, "eval_interval": 5000},
    "test": {"mode": "whole"},
}
