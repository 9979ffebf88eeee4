"""The malloc settings the pipeline gives training processes: they take effect, and they reach the workers."""
import inspect
import os
import platform
import subprocess
import sys

import pytest

from components.training.allocator import MALLOC_TUNABLES, set_allocator_env_for_children

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is glibc's")

# 80 MiB a round: more than one of the 64 MiB heaps glibc gives a second thread's arena.
BLOCKS, BLOCK_MIB, ROUNDS = 40, 2, 20
PAGES_PER_ROUND = BLOCKS * BLOCK_MIB * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")


def reused_block_faults(blocks: int, block_mib: int, rounds: int, in_thread: bool) -> int:
    """Minor page faults while `rounds` times allocating, touching and freeing `blocks` blocks: the pattern of a
    training step's activations. glibc's defaults give the freed memory back to the kernel every round.
    in_thread: in a second thread, as Ray Train runs the loop."""
    import ctypes
    import resource
    import threading

    if in_thread:
        faults = []
        thread = threading.Thread(target=lambda: faults.append(reused_block_faults(blocks, block_mib, rounds, False)))
        thread.start()
        thread.join()
        return faults[0]

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = block_mib << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        allocated = [libc.malloc(size) for _ in range(blocks)]
        for p in allocated:
            ctypes.memset(p, 1, size)
        for p in allocated:
            libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def faults_in_a_process_with(tunables: str, in_thread: bool) -> int:
    script = (inspect.getsource(reused_block_faults)
              + f"\nprint(reused_block_faults({BLOCKS}, {BLOCK_MIB}, {ROUNDS}, {in_thread}))\n")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "GLIBC_TUNABLES": tunables},
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.parametrize("in_thread", [False, True], ids=["main thread", "second thread"])
def test_the_tuned_settings_keep_freed_memory_where_glibc_defaults_fault_it_in_every_round(in_thread):
    default = faults_in_a_process_with("", in_thread)
    tuned = faults_in_a_process_with(MALLOC_TUNABLES, in_thread)
    # Defaults: every round after the first faults all its pages in again (the premise of the setting).
    assert default >= (ROUNDS - 2) * PAGES_PER_ROUND, default
    # Tuned: only the first round's pages (a glibc that ignored the string would fault like the default).
    assert tuned <= 2 * PAGES_PER_ROUND, tuned


def test_a_value_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    set_allocator_env_for_children()
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    monkeypatch.delenv("GLIBC_TUNABLES")
    set_allocator_env_for_children()
    assert os.environ["GLIBC_TUNABLES"] == MALLOC_TUNABLES


def test_the_local_clusters_workers_start_with_the_settings(ray_cluster):
    # ensure_ray set the variable before it started the cluster (unless the user had set one).
    expected = os.environ["GLIBC_TUNABLES"]

    def in_worker(probe_source: str):  # defined here, and the probe sent as source: nothing to import there
        import os

        namespace = {}
        exec(probe_source, namespace)
        return os.environ.get("GLIBC_TUNABLES"), namespace["reused_block_faults"](BLOCKS, BLOCK_MIB, ROUNDS, True)

    probe = ray_cluster.remote(num_cpus=1)(in_worker).remote(inspect.getsource(reused_block_faults))
    seen, faults = ray_cluster.get(probe)
    assert seen == expected
    if expected == MALLOC_TUNABLES:  # read by glibc when the worker process started, not just inherited
        assert faults <= 2 * PAGES_PER_ROUND, faults
