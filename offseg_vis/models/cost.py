"""Parameters and GMACs (FlopCounterMode FLOPs / 2) of the zoo's models, beside the paper's numbers.

Why our Offset-Learning MACs exceed the paper's: the paper's counter (mmengine's, hook-based)
does not see the functional matmuls of Offset Learning; FlopCounterMode counts every matmul.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from offseg_vis.models.registry import build_model, list_models, model_entry


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: torch.nn.Module, size: int = 512) -> float:
    """Multiply-accumulates (×1e9) of one eval forward at size×size, batch 1."""
    model.eval()
    x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2e9


def measure_zoo(names: list[str] | None = None, size: int = 512, num_classes: int = 150) -> list[dict]:
    """One row per (model, classifier): measured params/GMACs and the paper's where printed."""
    rows = []
    for name in names or list_models(cost_table=True):
        spec = model_entry(name)
        for classifier in ("linear", "offset"):
            model = build_model(name, num_classes=num_classes, classifier=classifier)
            rows.append(
                {
                    "model": name,
                    "classifier": classifier,
                    "params_m": count_parameters(model) / 1e6,
                    "gmacs": count_gmacs(model, size),
                    "paper_params_m": spec.paper_params_m.get(classifier) if spec else None,
                    "paper_gmacs": spec.paper_gmacs.get(classifier) if spec else None,
                }
            )
    return rows


def format_markdown(rows: list[dict], size: int = 512) -> str:
    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    lines = [
        f"| model | classifier | params (M) | paper params (M) | GMACs @{size}² | paper GFLOPs @512² |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['classifier']} | {r['params_m']:.2f} | {num(r['paper_params_m'], '.1f')} "
            f"| {r['gmacs']:.2f} | {num(r['paper_gmacs'], '.1f')} |"
        )
    return "\n".join(lines)
