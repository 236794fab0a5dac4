"""Benchmark commands: they run, say what they measured and compute their ratios right (no timed asserts)."""

from __future__ import annotations

import json

import pytest

from offseg_vis.cli import main
from offseg_vis.engine.timing import paired_ratio, time_interleaved


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert paired_ratio([2.0, 9.0, 3.0], [1.0, 3.0, 3.0]) == pytest.approx(2.0)  # ratios 2, 3, 1
    with pytest.raises(ValueError, match="equal length"):
        paired_ratio([1.0], [1.0, 2.0])


def test_time_interleaved_alternates_calls_round_by_round():
    calls = []
    time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, runs=2)
    assert calls == ["a", "b"] * 3  # one warm-up round, then two timed rounds, never a then a


def test_bench_train_command_writes_its_result(tmp_path, capsys):
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--size", "32", "--batch", "2", "--steps", "2", "--warmup", "0", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["classifiers"]) == {"linear", "offset"}
    assert result["ratio_vs_first"]["linear"] == 1.0  # each round's ratio of a series to itself
    r = result["classifiers"]["offset"]
    assert r["img_per_s_median"] == pytest.approx(2 / r["median_step_s"])
    assert "32 px, batch 2, K=11" in capsys.readouterr().out


def test_bench_umap_command_pca(tmp_path, capsys):
    out = tmp_path / "umap.json"
    argv = ["bench", "umap", "--points", "400", "--dims", "8", "--repeats", "1", "--method", "pca", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert (result["points"], result["dims"], len(result["wall_s"])) == (400, 8, 1)
    assert "joint pca of 400 points x 8 dims" in capsys.readouterr().out


def test_bench_speed_times_labels_beside_the_forward():
    """Every variant gets a second latency (forward + upsample + argmax), timed in the same rounds,
    and the markdown table shows it in its own column."""
    from offseg_vis.bench.speed import benchmark_models, format_markdown

    result = benchmark_models(names=("offseg-mbv2",), size=64, warmup=0, runs=2, with_hf_peer=False)
    row = result["models"][0]
    for classifier in ("linear", "offset"):
        labels = row[classifier]["with_labels"]
        assert labels["runs"] == 2 and labels["median_s"] > 0
    lines = format_markdown(result).splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    column = header.split("|").index(" median ms + upsample + argmax ")
    offset_row = next(line for line in lines if line.startswith("| offseg-mbv2 | offset |"))
    assert float(offset_row.split("|")[column]) == round(row["offset"]["with_labels"]["median_s"] * 1e3)
