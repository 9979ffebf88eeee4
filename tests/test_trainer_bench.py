"""The trainer benchmark's summary: medians over passes and each pass's own Ray-Train-vs-DDP ratio."""
from bench.trainer_bench import summarise_passes


def run(mode, workers, repeat, images_per_s, startup_s):
    return {"mode": mode, "workers": workers, "repeat": repeat, "images_per_s": images_per_s, "startup_s": startup_s}


def test_each_pass_is_compared_with_its_own_ddp_run():
    # The machine drifts: pass 2 is faster for both, so the per-pass ratios agree (0.9) while the ratio of
    # the two medians would not be what either pass measured.
    runs = [run("torch_ddp", 2, 1, 100.0, 8.0), run("ray_train", 2, 1, 90.0, 22.0),
            run("torch_ddp", 2, 2, 130.0, 7.0), run("ray_train", 2, 2, 117.0, 18.0),
            run("torch_ddp", 2, 3, 110.0, 9.0), run("ray_train", 2, 3, 104.5, 30.0)]
    s = summarise_passes(runs)
    assert s["ray_train_2_vs_ddp_per_pass"] == [0.9, 0.9, 0.95]
    assert s["ray_train_2_vs_ddp_median"] == 0.9
    assert s["ray_train_2"] == {"passes": 3, "median_images_per_s": 104.5, "median_startup_s": 22.0,
                                "startup_s_range": [18.0, 30.0]}
    assert s["torch_ddp_2"]["median_images_per_s"] == 110.0


def test_an_even_number_of_passes_takes_the_middle_mean_and_missing_modes_give_no_ratio():
    runs = [run("ray_train", 2, 1, 90.0, 21.0), run("ray_train", 2, 2, 100.0, 19.0)]
    s = summarise_passes(runs)
    assert s["ray_train_2"]["median_startup_s"] == 20.0
    assert s["ray_train_2_vs_ddp_per_pass"] == [] and s["ray_train_2_vs_ddp_median"] is None


def test_the_clusters_start_is_summarised_beside_the_runs_start_up():
    runs = [{**run("ray_train", 2, r, 100.0, 18.0), "cluster_start_s": c} for r, c in ((1, 7.0), (2, 9.0), (3, 8.5))]
    assert summarise_passes(runs)["ray_train_2"]["median_cluster_start_s"] == 8.5
    assert "median_cluster_start_s" not in summarise_passes([run("torch_ddp", 2, 1, 100.0, 6.0)])["torch_ddp_2"]


def test_the_result_names_the_malloc_setting_every_mode_ran_under(monkeypatch):
    from bench.trainer_bench import MALLOC_SETTINGS, malloc_setting
    from components.training.allocator import MALLOC_TUNABLES

    assert MALLOC_SETTINGS["tuned"] == MALLOC_TUNABLES  # the benchmark measures what the pipeline runs
    monkeypatch.setenv("GLIBC_TUNABLES", MALLOC_TUNABLES)
    assert malloc_setting() == "tuned"
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    assert malloc_setting() == "glibc"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert malloc_setting() == "GLIBC_TUNABLES='glibc.malloc.arena_max=2'"
