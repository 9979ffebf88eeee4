"""The training step on one GPU, before and after the device-side statistics work, side by side in one run.

Variants (each the project's own `train_steps`, one process, the document's 64/128/256 widths, z 128):

- before:      fp32, statistics read back every step, batches copied from host memory (train.sync=step);
               the loop as it was first measured on an H100;
- report:      the same maths with train.sync=report: batches drawn on the device, statistics read once;
- report_bf16: train.sync=report with bf16 autocast and channels_last;
- compiled:    report_bf16 plus train.compile=default (torch.compile of G and D);
- cudagraphs:  report_bf16 plus train.compile=reduce-overhead (CUDA graphs over the compiled graphs).

Shapes 32x32x1 (digits) and 64x64x3 (color_digits) at batch 256 and 1024. A row's time is the wall time of
STEPS steps between two device synchronisations, after WARMUP steps (compilation happens in the warm-up).
FLOPs per step come from torch.utils.flop_counter on one eager step (forward and backward of both
networks); achieved TFLOP/s is that times steps per second, and is given as a share of the card's dense
bf16 peak from its datasheet and of a bf16 matmul measured on the card in this run.

    python -m bench.gpu_bench --out bench/results/gpu_step.json          # a CUDA machine (not yet run on one)
    python -m bench.gpu_bench --device cpu --smoke --out /tmp/g.json     # the same code on a CPU, seconds

Needs no Ray and no MLflow (the device machine may have neither).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.data.prepare import prepare_dataset  # noqa: E402
from components.training.loop import one_step, train_steps  # noqa: E402
from components.training.worker import build_worker_state  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.workers import build_worker_config  # noqa: E402

SHAPES = {"32x32x1": ["data.resolution=32", "data.channels=1", "data.source=digits"],
          "64x64x3": ["data.resolution=64", "data.channels=3", "data.source=color_digits"]}
VARIANTS = {
    "before": {"precision": "fp32", "channels_last": False, "sync": "step", "compile": "off"},
    "report": {"precision": "fp32", "channels_last": False, "sync": "report", "compile": "off"},
    "report_bf16": {"precision": "bf16", "channels_last": True, "sync": "report", "compile": "off"},
    "compiled": {"precision": "bf16", "channels_last": True, "sync": "report", "compile": "default"},
    "cudagraphs": {"precision": "bf16", "channels_last": True, "sync": "report", "compile": "reduce-overhead"},
}
WIDTHS = ["model.g_base_channels=64", "model.d_base_channels=64", "model.z_dim=128"]
SMOKE_WIDTHS = ["model.g_base_channels=8", "model.d_base_channels=8", "model.z_dim=16"]
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s.
# A card's name must contain every word of a key; longer keys are tried first ("NVIDIA H100 80GB HBM3" is SXM).
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
                         "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def datasheet_peak(name: str) -> float | None:
    for key in sorted(DATASHEET_BF16_TFLOPS, key=len, reverse=True):
        if all(part in name for part in key.split()):
            return DATASHEET_BF16_TFLOPS[key]
    return None


def measured_matmul_tflops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """bf16 matmul throughput on this card: what its tensor cores give at best, measured in this run."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The step without R1, LeCam and augmentation: the recipe the H100 baseline (gpu_h100.json) was measured with,
# and one that torch.compile can take (R1's double backward cannot be compiled).
STEP_RECIPE = ["loss.r1_gamma=0", "loss.lecam_lambda=0", "loss.diffaugment=[]", "loss.ada_target=null"]


def worker_config(shape: str, variant: str, batch: int, data_dir: Path, steps: int, smoke: bool, gpu: bool):
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [*SHAPES[shape], *(SMOKE_WIDTHS if smoke else WIDTHS), *STEP_RECIPE])
    return build_worker_config(cfg, data_dir, train_overrides={
        "num_workers": 1, "batch_size": batch, "steps": steps, "report_every": steps,
        "use_gpu": gpu, **VARIANTS[variant]})


