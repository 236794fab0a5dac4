"""``offseg experiment``: does Offset Learning beat per-pixel classification on FashionScenes?

The paper's claim: a per-pixel classifier fails when one class looks different from image to image,
and learned class / feature offsets fix it. This module tests it with identical budgets:

* an **arm** is a classifier variant at one scene ``style`` (the strength of FashionScenes'
  per-scene appearance shift), written ``variant@style``, e.g. ``offset-co@0.5``, optionally on a
  scene preset, ``variant@style+preset``: ``+looks`` gives every class a per-scene colour and
  texture and repeats classes within a scene (the "lever" group: ``linear`` and ``offset`` at 0.5);
* the **grid**: ``linear`` and ``offset`` at style 0, 0.5 and 1 (main), plus at style 0.5
  ``offset-co`` (class offsets only), ``offset-fo`` (feature offsets only) and
  ``offset-scaled-ln`` (our variant, not the paper's: a learnable logit scale after the
  LayerNorm); ``offset-noln`` (no LayerNorm, also ours) on request;
* a **run** = one arm x one seed, trained with the CPU default config under a fixed
  :class:`Budget` (iterations, batch, scene size, val scenes: the same for every arm) and
  evaluated on val scenes of the arm's style. The seed fixes the training scene stream, the
  data order, the augmentation and the initialisation, so every arm sees the same data per seed
  and differences between arms at one seed are paired;
* every finished run appends one JSON line to a results file; runs already there (same arm, seed
  and budget) are skipped, an interrupted run resumes from its last checkpoint, so the grid can be
  completed over several sittings;
* ``--table`` turns the results file into a Markdown table (mean ± std of val mIoU per arm, paired
  differences vs ``linear`` at the same style and preset, parameters, wall time) and writes
  ``docs/experiment.md``; ``--analyse`` runs the misalignment analysis on finished offset arms'
  checkpoints and writes ``docs/experiment_analysis.md``.

Modules: ``arms`` (variants, scene presets, arms, groups), ``budget`` (what runs share, one
run's config), ``record`` (:class:`RunRecord`, one line of the results file), ``results`` (the
JSON-lines file), ``runner`` (train + evaluate, resumable), ``table`` (the Markdown summary),
``curve`` (Δ against the budget), ``analysis`` (the misalignment analysis of finished runs),
``cli`` (``offseg experiment``).
"""

from offseg_vis.experiment.analysis import (
    DEFAULT_ANALYSIS_DOC,
    DEFAULT_ANALYSIS_IMAGES,
    ArmAnalysis,
    analyse_arm,
    format_analysis,
)
from offseg_vis.experiment.arms import (
    ABLATION_ARMS,
    ABLATION_STYLE,
    ALL_ARMS,
    ARM_GROUPS,
    DEFAULT_GRID,
    LEVER_ARMS,
    MAIN_GRID,
    MAIN_STYLES,
    SCENES,
    VARIANTS,
    Arm,
    Variant,
    format_style,
    parse_arms,
)
from offseg_vis.experiment.budget import (
    DEFAULT_CONFIG,
    DEFAULT_DOC,
    DEFAULT_ITERS,
    DEFAULT_RESULTS,
    DEFAULT_WORK_DIR,
    NON_IDENTITY_PREFIXES,
    RUNNER_KEYS,
    VAL_GENERATOR_SEED,
    Budget,
    generator_options,
    identity_overrides,
    load_base,
    resolve_config_path,
    run_config,
    run_dir_for,
)
from offseg_vis.experiment.cli import (
    experiment_command,
    register,
    register_experiment,
)
from offseg_vis.experiment.record import RunRecord, ValScores
from offseg_vis.experiment.results import (
    append_result,
    done_keys,
    read_results,
    run_key,
)
from offseg_vis.experiment.runner import (
    CLOCK_FILE,
    plan,
    run_grid,
    run_one,
    status,
)
from offseg_vis.experiment.table import (
    ArmSummary,
    BudgetSummary,
    format_ablations,
    format_doc,
    format_reruns,
    format_table,
    grid_command,
    summarise,
)

__all__ = [
    "DEFAULT_ANALYSIS_DOC",
    "DEFAULT_ANALYSIS_IMAGES",
    "ArmAnalysis",
    "analyse_arm",
    "format_analysis",
    "ABLATION_ARMS",
    "ABLATION_STYLE",
    "ALL_ARMS",
    "ARM_GROUPS",
    "DEFAULT_GRID",
    "LEVER_ARMS",
    "MAIN_GRID",
    "MAIN_STYLES",
    "SCENES",
    "VARIANTS",
    "Arm",
    "Variant",
    "format_style",
    "parse_arms",
    "DEFAULT_CONFIG",
    "DEFAULT_DOC",
    "DEFAULT_ITERS",
    "DEFAULT_RESULTS",
    "DEFAULT_WORK_DIR",
    "NON_IDENTITY_PREFIXES",
    "RUNNER_KEYS",
    "VAL_GENERATOR_SEED",
    "Budget",
    "generator_options",
    "identity_overrides",
    "load_base",
    "resolve_config_path",
    "run_config",
    "run_dir_for",
    "RunRecord",
    "ValScores",
    "append_result",
    "done_keys",
    "read_results",
    "run_key",
    "CLOCK_FILE",
    "plan",
    "run_grid",
    "run_one",
    "status",
    "ArmSummary",
    "BudgetSummary",
    "format_doc",
    "format_reruns",
    "format_ablations",
    "format_table",
    "grid_command",
    "summarise",
    "experiment_command",
    "register",
    "register_experiment",
]
