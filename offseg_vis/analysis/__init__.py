"""Look inside a trained model: probe, the twin comparison, misalignment (a class-centred analogue of the
paper's Fig. 3), offsets, embeddings, the offsets-switched-off ablation, plots.

Typical use::

    from offseg_vis.analysis import probe, compare_to_baseline, misalignment_suite, embed_pixels, plots
    probes = probe(model, images, labels)           # one forward pass, per-image numpy arrays
    twin = compare_to_baseline(probes, probe(linear_twin, images, labels))  # what Offset Learning changed
    reports = misalignment_suite(probes, linear_probes, class_names)
    fig = plots.plot_cosine_heatmaps(reports["offset: before (E, W)"])

``plots`` is imported lazily (matplotlib) via ``offseg_vis.analysis.plots``.
"""

from offseg_vis.analysis.compare import TwinComparison, compare_predictions, compare_to_baseline
from offseg_vis.analysis.corrections import CorrectionMap, correction_map, corrections_table, offset_effect
from offseg_vis.analysis.embedding import (
    JointEmbedding,
    embed_pixels,
    fit_joint_umap,
    gather_pixel_features,
    sample_pixels,
)
from offseg_vis.analysis.misalignment import (
    MisalignmentReport,
    ideal_class_embed,
    misalignment,
    misalignment_suite,
    per_class_table,
    summary_table,
)
from offseg_vis.analysis.probe import ImageProbe, label_at_features, probe

__all__ = [
    "CorrectionMap",
    "ImageProbe",
    "JointEmbedding",
    "MisalignmentReport",
    "compare_predictions",
    "compare_to_baseline",
    "correction_map",
    "corrections_table",
    "embed_pixels",
    "fit_joint_umap",
    "gather_pixel_features",
    "ideal_class_embed",
    "label_at_features",
    "misalignment",
    "misalignment_suite",
    "offset_effect",
    "per_class_table",
    "probe",
    "sample_pixels",
    "summary_table",
    "TwinComparison",
]
