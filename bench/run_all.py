"""Every benchmark of docs/BENCHMARKS.md, one after the other (about two and a half hours on 2
cores).

    python -m bench.run_all            # or: make bench

Results are written to bench/results/*.json; docs/BENCHMARKS.md quotes them.
"""

from __future__ import annotations

import subprocess
import sys

#: ``python -m`` command lines, in the order docs/BENCHMARKS.md gives them.
RUNS = [
    "bench.edit_rate digits --seeds 0 1 2 --out bench/results/edit_rate_digits.json",
    "bench.edit_rate trec6 --seeds 0 1 2 --out bench/results/edit_rate_trec6.json",
    "bench.serving throughput",
    "bench.serving memory",
    "bench.active auto digits --seeds 0 1 2 --out bench/results/auto_digits.json",
    "bench.active auto digits --seeds 0 1 2 --scope dataset --out bench/results/auto_digits_dataset.json",
    "bench.active reach digits --seeds 0 1 2 --out bench/results/reach_digits.json",
    "bench.active suspects digits --seeds 0 1 2 --out bench/results/suspects_digits.json",
    "bench.active auto trec6 --seeds 0 --target 0.95 --out bench/results/auto_trec6.json",
    "bench.queue_predict --rounds 5",
    "bench.cluster_bootstrap --rounds 3",
    # docs/RELIABILITY.md, "Faults and load"
    "bench.load --minutes 10 --out bench/results/load.json",
]


def main() -> None:
    for line in RUNS:
        print(f"$ python -m {line}", flush=True)
        subprocess.run([sys.executable, "-m", *line.split()], check=True)


if __name__ == "__main__":
    main()
