"""The experiment runner: arms, budgets, the results file (append, skip, resume) and the table."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from offseg_vis import experiment as ex
from offseg_vis.cli import main
from offseg_vis.errors import ConfigError
from offseg_vis.experiment.curve import budget_changes, budget_curve, format_curve

# A tiny but real budget: 3 steps of batch 2 on 32 px scenes, 8 val scenes (built in a tmp folder).
TINY = dict(iters=3, batch_size=2, size=32, val_scenes=8, train_scenes=8)
TINY_OVERRIDES = [
    "model.backbone_pretrained=false",  # no dependence on the bundled ImageNet weights
    "data.num_workers=0",
    "data.photometric=false",
    "schedule.checkpoint_interval=2",  # a checkpoint at step 2, where the resume test interrupts
    "runtime.progress=false",
    "runtime.num_threads=1",  # tiny ops: a second thread only waits on the busy cores
    "test.batch_size=8",
]


@pytest.fixture(scope="module")
def fmnist():
    from offseg_vis.data.fashion_mnist import find_fashion_mnist
    from offseg_vis.errors import DatasetError

    try:
        return find_fashion_mnist()
    except DatasetError as err:
        pytest.skip(str(err))


def lines(path):
    return path.read_text().splitlines()


# ----------------------------------------------------------------------------------------------
# arms, budget, per-run config


def test_scene_presets_name_arms_folders_and_baselines():
    lever = ex.parse_arms(["lever"])
    assert [a.id for a in lever] == ["linear@0.5+looks", "offset@0.5+looks"]
    assert [a.slug for a in lever] == ["linear_style0.5+looks", "offset_style0.5+looks"]
    arm = ex.parse_arms(["offset-fo@1+looks"])[0]
    assert (arm.variant, arm.style, arm.scene) == ("offset-fo", 1.0, "looks")
    assert arm.baseline.id == "linear@1+looks"
    assert arm.scene_options == {"class_style": 1.0, "classes_per_scene": 2}
    assert ex.parse_arms(["offset@1"])[0].baseline.id == "linear@1"
    with pytest.raises(ConfigError, match=r"unknown scene preset 'shiny'.*\+looks"):
        ex.parse_arms(["offset@0.5+shiny"])


def test_arm_parsing_groups_variants_and_styles():
    assert [a.id for a in ex.parse_arms(None)] == [
        "linear@0", "offset@0", "linear@0.5", "offset@0.5", "linear@1", "offset@1",
        "offset-co@0.5", "offset-fo@0.5", "offset-scaled-ln@0.5",
    ]  # fmt: skip
    assert len(ex.parse_arms(["main"])) == 6
    assert [a.id for a in ex.parse_arms(["linear"])] == [
        "linear@0", "linear@0.5", "linear@1", "linear@0.5+looks", "linear@0.5+class-looks", "linear@0.5+cooccur",
    ]  # fmt: skip
    presets = {a.scene: a.scene_options for a in ex.parse_arms(["presets"])}
    assert presets == {
        "looks": {"class_style": 1.0, "classes_per_scene": 2},
        "class-looks": {"class_style": 1.0, "classes_per_scene": 0},
        "cooccur": {"class_style": 0.0, "classes_per_scene": 2},
    }
    assert [a.id for a in ex.parse_arms(["offset-noln", "offset@1.0", "offset@1"])] == [
        "offset-noln@0.5",
        "offset@1",
    ]
    assert ex.parse_arms(["offset-co@0.25"])[0].style == 0.25
    with pytest.raises(ConfigError, match="Unknown experiment arm 'offst'"):
        ex.parse_arms(["offst"])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        ex.parse_arms(["offset@2"])
    # our variants are labelled as not the paper's; the paper's ablations spell out their options
    assert not ex.VARIANTS["offset-scaled-ln"].paper and "not the paper's" in ex.VARIANTS["offset-scaled-ln"].label
    assert ex.VARIANTS["offset-co"].options == {
        "class_offsets": True, "feature_offsets": False, "logit_norm": "layernorm",
    }  # fmt: skip


def test_budget_and_run_config(tmp_path):
    base, budget = ex.load_base(None, ["optim.lr=2e-3", "runtime.num_threads=1"], iters=50)
    # defaults come from the CPU config; only computation-changing overrides enter the budget
    assert (budget.batch_size, budget.size, budget.val_scenes, budget.warmup_iters) == (
        base.data.batch_size,
        base.data.crop_size[0],
        base.data.val_options.get("length", 1000),
        5,
    )
    assert budget.overrides == ("optim.lr=2e-3",)
    assert ex.load_base(None, ["optim.lr=2e-3", "runtime.num_threads=2"], iters=50)[1].key() == budget.key()
    assert ex.load_base(None, ["optim.lr=3e-3"], iters=50)[1].key() != budget.key()
    with pytest.raises(ConfigError, match="--seeds"):
        ex.load_base(None, ["runtime.seed=3"])

    cfg = ex.run_config(base, ex.Arm("offset-fo", 1.0), 2, budget)
    assert cfg.model.classifier == "offset"
    assert cfg.model.classifier_options["class_offsets"] is False
    assert cfg.runtime.seed == 2 and cfg.schedule.max_iters == 50 and cfg.schedule.eval_interval == 0
    train_gen, val_gen = cfg.data.train_options["config"], cfg.data.val_options["config"]
    assert train_gen["style"] == val_gen["style"] == 1.0
    assert (train_gen["seed"], val_gen["seed"]) == (2, ex.VAL_GENERATOR_SEED)  # train stream per seed
    assert cfg.data.val_options["length"] == budget.val_scenes
    # every arm at a seed sees the same data: only the model section differs
    other = ex.run_config(base, ex.Arm("linear", 1.0), 2, budget)
    assert other.data == cfg.data and other.model.classifier_options == {}
    assert (
        ex.run_dir_for("w", ex.Arm("offset-fo", 1.0), 2, budget).as_posix()
        == f"w/offset-fo_style1/seed2-{budget.key()}"
    )


# ----------------------------------------------------------------------------------------------
# running: append, skip, resume


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory, fmnist):
    """One uninterrupted tiny grid (linear and offset at style 0.5, seed 0), shared by the runner tests."""
    root = tmp_path_factory.mktemp("experiment")
    base, budget = ex.load_base(None, [*TINY_OVERRIDES, f"data.root={root / 'data'}"], **TINY)
    results = root / "results.jsonl"
    arms = ex.parse_arms(["linear@0.5", "offset@0.5"])
    written = ex.run_grid(base, budget, arms, [0], results, root / "runs", log=lambda s: None)
    return base, budget, arms, results, root, written


def test_runner_appends_records_and_skips_finished_runs(finished_grid):
    base, budget, arms, results, root, written = finished_grid
    assert [r.arm for r in written] == ["linear@0.5", "offset@0.5"]
    # the file holds each record's to_dict, and reads back to equal records
    assert [json.loads(line) for line in lines(results)] == [r.to_dict() for r in written]
    records = ex.read_results(results)
    assert records == written
    lin, off = records
    assert lin.budget == off.budget == budget and lin.seed == off.seed == 0
    assert off.classifier_options == ex.VARIANTS["offset"].options and off.style == 0.5
    assert (lin.scene, lin.scene_options) == ("", {})
    assert lin.classifier == "linear" and lin.classifier_options == {}
    assert lin.steps == off.steps == 3 and lin.val.scenes == 8
    assert 0.0 <= lin.val.mIoU <= 1.0 and 0.0 <= off.val.aAcc <= 1.0
    assert len(lin.val.per_class_IoU) == 11 and "background" in lin.val.per_class_IoU
    # same decoder (C = 128); OL's K*C + 2*C^2 + 2K parameters replace the 1x1 conv's K*C + K
    assert off.params - lin.params == 2 * 128 * 128 + 11
    assert lin.wall_time_s > 0 and lin.resumed is False and lin.machine["threads"] == 1
    assert lin.git_commit and not lin.run_dir.startswith("/")
    # finished runs keep only their best weights (no optimiser state)
    run_dir = root / "runs" / lin.run_dir
    assert (run_dir / "best.safetensors").is_file() and not (run_dir / "last.state.pt").exists()

    before = results.read_bytes()
    again = ex.run_grid(base, budget, arms, [0], results, root / "runs", log=lambda s: None)
    assert again == [] and results.read_bytes() == before
    rows = ex.status(budget, arms + ex.parse_arms(["offset-co@0.5"]), [0], results, root / "runs")
    assert [state for _, _, state in rows] == ["done", "done", "pending"]


def test_interrupted_grid_resumes_and_matches_an_uninterrupted_run(finished_grid, tmp_path):
    base, budget, arms, finished, _, (lin, off) = finished_grid
    results, work = tmp_path / "results.jsonl", tmp_path / "runs"
    ex.append_result(results, lin)  # an earlier sitting finished the linear arm

    def interrupt(step, model, **_):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.run_grid(base, budget, arms, [0], results, work, callbacks=[interrupt], log=lambda s: None)
    assert [json.loads(line)["arm"] for line in lines(results)] == ["linear@0.5"]  # only complete runs
    assert [s for _, _, s in ex.status(budget, arms, [0], results, work)] == ["done", "partial (step 2)"]

    resumed = ex.run_grid(base, budget, arms, [0], results, work, log=lambda s: None)
    assert [r.arm for r in resumed] == ["offset@0.5"] and resumed[0].resumed is True
    assert resumed[0].steps == 3 and len(lines(results)) == 2
    # the resumed run computes what the uninterrupted one did
    assert resumed[0].val == off.val
    assert resumed[0].train_loss_final == pytest.approx(off.train_loss_final, rel=1e-6)


def test_analysis_of_a_finished_pair_reads_its_checkpoints(finished_grid):
    from offseg_vis.analysis import compare_to_baseline, probe
    from offseg_vis.engine.checkpoint import load_model
    from offseg_vis.engine.run import datasets_for

    base, budget, arms, _, root, _ = finished_grid
    analysis = ex.analyse_arm(base, budget, arms[1], 0, root / "runs", n_images=4)
    assert (analysis.arm, analysis.baseline, analysis.seed, analysis.images) == ("offset@0.5", "linear@0.5", 0, 4)
    assert analysis.sweep.models == ["offset: before (E, W)", "offset: after (E', W')", "linear (E, W)"]
    assert len(analysis.sweep.settings) == 12  # 5 cut-offs, 6 ridge values, class means
    # The twin counts are compare_to_baseline on both runs' own weights and val scenes, probed here directly.
    val_raw = datasets_for(ex.run_config(base, arms[1], 0, budget), "val").dataset
    scenes = [val_raw[i] for i in range(4)]
    images, labels = [s[0] for s in scenes], [s[1] for s in scenes]
    probes = []
    for arm in arms[1], arms[0]:
        model, _ = load_model(ex.run_dir_for(root / "runs", arm, 0, budget) / "best.safetensors")
        probes.append(probe(model, images, labels, need={"prediction"}))
    assert analysis.twin == compare_to_baseline(*probes).totals()
    # every labelled pixel of the 4 scenes (32 x 32) falls in exactly one category of each comparison
    labelled = sum(int((lab != 255).sum()) for lab in labels)
    assert sum(analysis.twin.values()) == labelled and sum(analysis.ablation.values()) == labelled
    doc = ex.format_analysis([analysis], budget, "offseg experiment --analyse")
    assert "| `offset@0.5` | 0 | 4 |" in doc and "## `offset@0.5` vs `linear@0.5`, seed 0" in doc
    with pytest.raises(ConfigError, match="per-pixel"):
        ex.analyse_arm(base, budget, arms[0], 0, root / "runs", n_images=4)
    with pytest.raises(ConfigError, match=r"No weights of offset@0.5 seed 1.*--arms offset@0.5 --seeds 1"):
        ex.analyse_arm(base, budget, arms[1], 1, root / "runs", n_images=4)


def test_analysis_known_values_on_a_tiny_synthetic_pair():
    from offseg_vis.analysis.misalignment import stable_orderings
    from offseg_vis.analysis.synthetic import make_probe
    from offseg_vis.experiment.analysis import summarise_pair

    label = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    ol_pred = np.array([[0, 0, 1, 2], [2, 0, 1, 1]])
    twin_pred = np.array([[0, 1, 1, 1], [0, 0, 2, 1]])
    off_pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0]])  # the offset model with ΔW = ΔE = 0
    feats = np.random.default_rng(0).normal(size=(2, 4, 3))
    ol = make_probe(
        feats, np.eye(3), label, class_offset=np.zeros((3, 3)), prediction=ol_pred, prediction_before_offsets=off_pred
    )
    twin = make_probe(feats, np.eye(3), label, prediction=twin_pred)
    a = summarise_pair("offset@x", "linear@x", 3, [ol], [twin], ["a", "b", "c"], min_pixels=1)
    # by hand, pixel by pixel (label, OL, twin): (0,0,0) right, (0,0,1) fixed, (1,1,1) right, (1,2,1) broken,
    # (2,2,0) fixed, (2,0,0) both wrong, ignored, (0,1,1) both wrong
    assert a.twin == {"fixed": 2, "broken": 1, "both_wrong": 2, "both_right": 2}
    assert a.twin_net_fixed == 1 and a.twin_accuracy == (4 / 7, 3 / 7)
    # ablation (offsets off -> on): px 1 and 4 turn right, px 3 and 7 turn wrong, 3 unchanged
    assert a.ablation == {"fixed": 2, "broken": 2, "changed, still wrong": 0, "unchanged": 3}
    # IoU without offsets: a 2/5, b 2/3, c 0; with: a 2/4, b 1/3, c 1/3
    assert a.effect["mIoU_before"] == pytest.approx((2 / 5 + 2 / 3 + 0) / 3)
    assert a.effect["mIoU_after"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3) / 3)
    row = a.summary_row()
    assert row["twin_fixed"] == 2 and row["ablation_mIoU_after"] == pytest.approx(7 / 18)
    budget = ex.Budget(**TINY, warmup_iters=1, config="tiny")
    doc = ex.format_analysis([a], budget, "offseg experiment --analyse")
    assert "| 2 / 1 (+1) | 57.14 / 42.86 | 35.6 → 38.9 | 2 / 2 |" in doc
    assert "ablation, offsets switched off" in doc and "vs per-pixel twin" in doc
    assert a.sweep.markdown() in doc and "W* orderings that hold at every setting" in doc
    # the row lists exactly the orderings that hold at all settings (or says none does)
    stable = [c.statement for m in ("consistency", "alignment") for c in stable_orderings(a.sweep, m) if c.holds]
    assert a.stable_orderings() == stable and (("<br>".join(stable) or "none: every ordering") in doc)


# ----------------------------------------------------------------------------------------------
# results file and table


TABLE_BUDGET = ex.Budget(
    iters=10, batch_size=2, size=32, val_scenes=8, train_scenes=8, warmup_iters=1, config="offseg-mbv2_fashion-scenes"
)


def record(arm, seed, miou, budget=TABLE_BUDGET, params=1000, wall=60.0, loss=0.2) -> ex.RunRecord:
    """A finished run as the table sees it (the fields the table does not read hold plain values)."""
    a = ex.parse_arms([arm])[0]
    return ex.RunRecord(
        arm=arm,
        variant=a.variant,
        style=a.style,
        scene=a.scene,
        scene_options=a.scene_options,
        seed=seed,
        classifier=a.spec.classifier,
        classifier_options=dict(a.spec.options),
        paper=a.spec.paper,
        model="offseg-mbv2",
        budget=budget,
        budget_key=budget.key(),
        steps=budget.iters,
        val=ex.ValScores(scenes=8, mIoU=miou, aAcc=0.9, mAcc=0.5, per_class_IoU={"background": 0.9}),
        train_loss_final=loss,
        logit_scale=None,
        params=params,
        wall_time_s=wall,
        resumed=False,
        machine={"cpu": "Test CPU", "threads": 2, "torch": "2.x"},
        git_commit="abcdef1234567",
        generator_version="2.1",
        run_dir=f"{a.slug}/seed{seed}-{budget.key()}",
        finished="2026-01-01T00:00:00+0000",
    )


def test_shipped_results_round_trip_through_run_records():
    """Every line of the shipped results file reads into a RunRecord and writes back as the same JSON
    (same keys, same order, same values), old lines without scene presets included."""
    path = Path(__file__).resolve().parents[1] / "docs" / "experiment" / "results.jsonl"
    text = path.read_text(encoding="utf-8").splitlines()
    assert text, f"{path} is empty"
    for number, line in enumerate(text, 1):
        row = json.loads(line)
        again = ex.RunRecord.from_dict(row).to_dict()
        assert again == row, number
        assert json.dumps(again) == json.dumps(row), number  # key order too: the file is rewritten as is
    old = [json.loads(line) for line in text if "scene" not in json.loads(line)]
    assert old and ex.RunRecord.from_dict(old[0]).scene is None  # older than presets: stays without
    with pytest.raises(TypeError, match="unknown run record keys"):
        ex.RunRecord.from_dict({**json.loads(text[0]), "mIoU": 0.5})


def test_append_is_whole_lines_and_the_reader_skips_damage(tmp_path):
    path = tmp_path / "r.jsonl"
    ex.append_result(path, record("linear@0.5", 0, 0.5))
    path.write_text(path.read_text() + '{"arm": "linear@0.5", "se')  # a damaged, unterminated line
    ex.append_result(path, record("linear@0.5", 1, float("nan")))
    path.write_text(path.read_text() + json.dumps({**record("linear@0.5", 2, 0.5).to_dict(), "extra": 1}) + "\n")
    assert len(lines(path)) == 4 and lines(path)[2].startswith("{")
    with pytest.warns(UserWarning, match=r"r.jsonl:[24] is not an experiment record") as warned:
        records = ex.read_results(path)
    # line 2 is damaged, line 4 has a key no run record has
    assert sorted(str(w.message).split(" is not")[0][-1] for w in warned) == ["2", "4"]
    assert [r.seed for r in records] == [0, 1]
    assert records[1].val.mIoU is None  # NaN is written as null (strict JSON)


def test_table_pairs_scene_preset_arms_with_their_own_baseline(tmp_path):
    path = tmp_path / "r.jsonl"
    for r in (
        record("linear@0.5", 0, 0.50),
        record("offset@0.5", 0, 0.51),
        record("linear@0.5+looks", 0, 0.30),
        record("offset@0.5+looks", 0, 0.36),
        record("linear@0.5+looks", 1, 0.32),
        record("offset@0.5+looks", 1, 0.35),
    ):
        ex.append_result(path, r)
    (summary,) = ex.summarise(ex.read_results(path))
    rows = {r.arm: r for r in summary.rows}
    assert [r.arm for r in summary.rows] == ["linear@0.5", "offset@0.5", "linear@0.5+looks", "offset@0.5+looks"]
    assert rows["offset@0.5"].delta_mean == pytest.approx(0.01)
    assert rows["offset@0.5+looks"].delta_mean == pytest.approx(0.045)  # (0.06 + 0.03) / 2, vs +looks linear
    assert rows["offset@0.5+looks"].n_pairs == 2
    assert "`+looks` = class_style=1.0, classes_per_scene=2" in ex.format_doc([summary])


def test_table_means_stds_and_paired_differences(tmp_path):
    other_budget = dataclasses.replace(TABLE_BUDGET, iters=20)
    records = [
        record("offset@0.5", 0, 0.51, params=1100, wall=120.0, loss=0.21),
        record("linear@0.5", 0, 0.50),
        record("linear@0.5", 1, 0.52),
        record("linear@0.5", 2, 0.54),
        record("offset@0.5", 1, 0.55, params=1100, wall=180.0, loss=0.23),
        record("offset@0.5", 2, 0.54, params=1100, wall=60.0, loss=0.22),
        record("offset@0.5", 3, 0.60, params=1100),  # no linear partner: in the mean, not in Δ
        record("offset@0.5", 0, 0.99),  # duplicate run: the first line wins
        record("offset-co@0", 0, 0.40),  # no linear at style 0
        record("linear@0.5", 0, 0.30, budget=other_budget),  # another budget: another table
    ]
    path = tmp_path / "r.jsonl"
    for r in records:
        ex.append_result(path, r)
    summaries = ex.summarise(ex.read_results(path))
    assert [s.budget["iters"] for s in summaries] == [10, 20]
    rows = {r.arm: r for r in summaries[0].rows}
    assert [r.arm for r in summaries[0].rows] == ["offset-co@0", "linear@0.5", "offset@0.5"]
    lin, off = rows["linear@0.5"], rows["offset@0.5"]
    assert lin.seeds == [0, 1, 2] and lin.miou_mean == pytest.approx(0.52) and lin.miou_std == pytest.approx(0.02)
    assert off.seeds == [0, 1, 2, 3] and off.miou_mean == pytest.approx((0.51 + 0.55 + 0.54 + 0.60) / 4)
    # paired differences 0.01, 0.03, 0.00
    assert off.n_pairs == 3 and off.delta_mean == pytest.approx(0.04 / 3)
    assert off.delta_std == pytest.approx(
        math.sqrt(((0.01 - 0.04 / 3) ** 2 + (0.03 - 0.04 / 3) ** 2 + (0.0 - 0.04 / 3) ** 2) / 2)
    )
    assert off.wall_mean_s == pytest.approx(105.0) and off.params == 1100
    assert lin.delta_mean is None and rows["offset-co@0"].delta_mean is None
    assert math.isnan(rows["offset-co@0"].miou_std)

    table = ex.format_table(summaries[0])
    assert "| `linear@0.5` |" in table and "52.00 ± 2.00 | — |" in table
    assert off.seed_deltas == [(0, pytest.approx(0.01)), (1, pytest.approx(0.03)), (2, pytest.approx(0.0))]
    # 95 % CI by hand: t(0.975, 2 df) = 4.302653 (tables), half-width = t * std / sqrt(3)
    half = 4.302653 * off.delta_std / math.sqrt(3)
    assert off.delta_ci == (pytest.approx(0.04 / 3 - half, abs=1e-6), pytest.approx(0.04 / 3 + half, abs=1e-6))
    assert "+1.33 [-2.46, +5.13] (n=3: +1.00, +3.00, +0.00)" in table
    assert "40.00 ± n/a | no paired linear run" in table
    assert "0.001 M" in table and "1.8 min" in table

    doc = ex.format_doc(summaries, "docs/experiment/results.jsonl")
    assert doc.count("## Budget ") == 2 and "Test CPU, 2 threads" in doc and "abcdef1234" in doc
    assert (
        "offseg experiment --arms offset-co@0 linear@0.5 offset@0.5 --seeds 0 1 2 3 --iters 10 "
        "--batch-size 2 --size 32 --val-scenes 8 --train-scenes 8"
    ) in doc


def test_pairs_form_only_within_one_commit_and_generator_version(tmp_path):
    def at(rec, commit, generator="2.1"):
        return dataclasses.replace(rec, git_commit=commit, generator_version=generator)

    records = [
        at(record("linear@1", 0, 0.50), "aaa"),
        at(record("offset@1", 0, 0.60), "bbb"),  # straddles: no partner at bbb
        at(record("linear@1", 1, 0.40), "aaa"),
        at(record("offset@1", 1, 0.41), "aaa"),
        at(record("offset@1", 1, 0.45), "ccc"),  # a later commit, with its own partner below: it wins
        at(record("linear@1", 1, 0.42), "ccc"),
        at(record("linear@1", 2, 0.30), "ddd", "2.0"),
        at(record("offset@1", 2, 0.35), "ddd", "2.1"),  # same commit, other generator: not paired
    ]
    path = tmp_path / "r.jsonl"
    for r in records:
        ex.append_result(path, r)
    (summary,) = ex.summarise(ex.read_results(path))
    off = {r.arm: r for r in summary.rows}["offset@1"]
    assert off.seed_deltas == [(1, pytest.approx(0.03))]
    assert off.straddling == [0, 2] and off.delta_ci is None
    assert off.miou_mean == pytest.approx((0.60 + 0.45 + 0.35) / 3)  # seed 1 counts its paired run
    assert "seeds 0, 2 not paired (runs at different commits)" in ex.format_table(summary)
    # the baseline's mean takes each seed's run of the latest commit (seed 1 re-run at ccc: 0.42, not 0.40)
    lin = {r.arm: r for r in summary.rows}["linear@1"]
    assert lin.miou_mean == pytest.approx((0.50 + 0.42 + 0.30) / 3)
    # seed 1 ran at aaa and again at ccc: the re-run moved offset by +0.04 and linear by +0.02
    assert off.rerun_shifts == [(1, pytest.approx(0.04))] and lin.rerun_shifts == [(1, pytest.approx(0.02))]
    reruns = ex.format_reruns(summary)
    assert "- `linear@1`: seed 1: +2.0000 (largest |change| 2.0000)" in reruns
    assert "- `offset@1`: seed 1: +4.0000 (largest |change| 4.0000)" in reruns
    assert reruns in ex.format_doc([summary])
    # the runner's identity of a run includes both, so a straddling pair is run again
    assert ex.run_key("offset@1", 0, records[0].budget, "aaa", "2.1") != ex.run_key(
        "offset@1", 0, records[0].budget, "bbb", "2.1"
    )


def test_command_line_overrides_may_follow_list_options_and_table_writes_the_doc(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    ex.register_experiment(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        ["experiment", "optim.lr=1e-3", "--seeds", "0", "1", "optim.weight_decay=0", "--arms", "main", "--iters", "7"]
    )
    assert args.seeds == ["0", "1"] and args.arms == ["main"] and args.iters == 7
    assert [*args.overrides, *args.extra_overrides] == ["optim.lr=1e-3", "optim.weight_decay=0"]
    with pytest.raises(ConfigError, match="--seeds"):
        ex.cli._seeds(["zero"])

    results, doc = tmp_path / "r.jsonl", tmp_path / "docs" / "experiment.md"
    ex.append_result(results, record("linear@0", 0, 0.5))
    args = parser.parse_args(["experiment", "--table", "--results", str(results), "--doc", str(doc)])
    assert args.func(args) == 0
    assert "| `linear@0` |" in doc.read_text() and "| `linear@0` |" in capsys.readouterr().out


def test_cli_analyse_writes_the_analysis_page(finished_grid, tmp_path, capsys):
    _, _, _, _, root, _ = finished_grid
    parser = argparse.ArgumentParser()
    ex.register_experiment(parser.add_subparsers(dest="cmd"))
    budget_args = ["--iters", "3", "--batch-size", "2", "--size", "32", "--val-scenes", "8", "--train-scenes", "8"]
    overrides = [*TINY_OVERRIDES, f"data.root={root / 'data'}"]
    doc = tmp_path / "analysis.md"
    common = [*budget_args, "--seeds", "0", "--work-dir", str(root / "runs"), "--analysis-images", "2"]
    common += ["--analysis-doc", str(doc)]
    args = parser.parse_args(["experiment", *overrides, "--analyse", "--arms", "linear@0.5", "offset@0.5", *common])
    assert args.func(args) == 0
    text = doc.read_text()
    assert "| `offset@0.5` | 0 | 2 |" in text and "`linear@0.5`" in text
    # the page names the command that regenerates it (only the offset arm is analysed)
    assert (
        "`offseg experiment --arms offset@0.5 --seeds 0 --iters 3 --batch-size 2 --size 32 --val-scenes 8 "
        "--train-scenes 8 "
        in text
        and "--analyse --analysis-images 2`" in text
    )
    assert text in capsys.readouterr().out
    with pytest.raises(ConfigError, match="at least one Offset Learning arm"):
        bad = parser.parse_args(["experiment", *overrides, "--analyse", "--arms", "linear@0.5", *common])
        bad.func(bad)


def test_budget_curve_orders_budgets_by_length_and_keeps_one_setup(tmp_path, capsys):
    base = TABLE_BUDGET
    at = {n: dataclasses.replace(base, iters=n, warmup_iters=n // 10) for n in (10, 30, 20)}
    other_shape = dataclasses.replace(base, iters=40, size=64)  # not the same set-up: left out of the curve
    path = tmp_path / "r.jsonl"
    for n, b in at.items():
        for seed, (lin, off) in enumerate([(0.40, 0.40 + n / 1000), (0.50, 0.50 + n / 500)]):
            ex.append_result(path, record("linear@0.5+looks", seed, lin, budget=b))
            ex.append_result(path, record("offset@0.5+looks", seed, off, budget=b))
    ex.append_result(path, record("linear@0.5+looks", 0, 0.1, budget=other_shape))
    ex.append_result(path, record("offset@0.5+looks", 0, 0.9, budget=other_shape))
    summaries = ex.summarise(ex.read_results(path))
    points = budget_curve([s for s in summaries if s.budget["size"] == base.size], "offset@0.5+looks")
    assert [p.iters for p in points] == [10, 20, 30]
    # seed deltas n/1000 and n/500: mean 1.5 n / 1000
    assert [p.delta_mean for p in points] == [pytest.approx(1.5 * n / 1000) for n in (10, 20, 30)]
    assert "| 20 | +3.00 |" in format_curve("offset@0.5+looks", points)
    # Δ(n) − Δ(30) per seed: seed 0 (n − 30)/1000, seed 1 (n − 30)/500; scipy's one-sample t interval
    changes = budget_changes(points)
    assert [(c.a, c.b) for c in changes] == [("10 it", "30 it"), ("20 it", "30 it")]
    for c, n in zip(changes, (10, 20)):
        want = [(n - 30) / 1000, (n - 30) / 500]
        assert [d for _, d in c.seed_values] == pytest.approx(want)
        ci = stats.ttest_1samp(want, 0.0).confidence_interval(0.95)
        assert c.mean == pytest.approx(sum(want) / 2) and c.ci == pytest.approx((ci.low, ci.high))
    line = "| Δ(10 it) − Δ(30 it) | -3.00 | [-15.71, +9.71] | 2 | 0: -2.00, 1: -4.00 |"
    assert line in format_curve("offset@0.5+looks", points)
    # with the other set-up present, the curve follows the longest budget's set-up only
    assert [p.iters for p in budget_curve(summaries, "offset@0.5+looks")] == [40]

    doc, figures = tmp_path / "experiment.md", tmp_path / "figures"
    assert main(["experiment", "--table", "--results", str(path), "--doc", str(doc),
                 "--curve", "offset@0.5+looks"]) == 0  # fmt: skip
    assert "## Budget curve of `offset@0.5+looks`" in doc.read_text()
    # Δ(+looks) − Δ(plain) per seed: no plain runs in this file, so the section says so
    assert main(["experiment", "--table", "--results", str(path), "--doc", str(doc),
                 "--contrast", "offset@0.5+looks", "offset@0.5"]) == 0  # fmt: skip
    assert "No budget in" in doc.read_text() and "`offset@0.5+looks` and `offset@0.5`" in doc.read_text()
    assert (figures / "experiment_budget_offset_style0.5+looks.png").stat().st_size > 1000


def test_bench_experiment_is_an_alias_that_names_the_new_command(tmp_path, capsys):
    from offseg_vis.bench.commands import register as register_bench

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    register_bench(sub)
    ex.register(sub)
    results = tmp_path / "r.jsonl"
    ex.append_result(results, record("linear@0", 0, 0.5))
    outputs = []
    for argv in (["experiment"], ["bench", "experiment"]):
        doc = tmp_path / f"{len(outputs)}.md"
        args = parser.parse_args([*argv, "--table", "--results", str(results), "--doc", str(doc)])
        assert args.func(args) == 0
        captured = capsys.readouterr()
        outputs.append((doc.read_text(), captured.err.splitlines()))
    (new_doc, new_err), (old_doc, old_err) = outputs
    assert new_doc == old_doc and f"Generated by `offseg experiment --table --results {results}`" in new_doc
    assert old_err[0] == "`offseg bench experiment` is now `offseg experiment`; running that."
    assert not any("is now" in line for line in new_err)


def test_ablations_are_paired_with_the_full_model_of_their_style_and_commit(tmp_path):
    def at(rec, commit):
        return dataclasses.replace(rec, git_commit=commit)

    records = [
        *(at(record("linear@0.5", s, 0.50), "aaa") for s in (0, 1, 2)),
        *(at(record("offset@0.5", s, m), "aaa") for s, m in ((0, 0.52), (1, 0.55), (2, 0.53))),
        at(record("offset-co@0.5", 0, 0.50), "aaa"),
        at(record("offset-co@0.5", 1, 0.56), "aaa"),
        at(record("offset-co@0.5", 2, 0.49), "aaa"),
        at(record("offset-fo@0.5", 0, 0.60), "bbb"),  # no full model at bbb: not paired
        at(record("offset@1", 0, 0.70), "aaa"),  # another style: never the full model of a 0.5 arm
    ]
    path = tmp_path / "r.jsonl"
    for r in records:
        ex.append_result(path, r)
    (summary,) = ex.summarise(ex.read_results(path))
    rows = {r.arm: r for r in summary.rows}
    co, fo = rows["offset-co@0.5"], rows["offset-fo@0.5"]
    want = [0.50 - 0.52, 0.56 - 0.55, 0.49 - 0.53]  # ablation − full, seed by seed
    assert [d for _, d in co.full_deltas] == pytest.approx(want) and co.full_straddling == []
    assert fo.full_deltas == [] and fo.full_straddling == [0]
    assert not rows["offset@0.5"].is_ablation and not rows["linear@0.5"].is_ablation
    ci = stats.ttest_1samp(want, 0.0).confidence_interval(0.95)
    text = ex.format_ablations(summary)
    expect = f"{100 * sum(want) / 3:+.2f} [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}] (n=3: -2.00, +1.00, -4.00)"
    assert f"| `offset-co@0.5` | class offsets only (paper ablation) | {expect} |" in text
    assert "no paired full-OL run; seed 0 not paired (runs at different commits)" in text
    assert "`offset@1`" not in text and "`offset@0.5` |" not in text
    assert text in ex.format_doc([summary])


def test_contrast_pairs_two_arms_gains_by_seed_within_each_budget(tmp_path, capsys):
    from offseg_vis.experiment.contrast import arm_contrast

    longer = dataclasses.replace(TABLE_BUDGET, iters=20)
    path = tmp_path / "r.jsonl"
    gains = {"offset@0.5+looks": (0.05, 0.03, 0.04), "offset@0.5": (0.01, 0.02, -0.01)}
    for arm, deltas in gains.items():
        base = arm.replace("offset", "linear")
        for seed, d in enumerate(deltas):
            ex.append_result(path, record(base, seed, 0.5 + seed / 100))
            ex.append_result(path, record(arm, seed, 0.5 + seed / 100 + d))
    ex.append_result(path, record("linear@0.5", 0, 0.4, budget=longer))  # only one arm there: no contrast
    ex.append_result(path, record("offset@0.5", 0, 0.41, budget=longer))
    found = arm_contrast(ex.summarise(ex.read_results(path)), "offset@0.5+looks", "offset@0.5")
    want = [0.05 - 0.01, 0.03 - 0.02, 0.04 + 0.01]
    assert [iters for iters, _ in found] == [10]
    (c,) = [c for _, c in found]
    assert [v for _, v in c.seed_values] == pytest.approx(want)
    ci = stats.ttest_1samp(want, 0.0).confidence_interval(0.95)
    assert c.ci == pytest.approx((ci.low, ci.high)) and c.n == 3
    doc = tmp_path / "experiment.md"
    assert main(["experiment", "--table", "--results", str(path), "--doc", str(doc),
                 "--contrast", "offset@0.5+looks", "offset@0.5"]) == 0  # fmt: skip
    row = f"| 10 | Δ(offset@0.5+looks) − Δ(offset@0.5) | +3.33 | [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}] | 3 |"
    assert row in doc.read_text()
    want = f"Generated by `offseg experiment --table --results {path} --contrast offset@0.5+looks offset@0.5`"
    assert want in doc.read_text()
