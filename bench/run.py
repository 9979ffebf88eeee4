"""`make bench`: run every benchmark; each writes its JSON under bench/results/."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import data_bench, trainer_bench  # noqa: E402

if __name__ == "__main__":
    trainer_bench.reexec_with_malloc("tuned")  # both benchmarks under the pipeline's malloc settings
    data_bench.main()
    trainer_bench.main()
