"""Make the vendored, reduced EfficientFormerV2-S1 backbone vector from the full official one.

Usage: python tests/reference/reduce_s1_vector.py FULL.safetensors OUT.safetensors

What is kept (tests/reference/README.md lists it too), 5.8 MiB:
  * the weights (``state.*``) of the stem, stages 1 and 2 and both their transitions (``patch_embed``,
    ``network.0`` to ``network.3``), of the first stage-3 attention token mixer
    (``network.4.7.token_mixer``, Attention4D with stride 2), of the stage-3 -> 4 transition with its
    attention branch (``network.5``, Attention4DDownsample) and of the first stage-4 attention token
    mixer (``network.6.4.token_mixer``, Attention4D). Floating weights stay float16 exactly as stored;
    integer index buffers are narrowed from int64 to int16 (lossless: every index is below 1024);
  * the 224x288 input, its stage-1 and stage-2 outputs (feat0, feat1) and every recorded
    intermediate for it (the in/out of the three attention modules and the output of ``network.5``).
What is cut: the 256x256 input and its tensors; feat2 and feat3; the weights of the stage-3 FFN blocks
(``network.4.0`` to ``network.4.6``), of the rest of blocks 4.7 and 4.8 and of stage 4 apart from the
one token mixer. So each kind of block is checked (stem, FFN, both Embedding kinds, all three attention
kinds), but stages 3 and 4 not end to end.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file, save_file

KEEP_STATE = ("patch_embed.", "network.0.", "network.1.", "network.2.", "network.3.", "network.4.7.token_mixer.",
              "network.5.", "network.6.4.token_mixer.")  # fmt: skip
TAG = "224x288"


def reduce(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full vector tensors -> the reduced set described in the module docstring."""
    out = {}
    for key, value in full.items():
        if key.startswith("state."):
            if not key.removeprefix("state.").startswith(KEEP_STATE):
                continue
            if not value.is_floating_point():
                if int(value.abs().max()) >= 2**15:
                    raise ValueError(f"{key} does not fit int16")
                value = value.to(torch.int16)
            out[key] = value
        elif key == f"input.x_{TAG}" or key.startswith(f"intermediate.{TAG}."):
            out[key] = value
        elif key in (f"output.{TAG}.feat0", f"output.{TAG}.feat1"):
            out[key] = value
    return out


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    save_file(reduce(load_file(src)), dst, metadata={"reduced_from": "efficientformerv2_s1_backbone.safetensors"})
