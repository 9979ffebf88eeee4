"""CUDA throughput of the project's training step: fp32 vs bf16 autocast, with and without channels_last,
plain and under NCCL DDP, at 32x32 grey and 64x64 RGB with the document's 64/128/256 widths.

Runs the same `train_steps` the Ray Train workers run, in this process on one GPU (the DDP row is a
one-rank NCCL process group, so it measures the DDP wrapper and NCCL all-reduce launch cost, not scaling).
Steady state is the median per-step wall time after WARMUP steps; the loop reads every statistic back to
the host each step, so the wall time includes the device work.

    python -m bench.gpu_bench --out bench/results/gpu.json      # on a CUDA machine; ~1 minute on an H100

Needs no Ray and no MLflow (the device machine may have neither).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.data.prepare import prepare_dataset  # noqa: E402
from components.training.loop import train_steps  # noqa: E402
from components.training.worker import build_worker_state  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.workers import build_worker_config  # noqa: E402

WARMUP = 10
STEPS = 60
SHAPES = {"32x32x1": ["data.resolution=32", "data.channels=1", "data.source=digits"],
          "64x64x3": ["data.resolution=64", "data.channels=3", "data.source=color_digits"]}
MODES = {"fp32": ["train.precision=fp32", "train.channels_last=false"],
         "bf16": ["train.precision=bf16", "train.channels_last=false"],
         "bf16_channels_last": ["train.precision=bf16", "train.channels_last=true"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(shape: str, mode: str, batch: int, data_dir: Path, device: torch.device, ddp: bool = False) -> dict:
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [*SHAPES[shape], *MODES[mode], "model.g_base_channels=64", "model.d_base_channels=64",
                       "model.z_dim=128", "train.use_gpu=true"])
    loop_config = build_worker_config(cfg, data_dir, train_overrides={
        "num_workers": 1, "batch_size": batch, "steps": WARMUP + STEPS, "report_every": WARMUP + STEPS})
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        def wrap(m):
            return DistributedDataParallel(m.to(device), device_ids=[device.index or 0])
    else:
        def wrap(m):
            return m.to(device)
    t0 = time.perf_counter()
    state, train_cfg, loss = build_worker_state(loop_config, rank=0, world=1, wrap=wrap, device=device)
    train_steps(state, loss, train_cfg, WARMUP + STEPS)
    torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    steady = sorted(state.trace["step_time_s"][WARMUP:])
    ms = 1000 * steady[len(steady) // 2]
    row = {"shape": shape, "mode": mode + ("+ddp_nccl" if ddp else ""), "batch": batch,
           "ms_per_step": round(ms, 2), "images_per_s": round(1000 * batch / ms, 1), "wall_s": round(wall, 2),
           "d_loss_last": round(state.trace["d_loss"][-1], 4), "diverged": state.diverged}
    print(f"  {row['shape']:<8} {row['mode']:<28} batch {batch:<4} {row['ms_per_step']:>8.2f} ms/step "
          f"{row['images_per_s']:>9.1f} images/s", flush=True)
    return row


def main(out: Path) -> dict:
    if not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device visible; run it on a GPU machine")
    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for shape, overrides in SHAPES.items():
            dirs[shape] = Path(tmp) / shape
            prepare_dataset(load_config(REPO / "configs" / "default.yaml", overrides).data, dirs[shape])
        for shape in SHAPES:
            for batch in (64, 256):
                for mode in MODES:
                    rows.append(measure(shape, mode, batch, dirs[shape], device))
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
        try:
            for shape in SHAPES:
                rows.append(measure(shape, "bf16_channels_last", 256, dirs[shape], device, ddp=True))
        finally:
            dist.destroy_process_group()
    result = {"machine": {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                          "torch": torch.__version__, "cpus": os.cpu_count(), "platform": platform.platform()},
              "model": "document widths: G 64/128/256, D 64..256, z 128", "warmup_steps": WARMUP,
              "timed_steps": STEPS, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json", help="result JSON")
    main(parser.parse_args().out)
