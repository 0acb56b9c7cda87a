"""The ``labelloop`` command line (Typer). Every command is a thin shell over the same functions
the API and the workers call; a user error prints a message and exits non-zero, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.console import Console

from labelloop.client import ClientError
from labelloop.config import Settings, load_settings
from labelloop.errors import LabelloopError

if TYPE_CHECKING:
    from labelloop.cluster.client import CoordinatorClient
    from labelloop.cluster.protocol import Role

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

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn labelloop and client errors into a message and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (LabelloopError, ClientError) as exc:
            err_console.print(f"[red]error:[/] {getattr(exc, 'message', exc)}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def settings_from(
    data_dir: Path | None = None, import_roots: list[Path] | None = None, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    if import_roots:
        values["import_roots"] = [*load_settings().import_roots, *import_roots]
    return load_settings(**values)


def setup_logging(level: str) -> None:
    from labelloop.observability import quiet_libraries

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_libraries(level)


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
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="API processes (uvicorn workers); above 1 only with --jobs celery.",
        ),
    ] = 1,
) -> None:
    """Run the API with its workers (embedded default: SQLite, local folder, local processes)."""
    import uvicorn

    from labelloop.api.app import create_app
    from labelloop.jobs.factory import make_backend
    from labelloop.runtime import Runtime

    settings = settings_from(data_dir, import_root, jobs=jobs, local_workers=workers)
    setup_logging(settings.log_level)
    if processes > 1:
        _serve_processes(settings, host, port, processes)
        return
    rt = Runtime(settings, migrate_schema=True)
    rt.attach_jobs(make_backend(rt))
    base = f"http://{host}:{port}"
    console.print(
        f"labelloop serving on {base}  (data: {settings.resolved_data_dir}; jobs: {settings.jobs})\n"
        f"  open [bold]{base}/ui/[/] for the dashboard and the labelling page\n"
        f"  API docs: {base}/docs   Prometheus metrics: {base}/metrics\n"
        f"  Label Studio ML backend URL: {base}/labelstudio"
    )
    uvicorn.run(create_app(rt), host=host, port=port, log_level="warning")


def _serve_processes(settings: Settings, host: str, port: int, processes: int) -> None:
    """Several API processes on one port (the seed's predict service: one per inference machine).

    Each process builds its own app from the environment, so the command line's settings travel
    there as ``LABELLOOP_*`` variables; the schema is migrated once, here, before they start.
    """
    import os

    import uvicorn

    from labelloop.errors import InvalidInput
    from labelloop.store.db import migrate

    if settings.jobs != "celery":
        raise InvalidInput(
            "--processes above 1 needs --jobs celery (local workers are per process)"
        )
    migrate(settings.resolved_database_url)
    os.environ["LABELLOOP_JOBS"] = settings.jobs
    os.environ["LABELLOOP_DATA_DIR"] = str(settings.resolved_data_dir)
    os.environ["LABELLOOP_IMPORT_ROOTS"] = ":".join(str(p) for p in settings.import_roots)
    console.print(f"labelloop serving on http://{host}:{port} with {processes} processes")
    uvicorn.run(
        "labelloop.cli:api_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=processes,
        log_level="warning",
    )


def api_from_environment() -> Any:
    """The API app of one ``serve --processes`` process, from ``LABELLOOP_*`` variables."""
    from labelloop.api.app import create_app
    from labelloop.jobs.factory import make_backend
    from labelloop.runtime import Runtime

    settings = load_settings()
    setup_logging(settings.log_level)
    rt = Runtime(settings)
    rt.attach_jobs(make_backend(rt))
    return create_app(rt)


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
    for col in ("worker", "roles", "pool", "processes", "current jobs"):
        table.add_column(col)
    for w in status["workers"]:
        jobs = ", ".join(
            f"{a.get('kind', a['task'])} #{a.get('job_id', a.get('task_id', '?'))}"
            for a in w["active"]
        )
        table.add_row(
            w["name"], ",".join(w["roles"]), str(w["pool"]), str(w["concurrency"]), jobs or "-"
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


# -- the cluster bootstrap: agent side (docs/DEPLOY.md) ---------------------------------------------
@app.command()
@friendly
def agent(
    registry: Annotated[
        str | None, typer.Option(help="The coordinator's URL (LABELLOOP_AGENT_REGISTRY).")
    ] = None,
    advertise_ip: Annotated[
        str | None, typer.Option(help="This machine's IP for the others (default: detected).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="RPC port (default: a free one).")] = None,
    rabbit_node: Annotated[
        str | None, typer.Option(help="Local RabbitMQ node (default rabbit@<hostname>).")
    ] = None,
    amqp_port: Annotated[int | None, typer.Option(help="The node's AMQP port (5672).")] = None,
    dist_port: Annotated[
        int | None, typer.Option(help="The node's distribution port (AMQP port + 20000).")
    ] = None,
    rabbit_home: Annotated[
        Path | None, typer.Option(help="The node's HOME (its .erlang.cookie), data and logs.")
    ] = None,
    hosts_file: Annotated[
        Path | None, typer.Option(help="Hosts file with the managed block (/etc/hosts).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="The agent's own folder.")] = None,
    log_dir: Annotated[
        Path | None, typer.Option(help="Where worker and service logs go (data-dir/logs).")
    ] = None,
) -> None:
    """Run this machine's agent (the seed's manager_rpc): init, register, serve `initial`.

    Every option is also a LABELLOOP_AGENT_* variable; the RPC needs LABELLOOP_CLUSTER_TOKEN.
    """
    from pydantic import ValidationError

    from labelloop.cluster.agent import AgentSettings, run_agent
    from labelloop.errors import ConfigError

    given: dict[str, Any] = {
        "registry": registry, "advertise_ip": advertise_ip, "port": port,
        "rabbit_node": rabbit_node, "amqp_port": amqp_port, "dist_port": dist_port,
        "rabbit_home": rabbit_home, "hosts_file": hosts_file, "data_dir": data_dir,
        "log_dir": log_dir,
    }  # fmt: skip
    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        agent_settings = AgentSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"invalid agent settings: {exc.errors()[0]['msg']}") from None
    run_agent(agent_settings, settings.cluster_token)


# -- the cluster bootstrap: coordinator side (docs/DEPLOY.md) ---------------------------------------
cluster_app = typer.Typer(
    help="Roles, initial and status of a cluster of agents (through the coordinator).",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")

CoordinatorUrl = Annotated[
    str,
    typer.Option(
        "--coordinator", envvar="LABELLOOP_COORDINATOR_URL", help="The coordinator's URL."
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _coordinator(url: str) -> CoordinatorClient:
    from labelloop.cluster.client import CoordinatorClient

    return CoordinatorClient(url, load_settings().cluster_token)


@app.command()
@friendly
def coordinator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8700,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Folder of the coordinator's state file.")
    ] = Path("labelloop-data/coordinator"),
) -> None:
    """Run the coordinator: the address agents register with, and where `cluster` commands go."""
    from labelloop.cluster.coordinator import serve as serve_coordinator

    settings = load_settings()
    setup_logging(settings.log_level)
    console.print(f"labelloop coordinator on http://{host}:{port} (state: {state_dir.resolve()})")
    serve_coordinator(host, port, state_dir.resolve(), settings.cluster_token)


def _print_answers(result: dict[str, Any]) -> None:
    from rich.table import Table

    roles = {m["ip"]: m.get("type") or "-" for m in result["machines_info"]}
    table = Table(title="initial")
    for col in ("machine", "role", "answer", "good", "bad", "service", "workers"):
        table.add_column(col)
    for ip, role in roles.items():
        answer = result["answers"].get(ip)
        if answer is None:
            error = result["errors"].get(ip)
            table.add_row(ip, role, f"[red]{error}[/]" if error else "-", "", "", "", "")
            continue
        table.add_row(
            ip,
            role,
            "[green]ok[/]",
            str(len(answer["good_machines_info"])),
            str(len(answer["bad_machines_info"])),
            answer["rpc"] or "-",
            ", ".join(answer["workers"]) or "-",
        )
    console.print(table)
    console.print(
        f"master_train: {result['master_train'] or '-'}   "
        f"master_inference: {result['master_inference'] or '-'}   "
        f"erlang_hash: {result['erlang_hash'][:12] or '-'}…   "
        f"{result['seconds']:.1f} s"
    )
    if not result["consistent"]:
        err_console.print("[yellow]warning:[/] the agents' answers disagree (masters or cookie)")


@cluster_app.command("init")
@friendly
def cluster_init(
    coordinator: CoordinatorUrl,
    task_category: Annotated[
        str, typer.Option(help="The task's category, e.g. image-classification.")
    ],
    task_datastore_path: Annotated[
        str, typer.Option(help="Where the task lives on the shared storage.")
    ],
    task_extra_info: Annotated[str, typer.Option(help="Extra task information.")] = "",
    train: Annotated[int | None, typer.Option(help="Train machines (by address order).")] = None,
    inference: Annotated[int | None, typer.Option(help="Inference machines.")] = None,
    machines_file: Annotated[
        Path | None,
        typer.Option(help="JSON machines_info list (ip and type per machine) instead of counts."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="LABELLOOP_DATABASE_URL", help="The store every worker uses."),
    ] = None,
    api_port: Annotated[
        int | None, typer.Option(help="Port of the role services (default: the agent's choice).")
    ] = None,
    task_labels: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated labels: also create the task (or attach to the one of that "
            "name) once the cluster serves."
        ),
    ] = None,
    task_name: Annotated[
        str | None,
        typer.Option(help="The task's name (default: the datastore path's last folder)."),
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Give roles and run the seed's `initial` on every machine (in parallel)."""
    from labelloop.cluster.coordinator import load_machines_file

    body: dict[str, Any] = {
        "task_category": task_category,
        "task_extra_info": task_extra_info,
        "task_datastore_path": task_datastore_path,
        "database_url": database_url,
        "api_port": api_port,
        "train": train,
        "inference": inference,
    }
    if task_labels is not None:
        body["task_labels"] = [label.strip() for label in task_labels.split(",") if label.strip()]
        body["task_name"] = task_name
    if machines_file is not None:
        entries = load_machines_file(machines_file)
        body["machines_info"] = [e.model_dump(exclude_none=True) for e in entries]
    with _coordinator(coordinator) as client:
        result = client.init(body)
    if json_out:
        console.print_json(data=result)
    else:
        _print_answers(result)
        if result.get("task"):
            t = result["task"]
            how = "created" if t["created"] else "attached"
            console.print(f"task {t['name']!r} (id {t['id']}) {how} on {t['service']}")
    if not result["answers"]:
        raise typer.Exit(1)


