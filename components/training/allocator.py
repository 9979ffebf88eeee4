"""glibc malloc settings for CPU training processes.

glibc's defaults hand freed memory back to the kernel: blocks above a (dynamic) mmap threshold are unmapped
on free, and the heap's top is trimmed once more than the trim threshold is free. A GAN step allocates and
frees the same multi-MiB activations and gradients every step, so every step faults them in afresh. Keeping
freed memory in the process (the largest mmap threshold glibc accepts, 32 MiB, and a 4 GiB trim threshold)
avoids that. Ray Train runs the loop in a second thread, and glibc gives other threads their own arenas, made
of 64 MiB heaps that it unmaps as soon as one is free, whatever the trim threshold; one arena for the whole
process (`arena_max=1`) keeps those too. A training process has one busy thread, and glibc's per-thread
caches (tcache) serve the others' small allocations without the arena's lock. The cost: a process keeps the
memory of its peak, which for a training process is its steady state anyway. The measured effect is in
docs/benchmarks.md.

glibc reads GLIBC_TUNABLES once, when a process starts, so the setting goes to processes about to be
started: a local Ray cluster's (pipeline.ray_edge), a submitted job's workers through its runtime env
(infra/runtime_env.yaml, infra/kuberay/rayjob.yaml; the cluster's own daemons keep glibc's defaults), the
benchmark's (bench.trainer_bench). A value the user already set wins. Other C libraries ignore it.
"""
from __future__ import annotations

import os

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit, per mallopt(3)
TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024 * 1024
MALLOC_TUNABLES = (f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD_BYTES}:"
                   f"glibc.malloc.trim_threshold={TRIM_THRESHOLD_BYTES}:glibc.malloc.arena_max=1")
ALLOCATOR_ENV = {"GLIBC_TUNABLES": MALLOC_TUNABLES}


def set_allocator_env_for_children() -> None:
    """Processes started from here on (not this one) keep freed memory; a GLIBC_TUNABLES already set wins."""
    for key, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(key, value)
