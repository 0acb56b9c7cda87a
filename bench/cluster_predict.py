"""The Label Studio path through the cluster (``serve --jobs celery``) against the embedded default.

Both run at the same time on this machine, each trained on the same TREC-6 labels through Label
Studio's own calls (setup, webhook), and are measured in alternating rounds A B A B: single-task
``POST /labelstudio/predict`` (a question not seen before each time, as Label Studio sends them)
and ``GET /labelstudio/health``, p50 per round, medians over rounds. With ``--profile`` it then
records the cluster API process and the inference worker with py-spy while single predictions
run, and writes the hottest frames.

    python -m bench.cluster_predict                  # figures for docs/BENCHMARKS.md
    python -m bench.cluster_predict --profile        # and where the time goes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.datasets import trec
from bench.queue_predict import Processes, pg_database, vhost, wait_workers
from labelloop.client import Client
from labelloop.demo import free_port
from labelloop.errors import ClientError

PROJECT = "3.1764237600"


def config(labels: list[str]) -> str:
    choices = "".join(f'<Choice value="{label}"/>' for label in labels)
    return (
        '<View><Text name="text" value="$text"/>'
        f'<Choices name="label" toName="text">{choices}</Choices></View>'
    )


def ls_task(task_id: int, text: str) -> dict[str, Any]:
    return {"id": task_id, "data": {"text": text}, "annotations": [], "predictions": []}


def labelled(task_id: int, text: str, label: str) -> dict[str, Any]:
    """A Label Studio task with one annotation choosing ``label`` (the ``/train`` call's shape)."""
    result = [
        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}
    ]
    return {**ls_task(task_id, text), "annotations": [{"id": task_id, "result": result}]}


