"""The ``labelloop`` command line (Typer). Every command is a thin shell over the same functions
the API and the workers call; a user error prints a message and exits non-zero, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from labelloop.annotators_cli import annotators_app
from labelloop.cliutil import console, err_console, friendly, setup_logging
from labelloop.cluster.cli import agent, cluster_app, coordinator
from labelloop.config import Settings, load_settings

app = typer.Typer(
    name="labelloop",
    help="Model-assisted labelling that gets better while people label.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: rich help shows a type placeholder (<bool>) against every flag and --help.
    rich_markup_mode=None,
)
db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(annotators_app, name="annotators")
__all__ = ["app", "console", "err_console", "friendly", "setup_logging"]


def settings_from(
    data_dir: Path | None = None, import_roots: list[Path] | None = None, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    if import_roots:
        values["import_roots"] = [*load_settings().import_roots, *import_roots]
    return load_settings(**values)


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        metavar="FOLDER",
        envvar="LABELLOOP_DATA_DIR",
        help="Datastore root.",
        show_default=str(Settings.model_fields["data_dir"].default),
    ),
]
ImportRoot = Annotated[
    list[Path] | None,
    typer.Option(
        "--import-root",
        metavar="FOLDER",
        help="A folder whose files items may link to (repeatable; adds to LABELLOOP_IMPORT_ROOTS).",
    ),
]


@app.command()
@friendly
def serve(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.")] = 8000,
    data_dir: DataDir = None,
    import_root: ImportRoot = None,
    jobs: Annotated[
        str | None,
        typer.Option(
            metavar="local|celery",
            envvar="LABELLOOP_JOBS",
            help="Where jobs run: local (worker processes) or celery.",
            show_default=str(Settings.model_fields["jobs"].default),
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            envvar="LABELLOOP_LOCAL_WORKERS",
            help="Local worker processes.",
            show_default=str(Settings.model_fields["local_workers"].default),
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="API processes (uvicorn workers). With local jobs (Linux), this process runs "
            "the workers and the API processes hand it their jobs. Default: "
            "LABELLOOP_API_PROCESSES, or 2 with local jobs on Linux with 2 cores or more, else 1.",
        ),
    ] = None,
) -> None:
    """Run the API with its workers (embedded default: SQLite, local folder, local processes)."""
    import uvicorn

    from labelloop.api.app import create_app
    from labelloop.cluster.gate import wait_for_gate
    from labelloop.jobs.factory import make_backend
    from labelloop.runtime import Runtime

    settings = settings_from(
        data_dir, import_root, jobs=jobs, local_workers=workers, api_processes=processes
    )
    setup_logging(settings.log_level)
    processes = api_processes(settings)
    if processes > 1:
        _serve_processes(settings, host, port, processes)
        return
    wait_for_gate()  # started by a cluster agent: code imported, now wait for its node
    rt = Runtime(settings, migrate_schema=True)
    rt.attach_jobs(make_backend(rt))
    base = f"http://{host}:{port}"
    console.print(
        f"labelloop serving on {base}  (data: {settings.resolved_data_dir}; jobs: {settings.jobs})\n"
        f"  open [bold]{base}/ui/[/] for the dashboard and the labelling page\n"
        f"  API docs: {base}/docs   Prometheus metrics: {base}/metrics\n"
        f"  Label Studio ML backend URL: {base}/labelstudio"
    )
    api = create_app(rt)
    freeze_heap()
    uvicorn.run(api, host=host, port=port, log_level="warning")


def api_processes(settings: Settings) -> int:
    """How many API processes ``serve`` runs: the setting, or for "auto" two where local jobs
    can be handed across processes (Linux) and two cores are ours, else one. A Celery cluster's
    API machines are sized by their agent."""
    import os

    from labelloop.jobs import forward

    if settings.api_processes != "auto":
        return settings.api_processes
    if settings.jobs != "local" or not forward.supported():
        return 1
    return 2 if len(os.sched_getaffinity(0)) >= 2 else 1


def _serve_processes(settings: Settings, host: str, port: int, processes: int) -> None:
    """Several API processes on one port: a 2-core machine answers on both cores.

    Each process builds its own app from the environment, so the command line's settings travel
    there as ``LABELLOOP_*`` variables; the schema is migrated once, here, before they start. With
    local jobs this process is the supervisor: it holds the data folder and runs the workers, and
    the API processes hand it the jobs they queue (:mod:`labelloop.jobs.forward`).
    """
    import importlib
    import os

    from labelloop.cluster.gate import wait_for_gate
    from labelloop.errors import InvalidInput
    from labelloop.jobs import forward
    from labelloop.prefork import serve_forked
    from labelloop.store.db import migrate

    if settings.jobs != "celery" and not forward.supported():
        raise InvalidInput(
            "--processes above 1 needs --jobs celery on this system (local workers are handed "
            "their jobs over a Linux socket)"
        )
    # What every process would import, imported once here: they are forked after it.
    for module in ("labelloop.api.app", "labelloop.jobs.factory", "labelloop.jobs.celery_backend"):
        importlib.import_module(module)
    wait_for_gate()  # started by a cluster agent: code imported, now wait for its node
    migrate(settings.resolved_database_url)
    os.environ["LABELLOOP_JOBS"] = settings.jobs
    os.environ["LABELLOOP_DATA_DIR"] = str(settings.resolved_data_dir)
    os.environ["LABELLOOP_IMPORT_ROOTS"] = ":".join(str(p) for p in settings.import_roots)
    os.environ["LABELLOOP_LOCAL_WORKERS"] = str(settings.local_workers)
    supervisor = _local_supervisor(settings) if settings.jobs != "celery" else None
    console.print(f"labelloop serving on http://{host}:{port} with {processes} processes")
    if supervisor is None:
        # Celery: nothing here holds a thread or a connection, so the API processes are forked
        # from this one after the imports (labelloop.prefork).
        code = serve_forked("labelloop.cli:api_from_environment", host, port, processes)
        if code:
            raise typer.Exit(code)
        return
    # Local jobs: this process runs the workers' threads and holds store connections, which a
    # fork would copy half-way; the API processes start fresh (uvicorn's spawn) instead.
    import uvicorn

    try:
        uvicorn.run(
            "labelloop.cli:api_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=processes,
            log_level="warning",
        )
    finally:
        supervisor()


def _local_supervisor(settings: Settings) -> Callable[[], None]:
    """Start the local workers in this process and the inbox the API processes hand jobs to;
    returns what stops them."""
    from labelloop.jobs.forward import JobInbox
    from labelloop.jobs.local import LocalJobs
    from labelloop.runtime import Runtime

    rt = Runtime(settings)
    jobs = LocalJobs(rt)
    rt.attach_jobs(jobs)
    inbox = JobInbox(rt, jobs)
    jobs.start()
    inbox.start()

    def stop() -> None:
        inbox.stop()
        rt.close()

    return stop


def api_from_environment() -> Any:
    """The API app of one ``serve --processes`` process, from ``LABELLOOP_*`` variables."""
    from labelloop.api.app import create_app
    from labelloop.jobs.factory import make_backend
    from labelloop.runtime import Runtime

    settings = load_settings()
    setup_logging(settings.log_level)
    rt = Runtime(settings)
    if settings.jobs == "celery":
        rt.attach_jobs(make_backend(rt))
    else:
        from labelloop.jobs.forward import ForwardedJobs

        rt.attach_jobs(ForwardedJobs(rt))  # the workers are the supervisor's
    api = create_app(rt)
    freeze_heap()
    return api


def freeze_heap() -> None:
    """Leave what an API process holds once started (modules, the app) out of the garbage
    collector's full passes, which otherwise walk all of it again and again while requests
    allocate: 6% of a Label Studio ``/predict``'s CPU (docs/BENCHMARKS.md). What a request
    creates is collected as before."""
    import gc

    gc.collect()
    gc.freeze()


@app.command()
@friendly
def demo(
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir", metavar="FOLDER", help="Folder for the demo's data (wiped first)."
        ),
    ] = Path("labelloop-data/demo"),
    limit: Annotated[
        int | None,
        typer.Option(metavar="N", help="Label only this many digits.", show_default="all 1,797"),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the labelling order.")] = 0,
    keep_serving: Annotated[
        bool,
        typer.Option(
            "--keep-serving", help="Keep the server up afterwards, to look around (Ctrl-C stops)."
        ),
    ] = False,
) -> None:
    """Watch a model take over a labelling job: digits, a simulated annotator, live metrics."""
    from labelloop.demo import run_demo

    run_demo(data_dir.resolve(), limit, seed, console, keep_serving)


@app.command()
@friendly
def simulate(
    dataset: Annotated[
        str,
        typer.Argument(
            metavar="DATASET",
            help="'digits', a folder of images by class, or a CSV/TSV of text,label.",
        ),
    ],
    url: Annotated[
        str, typer.Option(metavar="URL", help="The labelloop server to replay against.")
    ] = "http://127.0.0.1:8000",
    mode: Annotated[
        str,
        typer.Option(
            metavar="stream|active", help="stream (fixed order) or active (what /next asks for)."
        ),
    ] = "stream",
    out: Annotated[
        Path,
        typer.Option(metavar="FOLDER", help="Folder for report.json and learning-curve.png."),
    ] = Path("simulation"),
    seed: Annotated[
        int, typer.Option(metavar="N", help="Seed of the order (and of annotator noise).")
    ] = 0,
    target_accuracy: Annotated[
        float | None,
        typer.Option(
            metavar="ACCURACY",
            help="Auto-label at this accuracy.",
            show_default="0.98 in active mode, none in stream mode",
        ),
    ] = None,
    min_labels: Annotated[
        int, typer.Option(metavar="N", help="First training at this many labels.")
    ] = 10,
    flip_rate: Annotated[
        float, typer.Option(metavar="SHARE", help="Share of labels the annotator flips (noise).")
    ] = 0.0,
    limit: Annotated[
        int | None,
        typer.Option(metavar="N", help="Use only this many items.", show_default="all"),
    ] = None,
    images_dir: Annotated[
        Path,
        typer.Option(
            metavar="FOLDER",
            help="Where 'digits' writes its images (below an import root of the server).",
        ),
    ] = Path("labelloop-simulate/digits"),
    token: Annotated[
        str | None,
        typer.Option(envvar="LABELLOOP_API_TOKEN", metavar="TOKEN", help="API token."),
    ] = None,
) -> None:
    """Replay a labelled data set against a running server and report what labelling would cost."""
    from labelloop.replay import load
    from labelloop.replay import simulate as replay

    policy: dict[str, Any] = {"min_labels": min_labels}
    if mode == "active" or target_accuracy is not None:
        policy["auto_label"] = {"target_accuracy": target_accuracy or 0.98}
    ds = load(dataset, images_dir.resolve())
    n = ds.size(limit)
    of = "" if n == len(ds.data) else f" of {len(ds.data)}"
    console.print(f"replaying {n}{of} items of {ds.name} against {url} ({mode} mode)")
    report = replay(url, ds, mode, out, seed, policy, flip_rate, limit, token)
    console.print_json(data=report["summary"])
    if "suspects" in report:
        console.print_json(data=report["suspects"])
    console.print(f"report: {out / 'report.json'}, plot: {out / 'learning-curve.png'}")


@db_app.command("upgrade")
@friendly
def db_upgrade(data_dir: DataDir = None) -> None:
    """Create or migrate the store's schema to the newest revision."""
    from labelloop.store.db import migrate

    settings = settings_from(data_dir)
    migrate(settings.resolved_database_url)
    console.print("schema is up to date")


