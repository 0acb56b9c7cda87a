"""``labelloop demo``: watch a model take over a labelling job, on the embedded default.

It writes scikit-learn's digits out as PNG files, starts ``labelloop serve`` as a separate process,
creates an image task through the HTTP API and plays an annotator who labels every item in a
random order, printing what happens as it goes.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from labelloop.client import Client
from labelloop.schemas import TaskMetrics
from labelloop.simulation import Step, StreamResult, run_stream


def write_digits(folder: Path, limit: int | None = None) -> list[tuple[Path, str]]:
    """scikit-learn's 8x8 digits as grey PNG files; returns (path, true label) pairs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        if limit is not None and i >= limit:
            break
        path = folder / f"digit-{i:04d}.png"
        if not path.exists():
            pixels = np.clip(np.round(image * 255.0 / 16.0), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(path)
        out.append((path, str(int(target))))
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    process: subprocess.Popen[bytes] | None = None

    def wait(self) -> None:
        """Until the server stops (or Ctrl-C)."""
        if self.process is not None:
            self.process.wait()


@contextmanager
def running_server(
    data_dir: Path, port: int, extra_args: list[str] | None = None, log: Path | None = None
) -> Iterator[Server]:
    """``labelloop serve`` in a child process; yields its URL and pid, stops it at the end."""
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "labelloop",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *(extra_args or []),
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        with Client(url) as client:
            deadline = time.monotonic() + 300  # importing PyTorch on a loaded machine
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"labelloop serve exited with code {proc.returncode}")
                try:
                    client.health()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield Server(url, proc.pid, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()  # type: ignore[union-attr]


def run_demo(
    data_dir: Path,
    limit: int | None,
    seed: int,
    console: Console,
    keep_serving: bool = False,
) -> dict[str, object]:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    images = write_digits(data_dir / "digits", limit)
    port = free_port()
    console.print(f"[bold]labelloop demo[/]: {len(images)} digit images, data in {data_dir}")
    with (
        # The images lie beside labelloop's data folder, below an import root: links never
        # reach into the data folder itself.
        running_server(
            data_dir / "store",
            port,
            ["--import-root", str(data_dir / "digits")],
            log=data_dir / "server.log",
        ) as server,
        Client(server.url) as client,
    ):
        url = server.url
        task = client.create_task(
            "digits demo", "image-classification", labels=[str(d) for d in range(10)]
        )
        console.print(
            f"server at {url}: watch it on the dashboard, {url}/ui/#task={task['id']} "
            f"(API docs at {url}/docs)",
            soft_wrap=True,
        )
        added = client.add_items(
            task["id"], [{"data": str(p), "external_id": p.stem} for p, _ in images]
        )
        truth = {p.stem: label for p, label in images}
        order = [(it["id"], [truth[str(it["external_id"])]]) for it in added["items"]]
        random.Random(seed).shuffle(order)
        result = _label_with_progress(client, task["id"], order, console)
        metrics = client.metrics(task["id"])
        console.print(_summary_table(result, metrics))
        if keep_serving:
            console.print(
                f"The server keeps running at {url}/ui/#task={task['id']} (Ctrl-C stops it).",
                soft_wrap=True,
            )
            # Ctrl-C stops it even when whatever started the demo ignored SIGINT (a shell's
            # background job, a supervisor): that disposition is inherited, and would make the
            # server impossible to stop this way.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                server.wait()
            except KeyboardInterrupt:
                console.print("stopping the server")
    return result.summary()


def _status(step: Step, edits: int) -> str:
    model = (
        "no model yet"
        if step.served_version is None
        else f"model-time{step.served_version}  held-out acc {(step.heldout_accuracy or 0):.3f}"
    )
    return f"{model}  edit rate {edits / step.n:.3f}"


def _label_with_progress(
    client: Client, task_id: int, order: list[tuple[int, list[str]]], console: Console
) -> StreamResult:
    """The simulated annotator, with a live bar on a terminal and plain lines elsewhere (a log,
    a pipe, CI): one every tenth of the way and one whenever a new version serves."""
    edits = 0
    if not console.is_terminal:
        every = max(1, len(order) // 10)
        served: list[int | None] = [None]

        def on_line(step: Step) -> None:
            nonlocal edits
            edits += step.edited
            if step.n % every == 0 or step.n == len(order) or step.served_version != served[0]:
                console.print(f"labelled {step.n}/{len(order)}  {_status(step, edits)}")
                served[0] = step.served_version

        return run_stream(client, task_id, order, on_line)

    progress = Progress(
        TextColumn("[bold]labelling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        bar = progress.add_task("labelling", total=len(order), status="no model yet")

        def on_step(step: Step) -> None:
            nonlocal edits
            edits += step.edited
            progress.update(bar, advance=1, status=_status(step, edits))

        return run_stream(client, task_id, order, on_step)


def _summary_table(result: StreamResult, metrics: TaskMetrics) -> Table:
    table = Table(title="labelloop demo: digits, random order, true-label annotator")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("items labelled", str(result.n))
    table.add_row("edit rate, whole stream", f"{result.edit_rate:.2%}")
    table.add_row("edit rate, second half", f"{result.edit_rate_second_half:.2%}")
    table.add_row(
        "versions trained / promoted", f"{result.versions_trained} / {result.versions_promoted}"
    )
    table.add_row("first model after", f"{result.first_model_labels} labels")
    if result.first_model_seconds is not None:
        table.add_row("time to first model", f"{result.first_model_seconds:.2f} s")
    if result.median_update_latency is not None:
        table.add_row("model update latency (median)", f"{result.median_update_latency:.2f} s")
    served = metrics.get("served_version")
    last = [v for v in metrics["versions"] if v["version"] == served]
    if last and last[0]["heldout_accuracy"] is not None:
        table.add_row("held-out accuracy of the served model", f"{last[0]['heldout_accuracy']:.2%}")
    table.add_row("wall time", f"{result.wall_seconds:.1f} s")
    return table
