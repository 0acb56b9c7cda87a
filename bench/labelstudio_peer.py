"""Label Studio ``/predict``: labelloop against HumanSignal's ``sklearn_text_classifier`` example.

The peer is the public example of HumanSignal/label-studio-ml-backend (TF-IDF 1-3-grams and a
logistic regression), run from its own repository in its own virtualenv, never copied here, and
served as its Dockerfile does (gunicorn, 1 worker x 8 threads). ``prepare`` extracts it from a
bare mirror of the repository and installs it; ``run`` fits both on the same TREC-6 labels (the
peer through its own ``fit``, with its Label Studio download replaced by the labelled tasks;
labelloop through ``/labelstudio/train``), then measures, in alternating rounds, the same client
against each: batches of 64 new tasks from 4 concurrent clients (throughput), single-task
requests (p50), and accuracy on TREC's held-out questions; and the CPU time each server (its
process and its children: labelloop's workers, gunicorn's worker) spent per task of the throughput
phase, counted until the work it left behind settles, which a busy machine disturbs less than
the wall clock; and the client's own CPU per task (this process), which shares the machine. labelloop runs twice, as two Label
Studio projects of one embedded server: its default configuration (sentence embeddings when the
``embeddings`` extra is installed) and the fast one (``learner_params: {"embeddings": false}``).

    python -m bench.labelstudio_peer prepare --mirror MIRROR_GIT_DIR --dest /tmp/peer
    python -m bench.labelstudio_peer run --peer /tmp/peer --rounds 3
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
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.cluster_predict import config, labelled, ls_task
from bench.datasets import SHARED, trec
from bench.queue_predict import Processes
from labelloop.client import Client
from labelloop.demo import free_port

EXAMPLE = "label_studio_ml/examples/sklearn_text_classifier"
#: The example's own requirements (requirements-base.txt, requirements.txt and the package's).
PEER_PACKAGES = [
    "Flask>2.3", "colorama~=0.4", "requests~=2.31", "semver~=3.0.2", "label-studio-sdk",
    "scikit-learn", "pillow~=10.3", "gunicorn==23.0.0",
]  # fmt: skip
STAMP = "1764237600"
PROJECTS = {"labelloop": f"41.{STAMP}", "labelloop-fast": f"42.{STAMP}"}
FAST_POLICY = {"learner_params": {"embeddings": False}}
#: ``--torch-project``: the default configuration with the PyTorch original as its sentence
#: encoder (what the default used before ONNX Runtime), for a same-run comparison.
TORCH_PROJECT = ("labelloop-torch", f"43.{STAMP}", {"learner_params": {"encoder": "torch"}})
#: ``--minilm-project``: the full sentence encoder (ONNX Runtime int8), the default before the
#: static token embeddings, for a same-run comparison.
MINILM_PROJECT = (
    "labelloop-minilm",
    f"44.{STAMP}",
    {"learner_params": {"encoder": "onnx-int8"}},
)

#: Run by the peer's interpreter in the example's folder: its own ``fit``, fed the labelled tasks
#: that it would otherwise download from Label Studio.
PEER_FIT = """
import json, sys
sys.path.insert(0, ".")
from model import SklearnTextClassifier
cfg, tasks = json.load(open(sys.argv[1]))
model = SklearnTextClassifier(project_id="1", label_config=cfg)
model._get_tasks = lambda project_id: tasks
model.fit("START_TRAINING", {"annotation": {"project": 1}})
"""


def prepare(mirror: Path, dest: Path) -> None:
    """The package and the example from the mirror's HEAD, in ``dest/src``; a venv in ``dest/venv``."""
    git = ["git", "--git-dir", str(mirror)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    names = subprocess.run(
        [*git, "ls-tree", "-r", "--name-only", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.split()
    wanted = [
        n
        for n in names
        if n in ("setup.py", "README.md", "requirements.txt", "MANIFEST.in")
        or (n.startswith("label_studio_ml/") and not n.startswith("label_studio_ml/examples/"))
        or n.startswith(EXAMPLE + "/")
    ]
    src = dest / "src"
    for name in wanted:
        blob = subprocess.run([*git, "show", f"HEAD:{name}"], check=True, capture_output=True)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(blob.stdout)
    (dest / "COMMIT").write_text(head.stdout)
    venv = dest / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(src)], check=True)
    print(f"peer at {dest} (commit {head.stdout.strip()})")


def predicted(answer: dict[str, Any]) -> list[str | None]:
    """The chosen label of each result of a ``/predict`` answer (None: no prediction)."""
    out: list[str | None] = []
    for r in answer["results"]:
        result = r.get("result") if isinstance(r, dict) else None
        out.append(result[0]["value"]["choices"][0] if result else None)
    return out


class System:
    """One backend as Label Studio sees it: its URL and the project it is connected as."""

    def __init__(self, name: str, url: str, project: str, cfg: str, pid: int) -> None:
        self.name, self.url, self.project, self.cfg = name, url, project, cfg
        self.pid = pid  # the server's process: its CPU time (and its children's) is counted

    def cpu_s(self) -> float:
        """CPU seconds of the server and its live child processes (workers) so far."""
        import psutil

        root = psutil.Process(self.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total

    def settled_cpu_s(self, timeout: float = 30.0) -> float:
        """CPU seconds once work the requests left behind (queued featurize jobs) is done: the
        server uses less than 5% of a core for half a second."""
        deadline = time.monotonic() + timeout
        last = self.cpu_s()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_s()
            if now - last < 0.025:
                return now
            last = now
        return last

    def predict(self, http: httpx.Client, tasks: list[tuple[int, str]]) -> list[str | None]:
        body = {
            "tasks": [ls_task(i, t) for i, t in tasks],
            "project": self.project,
            "label_config": self.cfg,
        }
        r = http.post(f"{self.url}/predict", json=body)
        r.raise_for_status()
        labels = predicted(r.json())
        if None in labels:
            raise RuntimeError(f"{self.name}: a task without a prediction: {r.text[:300]}")
        return labels


def throughput(system: System, tasks: list[tuple[int, str]], clients: int, batch: int) -> float:
    """Tasks per second: ``clients`` threads, each sending its share in batches of ``batch``."""
    shares = [tasks[k::clients] for k in range(clients)]
    errors: list[BaseException] = []

    def client(share: list[tuple[int, str]]) -> None:
        try:
            with httpx.Client(timeout=600) as http:
                for start in range(0, len(share), batch):
                    system.predict(http, share[start : start + batch])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(tasks) / (time.perf_counter() - t0)


def singles(system: System, tasks: list[tuple[int, str]]) -> float:
    """Median milliseconds of single-task requests (one connection, as Label Studio keeps one)."""
    out = []
    with httpx.Client(timeout=600) as http:
        for task in tasks:
            t0 = time.perf_counter()
            system.predict(http, [task])
            out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def accuracy(system: System, tasks: list[tuple[int, str]], truth: list[str]) -> float:
    with httpx.Client(timeout=600) as http:
        got = [y for s in range(0, len(tasks), 64) for y in system.predict(http, tasks[s : s + 64])]
    return sum(g == t for g, t in zip(got, truth, strict=True)) / len(truth)


def fit_peer(peer: Path, model_dir: Path, cfg: str, texts: list[str], truth: list[str]) -> None:
    tasks = [labelled(i + 1, t, y) for i, (t, y) in enumerate(zip(texts, truth, strict=True))]
    for t in tasks:  # the shape its fit reads from Label Studio's API
        t["annotations"][0]["project"] = 1
    payload = model_dir / "tasks.json"
    payload.write_text(json.dumps([cfg, tasks]))
    subprocess.run(
        [str(peer / "venv" / "bin" / "python"), "-c", PEER_FIT, str(payload)],
        cwd=peer / "src" / EXAMPLE,
        env={**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "WARNING"},
        check=True,
        capture_output=True,
    )


def serve_peer(procs: Processes, peer: Path, model_dir: Path, port: int) -> int:
    """gunicorn as the example's Dockerfile runs it (``--preload``, 1 worker x 8 threads)."""
    env = {**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    with open(procs.logs / "peer.log", "ab") as log:
        proc = subprocess.Popen(
            [str(peer / "venv" / "bin" / "gunicorn"), "--preload", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", "8", "--timeout", "0", "_wsgi:app"],
            cwd=peer / "src" / EXAMPLE, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    procs.procs.append(proc)
    return proc.pid


def train_labelloop(
    url: str, project: str, cfg: str, texts: list[str], truth: list[str], policy: Any = None
) -> None:
    """Connect the project (``/setup``), set its policy, send every label (``/train``), wait for
    its first model."""
    with httpx.Client(base_url=url, timeout=600) as http, Client(url, timeout=120) as api:
        r = http.post("/labelstudio/setup", json={"project": project, "schema": cfg})
        r.raise_for_status()
        task_id = r.json()["task_id"]
        if policy is not None:
            api.update_task(task_id, policy=policy)
        tasks = [labelled(i + 1, t, y) for i, (t, y) in enumerate(zip(texts, truth, strict=True))]
        body = {"annotations": tasks, "project": project, "label_config": cfg}
        http.post("/labelstudio/train", json=body).raise_for_status()
        deadline = time.monotonic() + 900
        while True:
            state = api.get_task(task_id)
            if state["served_version"] is not None and not state["training"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no model for {project} within 900 s")
            time.sleep(0.5)


def wait_http(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.5)


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def measure(args: argparse.Namespace, systems: list[System]) -> dict[str, Any]:
    data = trec(args.trec)
    test = trec(args.trec_test or data_path(args.trec).with_name("TREC_10.label"))
    fresh = list(enumerate(data.data[args.labels :], start=1_000_000))
    per_round = args.clients * args.batches * args.batch
    if len(fresh) < args.rounds * (per_round + args.singles) + 2 * args.batch:
        raise SystemExit("not enough fresh questions for these rounds: fewer --rounds/--batches")

    def take(n: int) -> list[tuple[int, str]]:
        nonlocal fresh
        out, fresh = fresh[:n], fresh[n:]
        return out

    warm = take(2 * args.batch)  # every system gets the same questions in each step
    cold = {}
    for s in systems:
        with httpx.Client(timeout=600) as http:
            t0 = time.perf_counter()
            s.predict(http, warm[: args.batch])
            cold[s.name] = (time.perf_counter() - t0) * 1000
            s.predict(http, warm[args.batch :])
    rounds: dict[str, dict[str, list[float]]] = {
        s.name: {
            "tasks_per_s": [],
            "single_p50_ms": [],
            "cpu_ms_per_task": [],
            "client_cpu_ms_per_task": [],
        }
        for s in systems
    }
    loads = [load_average()]
    for r in range(args.rounds):
        batch_tasks, single_tasks = take(per_round), take(args.singles)
        for s in systems:  # A B A B: the same questions for each, in turn
            cpu0 = s.settled_cpu_s()
            client0 = time.process_time()  # this process: the client's threads
            rounds[s.name]["tasks_per_s"].append(
                throughput(s, batch_tasks, args.clients, args.batch)
            )
            client = time.process_time() - client0
            rounds[s.name]["client_cpu_ms_per_task"].append(1000 * client / len(batch_tasks))
            cpu = s.settled_cpu_s() - cpu0
            rounds[s.name]["cpu_ms_per_task"].append(1000 * cpu / len(batch_tasks))
            rounds[s.name]["single_p50_ms"].append(singles(s, single_tasks))
        loads.append(load_average())
        print(f"round {r + 1} (load {loads[-1]}): {json.dumps(rounds)}", flush=True)
    test_tasks = list(enumerate(test.data, start=2_000_000))
    acc = {s.name: accuracy(s, test_tasks, test.truth) for s in systems}
    peer = rounds["peer"]
    summary = {}
    for s in systems:
        own = rounds[s.name]
        ratios = [a / b for a, b in zip(own["tasks_per_s"], peer["tasks_per_s"], strict=True)]
        summary[s.name] = {
            "tasks_per_s": statistics.median(own["tasks_per_s"]),
            "throughput_vs_peer": statistics.median(ratios),
            "single_p50_ms": statistics.median(own["single_p50_ms"]),
            "cpu_ms_per_task": statistics.median(own["cpu_ms_per_task"]),
            "client_cpu_ms_per_task": statistics.median(own["client_cpu_ms_per_task"]),
            "cpu_vs_peer": statistics.median(
                [
                    a / b
                    for a, b in zip(own["cpu_ms_per_task"], peer["cpu_ms_per_task"], strict=True)
                ]
            ),
            "accuracy": acc[s.name],
            "points_over_peer": 100 * (acc[s.name] - acc["peer"]),
            "first_batch_ms": cold[s.name],
        }
        print(f"{s.name}: {json.dumps(summary[s.name])}")
    return {"per_round": rounds, "summary": summary, "load_average": loads}


def data_path(path: Path | None) -> Path:
    return path or SHARED / "trec" / "train_5500.label"


def run(args: argparse.Namespace) -> None:
    data = trec(args.trec)
    cfg = config(data.labels)
    texts, truth = data.data[: args.labels], data.truth[: args.labels]
    peer = args.peer.resolve()
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-ls-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        procs = Processes(work / "logs")
        stack.callback(procs.stop)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
        env["LABELLOOP_DATA_DIR"] = str(work / "labelloop")
        env["LABELLOOP_LOCAL_START_TIMEOUT_S"] = "900"  # a crowded machine
        env.update(dict(kv.split("=", 1) for kv in args.serve_env))
        ll_port, peer_port = free_port(), free_port()
        ll_url, peer_url = f"http://127.0.0.1:{ll_port}", f"http://127.0.0.1:{peer_port}"
        server = procs.start("labelloop", ["serve", "--port", str(ll_port), *args.serve_args], env)
        (work / "peer").mkdir()
        print("fitting the peer ...", flush=True)
        t0 = time.perf_counter()
        fit_peer(peer, work / "peer", cfg, texts, truth)
        fits = {"peer": time.perf_counter() - t0}
        peer_pid = serve_peer(procs, peer, work / "peer", peer_port)
        wait_http(f"{peer_url}/health")
        wait_http(f"{ll_url}/labelstudio/health", 900)
        projects: dict[str, tuple[str, Any]] = {
            n: (p, FAST_POLICY if n == "labelloop-fast" else None) for n, p in PROJECTS.items()
        }
        if args.torch_project:
            projects[TORCH_PROJECT[0]] = TORCH_PROJECT[1:]
        if args.minilm_project:
            projects[MINILM_PROJECT[0]] = MINILM_PROJECT[1:]
        for name, (project, policy) in projects.items():
            print(f"training {name} ...", flush=True)
            t0 = time.perf_counter()
            train_labelloop(ll_url, project, cfg, texts, truth, policy)
            fits[name] = time.perf_counter() - t0
        systems = [System("peer", peer_url, f"1.{STAMP}", cfg, peer_pid)]
        systems += [
            System(n, f"{ll_url}/labelstudio", p, cfg, server.pid) for n, (p, _) in projects.items()
        ]
        result = measure(args, systems)
        result["fit_s"] = fits
    result["command"] = "python -m bench.labelstudio_peer " + " ".join(sys.argv[1:])
    result["peer_commit"] = (peer / "COMMIT").read_text().strip()
    result["setup"] = {
        "serve_env": args.serve_env,
        "serve_args": args.serve_args,
        "labels": args.labels,
        "clients": args.clients,
        "batch": args.batch,
        "batches_per_client": args.batches,
        "singles": args.singles,
        "torch_project": args.torch_project,
        "minilm_project": args.minilm_project,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="extract the peer from a mirror and install its venv")
    p.add_argument("--mirror", type=Path, required=True, help="bare git dir of the repository")
    p.add_argument("--dest", type=Path, required=True)
    r = sub.add_parser("run", help="fit both, measure A B A B")
    r.add_argument("--peer", type=Path, required=True, help="the folder `prepare` made")
    r.add_argument("--labels", type=int, default=1000)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--clients", type=int, default=4)
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--batches", type=int, default=4, help="batches per client and round")
    r.add_argument("--singles", type=int, default=30, help="single-task requests per round")
    r.add_argument("--trec", type=Path, help="TREC's train_5500.label (default: shared)")
    r.add_argument("--trec-test", type=Path, help="TREC_10.label (default: next to --trec)")
    r.add_argument("--serve-env", nargs="*", default=[], help="KEY=VALUE for `labelloop serve`")
    r.add_argument("--serve-args", nargs="*", default=[], help="more `labelloop serve` options")
    r.add_argument("--torch-project", action="store_true", help="also the PyTorch encoder")
    r.add_argument(
        "--minilm-project", action="store_true", help="also the full sentence encoder (int8)"
    )
    r.add_argument("--out", type=Path, default=Path("bench/results/labelstudio_peer.json"))
    args = parser.parse_args()
    commands: dict[str, Callable[[], None]] = {
        "prepare": lambda: prepare(args.mirror, args.dest),
        "run": lambda: run(args),
    }
    commands[args.command]()


if __name__ == "__main__":
    main()