@app.command()
@friendly
def worker(
    role: Annotated[str, typer.Option(help="What this worker runs: train, data or inference.")],
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Pool processes (default: 1 for train and data, one per core for inference)."
        ),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname", "-n", help="Worker name, unique per host (default: <role>-<pid>@<host>)."
        ),
    ] = None,
    pool: Annotated[
        str | None, typer.Option(help="Celery pool: prefork (default), solo or threads.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker for one role (cluster mode).

    Reads LABELLOOP_BROKER_URL, LABELLOOP_DATABASE_URL and LABELLOOP_DATA_DIR (a folder every
    worker and the API see).
    """
    from labelloop.jobs.celery_worker import run_worker

    settings = settings_from(data_dir)
    setup_logging(settings.log_level)
    run_worker(
        settings,
        role,
        concurrency=concurrency,
        hostname=hostname,
        pool=pool,
        loglevel=settings.log_level,
    )


@app.command("workers")
@friendly
def list_workers(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """List live Celery workers: roles, queues, current jobs; and the queues' depths."""
    import json

    from rich.table import Table

    from labelloop.errors import Unavailable
    from labelloop.jobs.celery_backend import CeleryJobs
    from labelloop.runtime import Runtime

    rt = Runtime(settings_from(data_dir))
    try:
        status = CeleryJobs(rt).status()
    finally:
        rt.close()
    if json_out:
        console.print_json(json.dumps(status, default=str))
        return
    if not status.get("broker_ok"):
        raise Unavailable(status.get("error", "the broker is not reachable"))
    table = Table(title=f"workers on {status['broker']}")
    for col in ("worker", "roles", "pool", "processes", "current jobs", "training ranks"):
        table.add_column(col)
    for w in status["workers"]:
        jobs = ", ".join(
            f"{a.get('kind', a['task'])} #{a.get('job_id', a.get('task_id', '?'))}"
            + (f" (world of {a['world']['size']})" if a.get("world") else "")
            for a in w["active"]
        )
        # Ranks of other workers' distributed fits that this worker hosts.
        ranks = ", ".join(
            f"{r['fit']} rank {r['rank']}/{r['size']} (pid {r['pid']})" for r in w.get("ranks", [])
        )
        table.add_row(
            w["name"],
            ",".join(w["roles"]),
            str(w["pool"]),
            str(w["concurrency"]),
            jobs or "-",
            ranks or "-",
        )
    console.print(table)
    queues = Table(title="queues")
    for col in ("queue", "ready messages", "consumers"):
        queues.add_column(col)
    for name, q in status["queues"].items():
        queues.add_row(name, str(q["ready"]), str(q["consumers"]))
    console.print(queues)
    if not status["workers"]:
        err_console.print("no worker answered")


# -- the cluster bootstrap's commands live beside it (labelloop.cluster.cli, docs/DEPLOY.md) --------
app.command()(agent)
app.command()(coordinator)
app.add_typer(cluster_app, name="cluster")
