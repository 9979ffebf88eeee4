"""The GPU step benchmark runs its own code on a CPU: rows, FLOPs, speed-ups, and a failing variant kept as
a row rather than ending the run."""
from bench import gpu_bench


def test_the_step_benchmark_runs_on_a_cpu_and_reports_every_variant(tmp_path):
    result = gpu_bench.main(tmp_path / "g.json", "cpu", ["before", "report", "cudagraphs"], [8], ["32x32x1"],
                            warmup=1, steps=2, smoke=True, time_limit_s=600)
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["before"]["gflop_per_step"] > 0 and rows["before"]["images_per_s"] > 0
    assert rows["report"]["sync"] == "report" and rows["report"]["tflops"] > 0
    assert "reduce-overhead records CUDA graphs" in rows["cudagraphs"]["error"]  # CUDA graphs need a GPU
    assert set(result["speedup_vs_before"]) == {"32x32x1/8/report"}
    assert (tmp_path / "g.json").exists()


def test_a_cards_peak_comes_from_its_name():
    assert gpu_bench.datasheet_peak("NVIDIA H200") == 989.0
    assert gpu_bench.datasheet_peak("NVIDIA H100 PCIe") == 756.0
    assert gpu_bench.datasheet_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_bench.datasheet_peak("NVIDIA L40S") == 362.0
    assert gpu_bench.datasheet_peak("Some Future GPU") is None