def train(url: str, cfg: str, texts: list[str], truth: list[str], timeout: float = 900) -> None:
    """Connect the project, send every labelled task (``/train``), wait for the first model."""
    with httpx.Client(base_url=url, timeout=300) as http, Client(url, timeout=120) as api:
        http.post("/labelstudio/setup", json={"project": PROJECT, "schema": cfg}).raise_for_status()
        tasks = [labelled(i + 1, t, y) for i, (t, y) in enumerate(zip(texts, truth, strict=True))]
        body = {"annotations": tasks, "project": PROJECT, "label_config": cfg}
        http.post("/labelstudio/train", json=body).raise_for_status()
        task_id = api.list_tasks()[0]["id"]
        deadline = time.monotonic() + timeout
        while True:
            state = api.get_task(task_id)
            if state["served_version"] is not None and not state["training"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no model on {url} within {timeout:g} s")
            time.sleep(0.5)


def single_predicts(url: str, cfg: str, texts: list[tuple[int, str]]) -> list[float]:
    """Milliseconds of each single-task predict (one connection, as Label Studio keeps one)."""
    out = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for task_id, text in texts:
            body = {"tasks": [ls_task(task_id, text)], "project": PROJECT, "label_config": cfg}
            t0 = time.perf_counter()
            r = http.post("/labelstudio/predict", json=body)
            out.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            assert r.json()["results"][0], r.text  # a real prediction, not "no model yet"
    return out


def healths(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            http.get("/labelstudio/health").raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)
    return out


def profile(pid: int, seconds: int, out: Path) -> Counter[str]:
    """py-spy's raw stacks of ``pid`` for ``seconds``; the frames seen most often (self + child)."""
    subprocess.run(
        ["py-spy", "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw",
         "-o", str(out), "--nonblocking", "--idle", "--subprocesses"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    frames: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        for frame in set(stack.split(";")):
            frames[frame] += int(count)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=40, help="single predicts per round and system")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--trec", type=Path, help="TREC's train_5500.label (default: shared)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cluster_predict.json"))
    args = parser.parse_args()
    data = trec(args.trec)
    cfg = config(data.labels)
    texts, truth = data.data[: args.labels], data.truth[: args.labels]
    fresh = list(enumerate(data.data[args.labels :], start=100_000))

    with tempfile.TemporaryDirectory(prefix="labelloop-bench-cp-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        procs = Processes(work / "logs")
        stack.callback(procs.stop)
        env = {**os.environ}
        for key in ("LABELLOOP_JOBS", "LABELLOOP_DATABASE_URL", "LABELLOOP_API_TOKEN"):
            env.pop(key, None)
        emb_port, q_port = free_port(), free_port()
        emb_args = ["serve", "--port", str(emb_port)]
        emb_env = {
            **env,
            "LABELLOOP_DATA_DIR": str(work / "embedded"),
            "LABELLOOP_LOCAL_START_TIMEOUT_S": "900",  # a crowded machine
        }
        embedded = procs.start("embedded", emb_args, emb_env)
        q_env = {
            **env,
            "LABELLOOP_DATA_DIR": str(work / "queue"),
            "LABELLOOP_BROKER_URL": stack.enter_context(vhost()),
            "LABELLOOP_DATABASE_URL": stack.enter_context(pg_database()),
        }
        q_api = procs.start(
            "queue-api", ["serve", "--port", str(q_port), "--jobs", "celery"], q_env
        )
        procs.start("data", ["worker", "--role", "data"], q_env)
        procs.start("train", ["worker", "--role", "train"], q_env)
        inference = procs.start("inference", ["worker", "--role", "inference"], q_env)
        urls = {"embedded": f"http://127.0.0.1:{emb_port}", "cluster": f"http://127.0.0.1:{q_port}"}
        with Client(urls["embedded"], timeout=60) as a, Client(urls["cluster"], timeout=60) as b:
            deadline = time.monotonic() + 900
            while True:  # on a crowded machine its workers may miss their start deadline: again
                if embedded.poll() is not None:
                    embedded = procs.start("embedded", emb_args, emb_env)
                try:
                    a.health()
                    break
                except ClientError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            b.wait_until_up(180)
            wait_workers(b, 1, timeout=300)
        print("training both ...", flush=True)
        threads = [
            threading.Thread(target=train, args=(u, cfg, texts, truth)) for u in urls.values()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for u in urls.values():  # warm: the model (and the sentence encoder) loaded
            for attempt in range(10):
                try:
                    single_predicts(u, cfg, fresh[:5])
                    break
                except httpx.HTTPStatusError as exc:  # 504: the first load outlasted the wait
                    print(f"warm-up {attempt + 1}: {exc.response.status_code}", flush=True)
                fresh = fresh[5:]
            healths(u, 5)
        fresh = fresh[5:]
        p50: dict[str, dict[str, list[float]]] = {
            name: {"predict": [], "health": []} for name in urls
        }
        for r in range(args.rounds):
            for name, url in urls.items():  # A B A B
                batch, fresh = fresh[: args.n], fresh[args.n :]
                p50[name]["predict"].append(statistics.median(single_predicts(url, cfg, batch)))
                p50[name]["health"].append(statistics.median(healths(url, args.n)))
            print(f"round {r + 1}: {json.dumps(p50)}", flush=True)
        result: dict[str, Any] = {
            "command": "python -m bench.cluster_predict " + " ".join(sys.argv[1:]),
            "labels": args.labels,
            "rounds": args.rounds,
            "p50_ms_per_round": p50,
        }
        for what in ("predict", "health"):
            e = statistics.median(p50["embedded"][what])
            c = statistics.median(p50["cluster"][what])
            result[what] = {"embedded_ms": e, "cluster_ms": c, "ratio": c / e, "over_ms": c - e}
            print(
                f"{what}: embedded {e:.1f} ms, cluster {c:.1f} ms (x{c / e:.2f}, +{c - e:.1f} ms)"
            )
        if args.profile:
            stop = threading.Event()

            def load() -> None:
                pool = list(fresh)
                while not stop.is_set() and pool:
                    single_predicts(urls["cluster"], cfg, pool[:10])
                    pool = pool[10:]

            loader = threading.Thread(target=load)
            loader.start()
            try:
                tops = {}
                for name, pid in (("api", q_api.pid), ("inference", inference.pid)):
                    frames = profile(pid, 15, work / f"{name}.txt")
                    total = max(frames.values())
                    tops[name] = [
                        f"{100 * n / total:5.1f}% {frame}" for frame, n in frames.most_common(40)
                    ]
                    print(f"\n{name} (share of samples that include the frame):")
                    print("\n".join(tops[name]))
                result["profile_top_frames"] = tops
            finally:
                stop.set()
                loader.join()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
