"""Trainer benchmark: the same model, batch and step in three modes (bare loop, plain DDP, Ray Train).

- bare:        the pure loop in this process, no distribution (1 process);
- ddp:         plain torch.distributed DDP, 2 processes, gloo on 127.0.0.1;
- ray_train_N: the train stage's own `run_torch_trainer` with N = 1 and 2 workers.

Every mode runs the project's `train_steps` on identical settings (the document's 64/128/256 widths at
32x32, batch 64 per worker, one intra-op thread per process), so the differences are the launch and
synchronisation machinery. Steady state is the median of rank 0's per-step wall times (`step_time_s` in
the trace) after WARMUP steps: a median, because this 2-core machine is noisy. Fixed start-up is wall time
minus steps x steady ms/step, so it includes process launch, group init, model build and reporting; the
local cluster's own start (`ensure_ray`, with what it prestarts) is not in it and is reported beside it.

Every mode runs under the same malloc settings (`--malloc`): `tuned`, the setting the pipeline gives its
training processes (components.training.allocator), or `glibc`, glibc's defaults. glibc reads them when a
process starts, so the benchmark re-executes itself with them before it runs anything.

`--repeats N` makes N passes over the modes (a fresh local Ray cluster per pass) and reports medians over
passes and each pass's own Ray-Train-vs-DDP ratio: on a shared machine the speed drifts by ±10 % over
minutes, more than most changes being measured.

`--gpu` runs bare and ray_train_1 on one CUDA device instead (batch 256, 300 steps, statistics read back
once per report): Ray Train's cost on a GPU against the bare loop on the same card (bench/gpu_check.sh).

Writes bench/results/trainer.json. Run with `make bench` or `.venv/bin/python -m bench.trainer_bench`.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.data.prepare import prepare_dataset  # noqa: E402
from components.training.allocator import MALLOC_TUNABLES  # noqa: E402
from components.training.checkpoint import load_checkpoint  # noqa: E402
from components.training.loop import train_steps  # noqa: E402
from components.training.ray_train import quiet_ddp_stride_warning, run_torch_trainer  # noqa: E402
from components.training.worker import build_worker_state  # noqa: E402
from components.training.worker_config import WorkerConfig  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.ray_edge import ensure_ray, keep_ray_on_loopback, lean_runs  # noqa: E402
from pipeline.workers import build_worker_config  # noqa: E402

RESULTS = REPO / "bench" / "results"
PER_WORKER_BATCH = 64
GPU_BATCH, GPU_STEPS = 256, 300
STEPS = 40
WARMUP = 5
REPORT_EVERY = 10
MODES = ("bare", "torch_ddp", "ray_train_1", "ray_train_2")
MALLOC_SETTINGS = {"tuned": MALLOC_TUNABLES, "glibc": ""}  # "": glibc's defaults, and ensure_ray adds nothing


def reexec_with_malloc(setting: str) -> None:
    """Re-execute this process's command line with GLIBC_TUNABLES for `setting`, unless it already has it."""
    wanted = MALLOC_SETTINGS[setting]
    if os.environ.get("GLIBC_TUNABLES") != wanted:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": wanted})


def malloc_setting() -> str:
    """The name of the malloc setting this process runs under (what reexec_with_malloc gave it)."""
    value = os.environ.get("GLIBC_TUNABLES")
    return next((name for name, v in MALLOC_SETTINGS.items() if v == value), f"GLIBC_TUNABLES={value!r}")


def loop_config(data_dir: Path, workers: int, steps: int = STEPS, gpu: bool = False) -> WorkerConfig:
    """The default config with the document's widths, batch 64 per worker (256 on a GPU), no checkpoints
    until the end."""
    cfg = load_config(REPO / "configs" / "default.yaml",
                      ["model.g_base_channels=64", "model.d_base_channels=64"])
    batch = GPU_BATCH if gpu else PER_WORKER_BATCH
    return build_worker_config(cfg, data_dir, train_overrides={
        "num_workers": workers, "batch_size": batch * workers, "steps": GPU_STEPS if gpu else steps,
        "report_every": REPORT_EVERY, "checkpoint_every": 10 * steps, "sample_grid_every": 10 * steps,
        "threads_per_worker": 1, "use_gpu": gpu})


