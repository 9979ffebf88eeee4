"""NCCL DDP with SyncBatchNorm on one GPU: the wrapping a multi-GPU Ray Train run does, checked on a single card.

Ray Train leaves a one-worker run unwrapped, and one GPU cannot host two NCCL ranks, so this check builds a
one-rank NCCL process group in this process and wraps G and D the way `train_loop_per_worker` does for
world > 1 on CUDA (SyncBatchNorm conversion, then DistributedDataParallel). It trains STEPS steps beside an
unwrapped run of the same config and writes whether the wrapped one converted its BatchNorms, stayed finite
and followed the unwrapped trajectory (one rank: SyncBatchNorm's statistics are the plain ones, up to
rounding).

    python -m bench.gpu_ddp_check --out /tmp/ddp.json      # on a CUDA machine, under a minute

Needs no Ray and no MLflow.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.data.prepare import prepare_dataset  # noqa: E402
from components.training.loop import train_steps  # noqa: E402
from components.training.worker import build_worker_state  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.workers import build_worker_config  # noqa: E402

STEPS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config, device: torch.device, ddp: bool):
    from torch.nn.parallel import DistributedDataParallel

    def wrap(m):
        if not ddp:
            return m.to(device)
        return DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(m).to(device),
                                       device_ids=[device.index or 0])

    state, cfg, loss = build_worker_state(config, 0, 1, wrap=wrap, device=device)
    train_steps(state, loss, cfg, STEPS)
    torch.cuda.synchronize(device)
    return state


def main(out: Path, config_path: Path) -> dict:
    if not torch.cuda.is_available():
        sys.exit("gpu_ddp_check: no CUDA device visible; run it on a GPU machine")
    device = torch.device("cuda", 0)
    cfg = load_config(config_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_dataset(cfg.data, Path(tmp))
        config = build_worker_config(cfg, Path(tmp), train_overrides={
            "num_workers": 1, "steps": STEPS, "report_every": 10, "compile": "off"})
        plain = run(config, device, ddp=False)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
        try:
            wrapped = run(config, device, ddp=True)
        finally:
            dist.destroy_process_group()
    sync_bns = sum(isinstance(m, torch.nn.SyncBatchNorm) for net in (wrapped.G, wrapped.D) for m in net.modules())
    gap = max(abs(a - b) for a, b in zip(plain.trace["d_loss"], wrapped.trace["d_loss"]))
    result = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "config": str(config_path),
              "backend": "nccl", "steps": STEPS, "sync_batchnorm_modules": sync_bns,
              "finite": all(math.isfinite(v) for v in wrapped.trace["d_loss"] + wrapped.trace["g_loss"]),
              "max_d_loss_gap_vs_unwrapped": gap,
              "d_loss_last": {"unwrapped": plain.trace["d_loss"][-1], "ddp_syncbn": wrapped.trace["d_loss"][-1]}}
    result["ok"] = bool(sync_bns > 0 and result["finite"] and gap < 0.05)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_ddp_check.json")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "color64-gpu.yaml")
    a = parser.parse_args()
    main(a.out, a.config)
