"""The command line: help, clear errors with a non-zero exit, and the demo end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelloop.cli import app
from tests.support import wait_until

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo", "db"):
        assert command in result.output


def test_help_shows_placeholders_and_defaults_a_person_reads() -> None:
    for command in (["serve"], ["demo"], ["simulate"], ["db", "upgrade"]):
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        for placeholder in ("<bool>", "<list[Path]>", "<path>", "<int>", "<float>"):
            assert placeholder not in result.output, (command, placeholder, result.output)
    serve = runner.invoke(app, ["serve", "--help"], terminal_width=200).output
    assert "--import-root FOLDER" in serve and "--data-dir FOLDER" in serve
    assert "default: (labelloop-data)" in serve and "LABELLOOP_DATA_DIR" in serve
    assert "--jobs local|celery" in serve and "default: (local)" in serve
    assert "default: (2)" in serve  # local workers
    demo = runner.invoke(app, ["demo", "--help"], terminal_width=200).output
    assert "--keep-serving " in demo


def test_bad_settings_give_a_message_not_a_traceback(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LABELLOOP_ENVIRONMENT": "production",
        "LABELLOOP_DATA_DIR": str(tmp_path),
        "LABELLOOP_CLUSTER_TOKEN": "dev-cluster-token",  # the development default: refused
    }
    proc = subprocess.run(
        [sys.executable, "-m", "labelloop", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "LABELLOOP_CLUSTER_TOKEN" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("setting", "jobs", "linux", "cores", "expected"),
    [
        ("auto", "local", True, 2, 2),
        ("auto", "local", True, 8, 2),
        ("auto", "local", True, 1, 1),
        ("auto", "local", False, 8, 1),  # local jobs cannot be handed across processes there
        ("auto", "celery", True, 8, 1),  # a cluster's API machines are sized by their agent
        ("3", "local", True, 1, 3),
        ("1", "local", True, 8, 1),
    ],
)
def test_serve_api_processes_auto_uses_two_cores_with_local_jobs_on_linux(
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    jobs: str,
    linux: bool,
    cores: int,
    expected: int,
) -> None:
    from labelloop.cli import api_processes
    from labelloop.config import Settings
    from labelloop.jobs import forward

    monkeypatch.setattr(forward, "supported", lambda: linux)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LABELLOOP_API_PROCESSES", setting)
    assert api_processes(Settings(jobs=jobs)) == expected  # type: ignore[arg-type]


def test_serve_api_processes_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from labelloop.config import Settings

    for bad in ("0", "many"):
        monkeypatch.setenv("LABELLOOP_API_PROCESSES", bad)
        with pytest.raises(ValidationError):
            Settings()


def test_db_upgrade(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "labelloop.db").exists()


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "labelloop",
            "demo",
            "--limit",
            "80",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "edit rate, whole stream" in proc.stdout
    assert "items labelled" in proc.stdout and "80" in proc.stdout
    assert "model update latency" in proc.stdout  # a model was trained and updated
    # Not on a terminal: the dashboard's address, and progress as plain lines.
    assert re.search(r"dashboard, http://127\.0\.0\.1:\d+/ui/#task=1 ", proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("labelled ")]
    assert lines[-1].startswith("labelled 80/80  model-time")
    assert any(line.startswith("labelled 8/80 ") for line in lines)


def test_demo_keeps_serving_when_asked(tmp_path: Path) -> None:
    """Ctrl-C stops it, even started as a shell starts a background job (SIGINT ignored, a
    disposition the process inherits)."""
    import httpx

    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "labelloop", "demo", "--limit", "30", "--keep-serving"),
            *("--data-dir", str(tmp_path / "demo")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "keeps running at" in line:
                break
        match = re.search(r"keeps running at (http://127\.0\.0\.1:\d+)/ui/#task=1", "".join(seen))
        assert match, "".join(seen)
        url = match.group(1)
        assert httpx.get(f"{url}/api/v1/tasks/1").json()["counts"]["human_labelled"] == 30
        assert httpx.get(f"{url}/ui/").status_code == 200
        proc.send_signal(signal.SIGINT)
        # Read what it prints while it stops: a full pipe would block its last writes.
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")


def test_simulate_writes_a_report_and_a_plot(tmp_path: Path) -> None:
    from labelloop.demo import free_port, running_server

    images = tmp_path / "digits"
    with running_server(tmp_path / "data", free_port(), ["--import-root", str(images)]) as server:
        result = runner.invoke(
            app,
            [
                "simulate",
                "digits",
                "--url",
                server.url,
                "--mode",
                "active",
                "--limit",
                "100",
                "--target-accuracy",
                "0.9",
                "--flip-rate",
                "0.05",
                "--images-dir",
                str(images),
                "--out",
                str(tmp_path / "report"),
            ],
        )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    summary = report["summary"]
    assert summary["items"] == 100
    assert summary["human_labels"] + summary["model_labelled"] == 100
    assert 0.0 <= summary["final_accuracy"] <= 1.0 and report["curve"]
    assert set(report["suspects"]) == {"planted", "flagged", "precision", "recall"}
    assert (tmp_path / "report" / "learning-curve.png").read_bytes()[:4] == b"\x89PNG"


def test_simulate_reports_a_bad_dataset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", str(tmp_path / "nothing.csv")])
    assert result.exit_code == 2
    assert "is not 'digits'" in result.output


def test_simulate_fails_loudly_when_the_server_cannot_read_the_files(tmp_path: Path) -> None:
    from PIL import Image

    from labelloop.client import Client
    from labelloop.demo import free_port, running_server

    elsewhere = tmp_path / "elsewhere"  # not below an import root of the server
    # A data set of images by class below the import root, one of them not an image at all.
    root = tmp_path / "root"
    for label in ("a", "b"):
        (root / "set" / label).mkdir(parents=True)
        for n in range(3):
            Image.new("L", (8, 8), 60 * n).save(root / "set" / label / f"{n}.png")
    (root / "set" / "b" / "broken.png").write_bytes(b"not a png")
    with running_server(tmp_path / "data", free_port(), ["--import-root", str(root)]) as server:
        outside = runner.invoke(
            app,
            [
                *("simulate", "digits", "--url", server.url, "--limit", "40"),
                *("--images-dir", str(elsewhere), "--out", str(tmp_path / "report")),
            ],
        )
        unreadable = runner.invoke(
            app,
            ["simulate", str(root / "set"), "--url", server.url, "--out", str(tmp_path / "r2")],
        )
        with Client(server.url) as ll:
            assert ll.list_tasks() == []  # no task left behind with unreadable items
    assert outside.exit_code == 2, outside.output
    assert "replaying 40 of 1797 items of digits" in outside.output
    assert "refused the items" in outside.output and "import root" in outside.output
    assert f"--import-root {elsewhere}" in outside.output
    assert not (tmp_path / "report" / "report.json").exists()
    assert unreadable.exit_code == 2, unreadable.output
    assert re.search(r"could not read 1 of the \d+ item", unreadable.output), unreadable.output
    assert "broken.png" in unreadable.output
    assert not (tmp_path / "r2" / "report.json").exists()


def test_the_readme_simulate_example_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`labelloop serve --import-root labelloop-simulate` and `labelloop simulate digits` from one
    folder (here on another port, and with a limit, to keep it short)."""
    from labelloop.demo import free_port, running_server

    monkeypatch.chdir(tmp_path)
    serve = ["--import-root", "labelloop-simulate"]
    with running_server(tmp_path / "labelloop-data", free_port(), serve) as server:
        result = runner.invoke(
            app,
            [
                *("simulate", "digits", "--mode", "active", "--target-accuracy", "0.98"),
                *("--url", server.url, "--limit", "60"),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "replaying 60 of 1797 items of digits" in result.output
    report = json.loads((tmp_path / "simulation" / "report.json").read_text())
    assert report["summary"]["items"] == 60
    assert report["summary"]["human_labels"] + report["summary"]["model_labelled"] == 60


def test_the_server_log_has_no_migration_chatter_nor_progress_bars(tmp_path: Path) -> None:
    from labelloop.client import Client
    from labelloop.demo import free_port, running_server
    from labelloop.learners.text import embeddings_available

    log = tmp_path / "server.log"
    with (
        running_server(tmp_path / "data", free_port(), log=log) as server,
        Client(server.url) as ll,
    ):
        # The full sentence encoder (a task's choice): text items are read by a worker process,
        # which loads the sentence-embedding model (the embeddings extra is installed by `make
        # test`); the default static embeddings would store nothing and load no model here.
        task = ll.create_task(
            "texts",
            "text-classification",
            ["a", "b"],
            policy={"learner_params": {"encoder": "onnx-int8"}},
        )
        ll.add_items(task["id"], [{"data": f"text number {n}"} for n in range(3)])
        wait_until(lambda: ll.get_task(task["id"])["counts"]["ready"] == 3, timeout=300)
    text = log.read_text()
    assert "labelloop serving on" in text
    assert "alembic" not in text
    assert embeddings_available(), "the embeddings extra is part of the test install"
    assert list((tmp_path / "data").rglob("minilm*")), "the model was loaded and used"
    assert "Loading weights" not in text and "it/s]" not in text


def test_an_api_process_leaves_its_startup_heap_out_of_the_collectors_passes() -> None:
    """``freeze_heap`` (each ``serve`` API process, once its app is built): what exists then is
    no longer walked by full collections; cycles made afterwards are still collected."""
    import gc

    from labelloop.cli import freeze_heap

    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