def summarise(mode: str, workers: int, wall_s: float, step_times_s: list[float], batch: int = PER_WORKER_BATCH) -> dict:
    steps = len(step_times_s)
    steady = sorted(step_times_s[WARMUP:])
    ms_per_step = 1000 * steady[len(steady) // 2]
    return {"mode": mode, "workers": workers, "batch_per_worker": batch, "steps": steps,
            "ms_per_step": round(ms_per_step, 1 if ms_per_step > 50 else 3),
            "images_per_s": round(1000 * batch * workers / ms_per_step, 1),
            "wall_s": round(wall_s, 2), "startup_s": round(wall_s - steps * ms_per_step / 1000, 2)}


def run_bare(data_dir: Path, gpu: bool = False) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    state, cfg, loss = build_worker_state(loop_config(data_dir, 1, gpu=gpu), rank=0, world=1,
                                          wrap=lambda m: m.to(device), device=device)
    train_steps(state, loss, cfg, cfg.steps)
    return summarise("bare", 1, time.perf_counter() - t0, state.trace["step_time_s"], cfg.batch_size)


def ddp_worker_state(rank: int, world: int, config: WorkerConfig, port: int):
    """One plain-DDP rank's process group (gloo on 127.0.0.1:port) and its (state, cfg, loss), one thread."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    quiet_ddp_stride_warning()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return build_worker_state(config, rank, world, wrap=DistributedDataParallel)


def _ddp_worker(rank: int, world: int, config: WorkerConfig, port: int, out: str) -> None:
    import torch.distributed as dist

    state, cfg, loss = ddp_worker_state(rank, world, config, port)
    train_steps(state, loss, cfg, cfg.steps, lambda s, m: None)
    if rank == 0:
        Path(out).write_text(json.dumps(state.trace["step_time_s"]))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(data_dir: Path, tmp: Path, world: int = 2, steps: int = STEPS) -> dict:
    import torch.multiprocessing as mp

    out = tmp / "ddp.json"
    t0 = time.perf_counter()
    mp.spawn(_ddp_worker, args=(world, loop_config(data_dir, world, steps), _free_port(), str(out)), nprocs=world)
    return summarise("torch_ddp", world, time.perf_counter() - t0, json.loads(out.read_text()))


def timed_train_loop(config: WorkerConfig) -> None:
    """train_loop_per_worker, with rank 0's entry and exit wall-clock times written to a timeline file."""
    import ray.train

    from components.training.ray_train import train_loop_per_worker

    rank0 = ray.train.get_context().get_world_rank() == 0
    entered = time.time()
    train_loop_per_worker(config)
    if rank0:
        Path(config.timeline_file).write_text(json.dumps({"entered": entered, "left": time.time()}))


def run_ray_train(data_dir: Path, tmp: Path, workers: int, run_name: str, steps: int = STEPS,
                  gpu: bool = False) -> dict:
    """run_name: new for every run in `tmp` (a reused one would resume that run's checkpoint)."""
    config = loop_config(data_dir, workers, steps, gpu).with_overrides(
        timeline_file=str(tmp / f"timeline-{run_name}.json"))
    steps = config.train.steps
    called = time.time()
    t0 = time.perf_counter()
    # As the train stage runs it: the pipeline's driver owns its local cluster.
    result = run_torch_trainer(config, tmp / "ray_results", run_name, loop_fn=timed_train_loop,
                               placement_group_cleaner=not lean_runs(), autoscaling_requests=not lean_runs())
    if result.error is not None:
        raise RuntimeError(f"ray train failed: {result.error}")
    wall = time.perf_counter() - t0
    returned = time.time()
    with result.checkpoint.as_directory() as d:
        trace = load_checkpoint(d)["trace"]
    row = summarise("ray_train", workers, wall, trace["step_time_s"].tolist(), config.train.batch_size // workers)
    # Where the fixed cost goes: Ray Train's launch (controller, placement group, worker processes, process
    # group) before rank 0 enters the loop; inside the loop beyond the steady steps (data, model, warm-up
    # steps, checkpoint); and the shutdown after rank 0 leaves it.
    timeline = json.loads(Path(config.timeline_file).read_text())
    in_loop = timeline["left"] - timeline["entered"]
    row["startup_breakdown_s"] = {
        "launch_until_loop": round(timeline["entered"] - called, 2),
        "in_loop_beyond_steady_steps": round(in_loop - steps * row["ms_per_step"] / 1000, 2),
        "after_loop_until_fit_returns": round(returned - timeline["left"], 2)}
    return row


def run_modes(modes: tuple[str, ...], data_dir: Path, tmp: Path, repeat: int, gpu: bool = False) -> list[dict]:
    """One pass over `modes`: bare and DDP first, then the Ray Train runs on one fresh local cluster."""
    runs = []
    for name, fn in (("bare", lambda: run_bare(data_dir, gpu)), ("torch_ddp", lambda: run_ddp(data_dir, tmp))):
        if name not in modes:
            continue
        print(f"trainer bench (pass {repeat}): {name} ...", flush=True)
        runs.append({**fn(), "repeat": repeat})
        print(f"  {runs[-1]}", flush=True)
    ray_workers = [w for w in (1, 2) if f"ray_train_{w}" in modes]
    if not ray_workers:
        return runs
    t0 = time.perf_counter()
    started = ensure_ray(None, 2)
    # Not part of a run's start-up, but shown: what the local cluster (and anything ensure_ray prestarts) costs.
    cluster_start_s = round(time.perf_counter() - t0, 2)
    try:
        for workers in ray_workers:
            print(f"trainer bench (pass {repeat}): ray_train {workers} worker(s) ...", flush=True)
            runs.append({**run_ray_train(data_dir, tmp, workers, f"bench-{workers}w-pass{repeat}", gpu=gpu),
                         "repeat": repeat, "cluster_start_s": cluster_start_s})
            print(f"  {runs[-1]}", flush=True)
    finally:
        if started:  # a fresh cluster per pass: every pass measures the same cold start
            import ray

            ray.shutdown()
    return runs


def summarise_passes(runs: list[dict]) -> dict:
    """Medians over passes, and each pass's Ray-Train-vs-DDP ratio (the two ran minutes apart, so a pass's
    ratio cancels the slow drift of this shared machine better than a ratio of medians would)."""
    summary = {}
    for key in sorted({(r["mode"], r["workers"]) for r in runs}):
        rows = [r for r in runs if (r["mode"], r["workers"]) == key]
        summary[f"{key[0]}_{key[1]}"] = {
            "passes": len(rows),
            "median_images_per_s": round(statistics.median([r["images_per_s"] for r in rows]), 1),
            "median_startup_s": round(statistics.median([r["startup_s"] for r in rows]), 2),
            "startup_s_range": [min(r["startup_s"] for r in rows), max(r["startup_s"] for r in rows)]}
        if "cluster_start_s" in rows[0]:
            summary[f"{key[0]}_{key[1]}"]["median_cluster_start_s"] = round(
                statistics.median([r["cluster_start_s"] for r in rows]), 2)
    ratios = pass_ratios(runs, ("ray_train", 2), ("torch_ddp", 2))
    summary["ray_train_2_vs_ddp_per_pass"] = ratios
    summary["ray_train_2_vs_ddp_median"] = round(statistics.median(ratios), 3) if ratios else None
    # Ray Train with one worker against the bare loop: on a GPU, the 0.95x target.
    one = pass_ratios(runs, ("ray_train", 1), ("bare", 1))
    summary["ray_train_1_vs_bare_per_pass"] = one
    summary["ray_train_1_vs_bare_median"] = round(statistics.median(one), 3) if one else None
    return summary


def pass_ratios(runs: list[dict], top: tuple[str, int], bottom: tuple[str, int]) -> list[float]:
    """images/s of the (mode, workers) run `top` over that of `bottom`, for each pass that has both."""
    ratios = []
    for repeat in sorted({r["repeat"] for r in runs}):
        pick = {(r["mode"], r["workers"]): r["images_per_s"] for r in runs if r["repeat"] == repeat}
        if top in pick and bottom in pick:
            ratios.append(round(pick[top] / pick[bottom], 3))
    return ratios


def main(modes: tuple[str, ...] = MODES,
         out: Path = RESULTS / "trainer.json", repeats: int = 1, gpu: bool = False) -> dict:
    keep_ray_on_loopback()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_dir = tmp / "data"
        prepare_dataset(load_config(REPO / "configs" / "default.yaml").data, data_dir)
        runs = [row for repeat in range(1, repeats + 1) for row in run_modes(modes, data_dir, tmp, repeat, gpu)]
    summary = summarise_passes(runs)
    ratio = summary["ray_train_2_vs_ddp_median"]
    ray2 = summary.get("ray_train_2")
    malloc = malloc_setting()
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if gpu else "cpu"},
        "model": "document widths G 64/128/256, D 64..256 at 32x32, 1 channel",
        "malloc": malloc,
        "command": "python -m bench.trainer_bench --modes " + ",".join(modes) + f" --repeats {repeats}"
                   + (f" --malloc {malloc}" if malloc in MALLOC_SETTINGS else "") + (" --gpu" if gpu else ""),
        "runs": runs,
        "summary": summary,
        "ray_train_2_vs_ddp_throughput": ratio,
        "targets": {"throughput_vs_ddp": 0.95, "startup_s": 20.0},
        "meets_throughput_target": None if ratio is None else ratio >= 0.95,
        "meets_startup_target": None if ray2 is None else ray2["median_startup_s"] < 20.0,
        # With ray_train_1 in the modes, each pass's 2-worker run is its cluster's second Ray Train run.
        "ray_train_2_on_a_cluster_that_already_ran_one": "ray_train_1" in modes and "ray_train_2" in modes,
    }
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated subset of bare, torch_ddp, ray_train_1, ray_train_2")
    parser.add_argument("--out", type=Path, default=RESULTS / "trainer.json", help="result JSON")
    parser.add_argument("--repeats", type=int, default=1,
                        help="passes over the modes, interleaved; medians and per-pass ratios are reported")
    parser.add_argument("--gpu", action="store_true", help="bare and ray_train_1 on one CUDA device")
    parser.add_argument("--malloc", choices=sorted(MALLOC_SETTINGS), default="tuned",
                        help="malloc settings for every mode: the pipeline's (tuned) or glibc's defaults")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    modes = tuple(args.modes.split(","))
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    reexec_with_malloc(args.malloc)
    if args.gpu and set(modes) - {"bare", "ray_train_1"}:
        parser.error("--gpu runs bare and ray_train_1 only (one GPU cannot host two NCCL ranks)")
    main(modes, args.out, args.repeats, args.gpu)
