"""Speed, size and cost of the zoo's models on this machine (``offseg bench speed``).

Protocol (after mmseg's benchmark and the PIDNet/SwiftNet scripts): batch 1, a fixed square input,
eval mode, ``torch.inference_mode``, ``warmup`` untimed runs then ``runs`` timed ones; median and
min latency; on CUDA the timer synchronises and the forward runs under autocast. Every number is
written beside the thread count, torch version and CPU model. Linear and offset variants of one
model are timed interleaved, call by call, so their ratio is fair even on a noisy machine. A second
latency per variant includes what a user waits for: the logits upsampled to the input size and
their argmax.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from offseg_vis.deploy.onnx_export import OnnxRuntimeModel, compare_with_torch, export_onnx
from offseg_vis.engine.runtime import environment
from offseg_vis.engine.timing import paired_ratio, time_call, time_interleaved
from offseg_vis.models import build_model
from offseg_vis.models.cost import count_gmacs, count_parameters
from offseg_vis.models.weights import atomic_write_text

DEFAULT_MODELS = ("offseg-mbv2", "offseg-t", "offseg-b", "offseg-l", "segformer-b0", "segnext-t")


def matmul_gflops(n: int = 2048, runs: int = 10) -> float:
    """Dense float32 matmul rate of this machine (GFLOP/s of an n×n ``torch.mm``), median of runs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = time_call(lambda: torch.mm(a, b), warmup=2, runs=runs)
    return 2 * n**3 / t["median_s"] / 1e9


def _forward(model: torch.nn.Module, size: int, device: str, labels: bool = False):
    """A no-argument callable running one batch-1 eval forward of ``model`` (under autocast on CUDA).

    With ``labels`` the call goes on to what a user needs (as PP-MobileSeg reports CPU latency): the
    class ids at the input size (``predict_labels``: the argmax of the logits upsampled bilinearly), (1, H, W).
    """
    model = model.to(device).eval()
    x = torch.randn(1, 3, size, size, device=device)
    cuda = device == "cuda"

    def run():
        with torch.inference_mode(), torch.autocast(device_type="cuda", enabled=cuda):
            model(x)

    def run_labels():
        with torch.inference_mode(), torch.autocast(device_type="cuda", enabled=cuda):
            model.predict_labels(x)

    return run_labels if labels else run


def _hf_segformer_b0(size: int, device: str):
    """Hugging Face SegformerForSemanticSegmentation B0 (random init) as (forward callable, params M),
    or None when transformers is not installed."""
    try:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
    except ImportError:
        return None
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=150)).to(device).eval()
    x = torch.randn(1, 3, size, size, device=device)

    def run():
        with torch.inference_mode():
            model(pixel_values=x)

    return run, count_parameters(model) / 1e6


def _stats(t: dict) -> dict:
    return {k: v for k, v in t.items() if k != "times_s"}


RUNTIMES = ("torch", "onnxruntime", "inductor")
# docs/benchmarks.md: everything from this line on is written by hand and kept by run_and_write.
KEEP_MARKER = "<!-- sections below are written by hand; offseg bench speed keeps them -->"


def _onnxruntime_forward(model: torch.nn.Module, size: int, folder: str):
    """A no-argument callable running ``model`` exported to ONNX (fixed size) in ONNX Runtime, and
    max |ONNX Runtime − torch| of its logits."""
    path = Path(folder) / f"{getattr(model, 'model_name', 'model')}_{getattr(model, 'classifier_name', '')}.onnx"
    export_onnx(model, path, (size, size), dynamic=False, check_sizes=[])
    runtime = OnnxRuntimeModel(path, spinning=False)  # spinning ORT threads would slow the interleaved torch calls
    check = compare_with_torch(model, runtime, (size, size))
    x = torch.randn(1, 3, size, size).numpy()
    return (lambda: runtime(x)), check