@cluster_app.command("join")
@friendly
def cluster_join(
    coordinator: CoordinatorUrl,
    ip: Annotated[str, typer.Option(help="The registered machine to add.")],
    role: Annotated[str, typer.Option("--type", help="train or inference.")] = "inference",
    json_out: JsonOut = False,
) -> None:
    """Initialise one machine that registered after `cluster init`: it joins the running cluster."""
    from labelloop.errors import InvalidInput

    if role not in ("train", "inference"):
        raise InvalidInput("--type must be train or inference")
    with _coordinator(coordinator) as client:
        result = client.join(ip, cast("Role", role))
    if json_out:
        console.print_json(data=result)
    else:
        _print_answers(result)


@cluster_app.command("status")
@friendly
def cluster_status(coordinator: CoordinatorUrl, json_out: JsonOut = False) -> None:
    """Machines, roles, good/bad, masters, workers and the RabbitMQ cluster's members."""
    from rich.table import Table

    with _coordinator(coordinator) as client:
        status = client.status()
    if json_out:
        console.print_json(data=status)
        return
    masters = {
        status["master_train"]: "train master",
        status["master_inference"]: "inference master",
    }
    table = Table(title="cluster")
    for col in (
        "machine",
        "hostname",
        "role",
        "state",
        "master",
        "rabbit node",
        "workers",
        "service",
    ):
        table.add_column(col)
    for m in status["machines"]:
        colour = {"good": "green", "bad": "red"}.get(m["state"], "yellow")
        workers = ", ".join(
            f"{w['name']}{'' if w['alive'] else ' (down)'}"
            + (f" ({w['restarts']} restarts)" if w["restarts"] else "")
            for w in m.get("workers", [])
        )
        table.add_row(
            m["ip"],
            m["hostname"],
            m["type"] or "-",
            f"[{colour}]{m['state']}[/]",
            masters.get(m["ip"], ""),
            m["rabbit_node"],
            workers or "-",
            m.get("service") or "-",
        )
    console.print(table)
    console.print(f"RabbitMQ cluster: {', '.join(status['rabbit_cluster']) or '-'}")
    if status["task"]:
        t = status["task"]
        console.print(f"task: {t['task_category']} at {t['task_datastore_path']}")


@cluster_app.command("down")
@friendly
def cluster_down(coordinator: CoordinatorUrl, json_out: JsonOut = False) -> None:
    """Stop every agent's workers, services and the RabbitMQ nodes the agents started."""
    with _coordinator(coordinator) as client:
        result = client.down()
    if json_out:
        console.print_json(data=result)
        return
    for ip, got in result["machines"].items():
        console.print(f"{ip}: {'[red]' + got['error'] + '[/]' if 'error' in got else 'stopped'}")
