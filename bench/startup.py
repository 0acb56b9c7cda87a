"""What building the API costs a process (as ``serve`` builds it): CPU seconds, peak memory and the
heavy modules it imports, for another source tree (``--before``) and this one, alternating.

    python -m bench.startup --before /tmp/main-checkout/src --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """
import json, resource, sys
from labelloop.api.app import create_app
from labelloop.config import Settings
from labelloop.jobs.factory import make_backend
from labelloop.runtime import Runtime
rt = Runtime(Settings(data_dir=sys.argv[1], jobs=sys.argv[2]), migrate_schema=True)
make_backend(rt)
create_app(rt)
u = resource.getrusage(resource.RUSAGE_SELF)
heavy = [m for m in ("sklearn", "scipy", "torch", "sentence_transformers") if m in sys.modules]
print(json.dumps({"cpu_s": u.ru_utime + u.ru_stime, "max_rss_mb": u.ru_maxrss / 1024,
                  "heavy": heavy}))
"""


def probe(src: str, jobs: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": src}
        out = subprocess.run(
            [sys.executable, "-c", PROBE, tmp, jobs],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    answer: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other tree's src/")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1] / "src")
    trees = {"before": str(args.before.resolve()), "after": here}
    for jobs in ("celery", "local"):
        runs: dict[str, list[dict[str, object]]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():  # A B A B
                runs[name].append(probe(src, jobs))
        for name, rs in runs.items():
            cpu = statistics.median(float(r["cpu_s"]) for r in rs)  # type: ignore[arg-type]
            rss = statistics.median(float(r["max_rss_mb"]) for r in rs)  # type: ignore[arg-type]
            print(f"--jobs {jobs} {name}: CPU {cpu:.2f} s, peak RSS {rss:.0f} MB, "
                  f"heavy modules {rs[0]['heavy']}")  # fmt: skip


if __name__ == "__main__":
    main()