def _inductor_forward(model: torch.nn.Module, size: int, device: str):
    """``torch.compile(model, backend="inductor")`` as a no-argument callable, with the compile time
    (the first call, which traces and builds the C++/OpenMP kernels) and max |compiled − eager| of
    the logits. Shapes are static (``dynamic=False``): one size is timed, so no symbolic kernels."""
    import torch._dynamo

    model = model.to(device).eval()
    x = torch.randn(1, 3, size, size, device=device)
    with torch.inference_mode():
        ref = model(x)
        explain = torch._dynamo.explain(model)(x)  # graph breaks: each one splits the compiled program
    torch._dynamo.reset()  # a fresh cache: the compile time below is this model's alone
    compiled = torch.compile(model, backend="inductor", dynamic=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        got = compiled(x)
    compile_s = time.perf_counter() - t0
    check = {
        "compile_s": compile_s,
        "max_abs_diff": float((got - ref).abs().max()),
        "logit_scale": float(ref.abs().max()),
        "graph_breaks": int(explain.graph_break_count),
        "graphs": int(explain.graph_count),
        "break_reasons": sorted({str(b.reason).splitlines()[0] for b in explain.break_reasons})[:5],
    }
    cuda = device == "cuda"

    def run():
        with torch.inference_mode(), torch.autocast(device_type="cuda", enabled=cuda):
            compiled(x)

    return run, check


def _check_runtimes(runtimes: tuple[str, ...]) -> tuple[str, ...]:
    """``runtimes`` validated, with "torch" put first when missing (GMACs and the logit checks
    need the torch model anyway)."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise ValueError(f"runtimes must be among {RUNTIMES}, got {list(runtimes)}.")
    if "torch" not in runtimes:
        runtimes = ("torch", *runtimes)
    return runtimes


def _build_calls(
    names: tuple[str, ...], size: int, num_classes: int, runtimes: tuple[str, ...], device: str, folder: str
) -> tuple[dict, dict, dict]:
    """Every model × classifier × runtime as a forward callable -> (calls, costs, checks).

    calls: "name/classifier/runtime" -> no-argument callable; costs: (name, classifier) -> (params M,
    GMACs); checks: (name, classifier) -> ONNX Runtime check, (name, classifier, "inductor") -> the
    inductor check. ONNX files are written into ``folder``, which must outlive the timing.
    """
    calls, costs, checks = {}, {}, {}
    for name in names:
        for classifier in ("linear", "offset"):
            torch.manual_seed(0)
            model = build_model(name, num_classes=11 if name == "offseg-mbv2" else num_classes, classifier=classifier)
            costs[name, classifier] = (count_parameters(model) / 1e6, count_gmacs(model, size))
            calls[f"{name}/{classifier}/torch"] = _forward(model, size, device)
            calls[f"{name}/{classifier}/torch+labels"] = _forward(model, size, device, labels=True)
            if "onnxruntime" in runtimes:
                fn, checks[name, classifier] = _onnxruntime_forward(model, size, folder)
                calls[f"{name}/{classifier}/onnxruntime"] = fn
            if "inductor" in runtimes:
                fn, checks[name, classifier, "inductor"] = _inductor_forward(model, size, device)
                calls[f"{name}/{classifier}/inductor"] = fn
    return calls, costs, checks


def _variant_entry(
    name: str, classifier: str, timed: dict, costs: dict, checks: dict, runtimes: tuple[str, ...], peak: float
) -> dict:
    """One model variant's row: cost, torch latency statistics, achieved GFLOP/s against the matmul
    ``peak``, and per extra runtime its latency, paired ratio over torch and its check."""
    params_m, gmacs = costs[name, classifier]
    t = timed[f"{name}/{classifier}/torch"]
    r = {"params_m": params_m, "gmacs": gmacs, **_stats(t)}
    labels = timed.get(f"{name}/{classifier}/torch+labels")
    if labels is not None:  # forward + upsample to the input size + argmax
        r["with_labels"] = _stats(labels)
    r["achieved_gflops"] = 2 * gmacs / t["median_s"]
    r["fraction_of_matmul_peak"] = r["achieved_gflops"] / peak
    for runtime, check_key in (("onnxruntime", (name, classifier)), ("inductor", (name, classifier, "inductor"))):
        if runtime in runtimes:
            o = timed[f"{name}/{classifier}/{runtime}"]
            r[runtime] = {
                **_stats(o),
                "over_torch_latency": paired_ratio(o["times_s"], t["times_s"]),
                **checks[check_key],
            }
    return r


def _model_row(
    name: str, names: tuple[str, ...], timed: dict, costs: dict, checks: dict, runtimes: tuple[str, ...], peak: float
) -> dict:
    """One model's result row: both variants and the paired latency ratios (offset/linear, against
    our SegFormer-B0 and the Hugging Face peer when they were timed)."""
    row: dict = {"model": name}
    for classifier in ("linear", "offset"):
        row[classifier] = _variant_entry(name, classifier, timed, costs, checks, runtimes, peak)
    offset_times = timed[f"{name}/offset/torch"]["times_s"]
    row["offset_over_linear_latency"] = paired_ratio(offset_times, timed[f"{name}/linear/torch"]["times_s"])
    if "segformer-b0" in names:
        row["offset_over_segformer_b0_offset"] = paired_ratio(
            offset_times, timed["segformer-b0/offset/torch"]["times_s"]
        )
        if "hf_peer" in timed:
            row["offset_over_hf_segformer_b0"] = paired_ratio(offset_times, timed["hf_peer"]["times_s"])
    return row


def _print_row(row: dict, runtimes: tuple[str, ...]) -> None:
    """One progress line per model: latencies of both variants and of the extra runtimes."""
    ort = ""
    if "onnxruntime" in runtimes:
        ort = f", onnxruntime offset {row['offset']['onnxruntime']['median_s'] * 1e3:.0f} ms"
    if "inductor" in runtimes:
        ind = row["offset"]["inductor"]
        ort += (
            f", inductor offset {ind['median_s'] * 1e3:.0f} ms (x{ind['over_torch_latency']:.2f} eager; "
            f"compiled in {ind['compile_s']:.0f} s, {ind['graph_breaks']} graph breaks)"
        )
    linear_ms, offset_ms = row["linear"]["median_s"] * 1e3, row["offset"]["median_s"] * 1e3
    print(
        f"  {row['model']}: linear {linear_ms:.0f} ms, offset {offset_ms:.0f} "
        f"ms (paired ratio x{row['offset_over_linear_latency']:.3f}){ort}",
        flush=True,
    )


def benchmark_models(
    names: tuple[str, ...] = DEFAULT_MODELS,
    size: int = 512,
    warmup: int = 5,
    runs: int = 20,
    num_classes: int = 150,
    with_hf_peer: bool = True,
    runtimes: tuple[str, ...] = ("torch",),
) -> dict:
    """Time every model in both classifier variants and every runtime, all interleaved run by run;
    returns a JSON-able dict.

    Every callable (each model × classifier × runtime, and the Hugging Face SegFormer-B0 peer when
    ``segformer-b0`` is listed) runs once per round (:func:`~offseg_vis.engine.timing.time_interleaved`),
    so any ratio between two of them (offset/linear, model/model, ONNX Runtime/torch) is the median of
    per-round ratios under the same machine load. ``runtimes``: "torch" (eager, inference mode) and/or
    "onnxruntime" (the model exported at this fixed size, ONNX Runtime CPU, same thread count) and/or
    "inductor" (``torch.compile``, inductor backend, static shapes; compile time, graph breaks and
    max |compiled − eager| are reported beside the steady-state latency, which excludes compilation).
    """
    runtimes = _check_runtimes(runtimes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    result = {"size": size, "warmup": warmup, "runs": runs, "runtimes": list(runtimes), **environment(), "models": []}
    result["matmul_gflops"] = matmul_gflops()
    hf = _hf_segformer_b0(size, device) if with_hf_peer and "segformer-b0" in names else None
    with tempfile.TemporaryDirectory() as folder:  # the ONNX files must live until the timing ends
        calls, costs, checks = _build_calls(names, size, num_classes, runtimes, device, folder)
        if hf is not None:
            calls["hf_peer"] = hf[0]
        timed = time_interleaved(calls, warmup=warmup, runs=runs, cuda=device == "cuda")
    for name in names:
        row = _model_row(name, names, timed, costs, checks, runtimes, result["matmul_gflops"])
        result["models"].append(row)
        _print_row(row, runtimes)
    if hf is not None:
        result["hf_segformer_b0"] = {
            "params_m": hf[1],
            **_stats(timed["hf_peer"]),
            "ours_linear_over_hf_latency": paired_ratio(
                timed["segformer-b0/linear/torch"]["times_s"], timed["hf_peer"]["times_s"]
            ),
        }
    from offseg_vis.bench.offset_learning import benchmark as ol_benchmark

    result["offset_learning_paths"] = ol_benchmark(150, 256, size // 4, runs=runs)
    return result


def _labels_ms(entry: dict) -> str:
    """The forward + upsample + argmax median of a variant entry in ms ("–" in results without it)."""
    labels = entry.get("with_labels")
    return f"{labels['median_s'] * 1e3:.0f}" if labels else "–"


def format_markdown(result: dict) -> str:
    """The table for docs/benchmarks.md."""
    env = (
        f"{result['device']}, {result['threads']} threads, torch {result['torch']}, {result['cpu']}; "
        f"batch 1, {result['size']}×{result['size']}, {result['warmup']} warm-ups, {result['runs']} timed runs; "
        f"dense fp32 matmul peak {result['matmul_gflops']:.0f} GFLOP/s (2048² torch.mm)"
    )
    ort = "onnxruntime" in result.get("runtimes", ())
    ind = "inductor" in result.get("runtimes", ())
    lines = [
        f"Measured on: {env}; every call interleaved with every other, round by round.",
        "",
        "| model | classifier | params (M) | GMACs | median ms | min ms | median ms + upsample + argmax "
        "| offset/linear latency | % of matmul peak |"
        + (" ONNX Runtime ms | ORT/torch | ORT max abs diff |" if ort else "")
        + (" inductor ms | inductor/eager | compile s | graph breaks | inductor max abs diff |" if ind else ""),
        "|---|---|---|---|---|---|---|---|---|"
        + ("---|---|---|" if ort else "")
        + ("---|---|---|---|---|" if ind else ""),
    ]
    for row in result["models"]:
        for classifier in ("linear", "offset"):
            r = row[classifier]
            ratio = f"×{row['offset_over_linear_latency']:.2f}" if classifier == "offset" else ""
            lines.append(
                f"| {row['model']} | {classifier} | {r['params_m']:.2f} | {r['gmacs']:.2f} | "
                f"{r['median_s'] * 1e3:.0f} | {r['min_s'] * 1e3:.0f} | {_labels_ms(r)} | {ratio} | "
                f"{100 * r['fraction_of_matmul_peak']:.0f}% |"
                + (
                    f" {r['onnxruntime']['median_s'] * 1e3:.0f} | ×{r['onnxruntime']['over_torch_latency']:.2f} | "
                    f"{r['onnxruntime']['max_abs_diff']:.1e} |"
                    if ort
                    else ""
                )
                + (
                    f" {r['inductor']['median_s'] * 1e3:.0f} | ×{r['inductor']['over_torch_latency']:.2f} | "
                    f"{r['inductor']['compile_s']:.0f} | {r['inductor']['graph_breaks']} | "
                    f"{r['inductor']['max_abs_diff']:.1e} |"
                    if ind
                    else ""
                )
            )
    peer = result.get("hf_segformer_b0")
    if peer:
        lines.append(
            f"| HF SegformerForSemanticSegmentation B0 (peer) | linear | {peer['params_m']:.2f} | – | "
            f"{peer['median_s'] * 1e3:.0f} | {peer['min_s'] * 1e3:.0f} | | | |"
        )
        if "ours_linear_over_hf_latency" in peer:
            lines += [
                "",
                f"Our segformer-b0 (linear) vs the Hugging Face peer, timed interleaved: "
                f"×{peer['ours_linear_over_hf_latency']:.2f} its latency (median of per-round ratios).",
            ]
    cross = [row for row in result["models"] if "offset_over_segformer_b0_offset" in row]
    if cross:
        lines += ["", "Offset variants against SegFormer-B0 (offset) and the Hugging Face peer (paired, interleaved):"]
        for row in cross:
            hf_ratio = row.get("offset_over_hf_segformer_b0")
            lines.append(
                f"- {row['model']}: ×{row['offset_over_segformer_b0_offset']:.2f} our SegFormer-B0-OL"
                + (f", ×{hf_ratio:.2f} HF SegFormer-B0" if hf_ratio is not None else "")
            )
    ol = result.get("offset_learning_paths")
    if ol:
        lines += [
            "",
            f"Offset Learning alone (K=150, C=256, {ol['size']}×{ol['size']} features): plain "
            f"{ol['plain']['median_s'] * 1e3:.1f} ms / {ol['plain']['peak_memory_mb']:.0f} MB peak, fused "
            f"{ol['fused']['median_s'] * 1e3:.1f} ms / {ol['fused']['peak_memory_mb']:.0f} MB "
            f"(×{ol['speedup']:.2f} faster, ×{ol['memory_ratio']:.2f} less memory).",
        ]
    return "\n".join(lines)


def run_and_write(out_dir: str | Path = "docs", **kwargs) -> dict:
    """Run :func:`benchmark_models` and write ``benchmarks.json`` and ``benchmarks.md`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = benchmark_models(**kwargs)
    result["wall_time_s"] = time.time() - t0
    atomic_write_text(out_dir / "benchmarks.json", json.dumps(result, indent=1))
    md = out_dir / "benchmarks.md"
    kept = ""
    if md.exists():  # hand-written sections after the marker survive a regeneration
        text = md.read_text()
        if KEEP_MARKER in text:
            kept = "\n" + text[text.index(KEEP_MARKER) :]
    atomic_write_text(
        md,
        "# Speed, size and cost\n\nProduced by `offseg bench speed`.\n\n" + format_markdown(result) + "\n" + kept,
    )
    return result
