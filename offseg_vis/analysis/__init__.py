"""Look inside a trained model: probe, misalignment (paper Fig. 3), offsets, embeddings, corrections, plots.

Typical use::

    from offseg_vis.analysis import probe, misalignment_suite, correction_map, embed_pixels, plots
    probes = probe(model, images, labels)           # one forward pass, per-image numpy arrays
    reports = misalignment_suite(probes, linear_probes, class_names)
    fig = plots.plot_cosine_heatmaps(reports["offset: before (E, W)"])

``plots`` is imported lazily (matplotlib) via ``offseg_vis.analysis.plots``.
"""

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
]