def step_flops(config, device: torch.device) -> int:
    """FLOPs of one eager training step (D step and G step, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    state, cfg, loss = build_worker_state(config.with_overrides({"train": {"compile": "off"}}), 0, 1,
                                          wrap=lambda m: m.to(device), device=device)
    one_step(state, loss, cfg)  # the first step allocates optimiser state; count a steady one
    with FlopCounterMode(display=False) as counter:
        one_step(state, loss, cfg)
    return counter.get_total_flops()


def measure(config, device: torch.device, warmup: int, steps: int) -> dict:
    state, cfg, loss = build_worker_state(config, 0, 1, wrap=lambda m: m.to(device), device=device)
    t_start = time.perf_counter()
    train_steps(state, loss, cfg, warmup)
    synchronize(device)
    warm_s = time.perf_counter() - t_start
    t0 = time.perf_counter()
    train_steps(state, loss, cfg, warmup + steps)
    synchronize(device)
    seconds = time.perf_counter() - t0
    return {"ms_per_step": round(1000 * seconds / steps, 3), "warmup_s": round(warm_s, 2),
            "d_loss_last": round(state.trace["d_loss"][-1], 4), "diverged": state.diverged}


def main(out: Path, device_name: str, variants: list[str], batches: list[int], shapes: list[str],
         warmup: int, steps: int, smoke: bool, time_limit_s: float) -> dict:
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device visible; run it on a GPU machine, or pass --device cpu")
    torch.backends.cudnn.benchmark = True
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = datasheet_peak(card) if device.type == "cuda" else None
    matmul = round(measured_matmul_tflops(device), 1) if device.type == "cuda" else None
    started, rows, gpu = time.perf_counter(), [], device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            data_dir = Path(tmp) / shape
            prepare_dataset(load_config(REPO / "configs" / "default.yaml", SHAPES[shape]).data, data_dir)
            for batch in batches:
                flops = step_flops(worker_config(shape, "before", batch, data_dir, steps, smoke, gpu), device)
                for variant in variants:
                    row = {"shape": shape, "batch": batch, "variant": variant, **VARIANTS[variant],
                           "gflop_per_step": round(flops / 1e9, 2)}
                    if time.perf_counter() - started > time_limit_s:
                        rows.append({**row, "skipped": f"past the {time_limit_s:.0f}-s limit"})
                        continue
                    try:
                        row.update(measure(worker_config(shape, variant, batch, data_dir, warmup + steps, smoke, gpu),
                                           device, warmup, steps))
                    except Exception as err:  # one variant failing (a compiler error) must not lose the rest
                        row["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
                        rows.append(row)
                        print(f"  {shape} batch {batch} {variant}: {row['error']}", flush=True)
                        continue
                    row["images_per_s"] = round(1000 * batch / row["ms_per_step"], 1)
                    row["tflops"] = round(flops / (row["ms_per_step"] / 1000) / 1e12, 3)
                    if peak:
                        row["share_of_datasheet_peak"] = round(row["tflops"] / peak, 4)
                    if matmul:
                        row["share_of_measured_matmul"] = round(row["tflops"] / matmul, 4)
                    rows.append(row)
                    print(f"  {shape} batch {batch:<5} {variant:<12} {row['ms_per_step']:>9.2f} ms/step "
                          f"{row['images_per_s']:>10.1f} images/s {row['tflops']:>8.2f} TFLOP/s", flush=True)
    result = {"machine": {"device": card, "torch": torch.__version__, "cuda": torch.version.cuda,
                          "cpus": os.cpu_count(), "platform": platform.platform()},
              "command": "python -m bench.gpu_bench " + " ".join(sys.argv[1:]),
              "model": "smoke widths 8/8, z 16" if smoke else "document widths: G 64/128/256, D 64..256, z 128",
              "warmup_steps": warmup, "timed_steps": steps,
              "datasheet_bf16_tflops": peak, "measured_bf16_matmul_tflops": matmul,
              "rows": rows, "speedup_vs_before": speedups(rows)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def speedups(rows: list[dict]) -> dict[str, float]:
    """images/s of each variant over `before`, per shape and batch: the issue's 4x target is at batch 256."""
    before = {(r["shape"], r["batch"]): r["images_per_s"] for r in rows
              if r["variant"] == "before" and "images_per_s" in r}
    return {f"{r['shape']}/{r['batch']}/{r['variant']}": round(r["images_per_s"] / before[(r["shape"], r["batch"])], 2)
            for r in rows if "images_per_s" in r and (r["shape"], r["batch"]) in before and r["variant"] != "before"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_step.json", help="result JSON")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--batches", default="256,1024", help="comma-separated batch sizes")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of the shapes")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps (compilation happens here)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per row")
    parser.add_argument("--smoke", action="store_true", help="tiny widths, for checking the script on a CPU")
    parser.add_argument("--time-limit-s", type=float, default=600.0, help="rows past this are marked skipped")
    a = parser.parse_args()
    main(a.out, a.device, a.variants.split(","), [int(b) for b in a.batches.split(",")], a.shapes.split(","),
         a.warmup, a.steps, a.smoke, a.time_limit_s)
