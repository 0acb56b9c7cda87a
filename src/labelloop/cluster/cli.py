"""The cluster bootstrap's commands: ``labelloop agent``, ``labelloop coordinator`` and the
operator's ``labelloop cluster ...`` (docs/DEPLOY.md). ``labelloop.cli`` mounts them.

``labelloop cluster status`` exits with the cluster's verdict (:data:`health.EXIT_CODES`: 0
healthy, 3 degraded, 4 down; 2, as for every command, when it could not ask), so monitoring can
run it as it is.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from pydantic import ValidationError
from rich.table import Table

from labelloop.cliutil import console, err_console, friendly, setup_logging
from labelloop.cluster import health
from labelloop.cluster.client import CoordinatorClient
from labelloop.cluster.protocol import Role
from labelloop.cluster.security import (
    CA_ENV,
    client_tls,
    cluster_token,
    read_secret_file,
    server_tls,
)
from labelloop.cluster.settings import AgentSettings
from labelloop.config import load_settings
from labelloop.errors import ConfigError, InvalidInput

# The agent and the coordinator (FastAPI apps) are imported by their own commands only: every
# ``labelloop`` process (each worker and service, ``cluster init``) loads this module.

# -- labelloop agent ---------------------------------------------------------------------------
#: Settings that are secrets: never an option (a command line is visible to every user of the
#: machine); each has a file option instead (``broker_password`` -> ``--broker-password-file``).
SECRET_SETTINGS = {"broker_password"}


def _option_type(annotation: Any) -> Any:
    """The type Typer parses for a setting: ``X | None`` -> ``X``, a ``Literal`` -> ``str``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return str
    return annotation


def _agent_parameters() -> list[inspect.Parameter]:
    """One option per :class:`AgentSettings` field, named after it, documented by it; every
    default is None so that ``LABELLOOP_AGENT_*`` variables apply when an option is not given."""
    params = []
    for name, field in AgentSettings.model_fields.items():
        if name in SECRET_SETTINGS:
            continue
        kind = _option_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            flag = f"{flag}/--no-{name.replace('_', '-')}"
        env = f"LABELLOOP_AGENT_{name.upper()}"
        default = field.default if field.default is not None else "none"
        text = f"{field.description} [{env}; default {default}]"
        option = typer.Option(flag, help=text, show_default=False)
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, option],
            )
        )
    return params


def _agent(**given: Any) -> None:
    """Run this machine's agent (the seed's manager_rpc): init, register, serve `initial`.

    Every option is also a LABELLOOP_AGENT_* variable (shown with it). Secrets come from the
    environment or files: LABELLOOP_CLUSTER_TOKEN (or LABELLOOP_CLUSTER_TOKEN_FILE), the broker
    password from LABELLOOP_AGENT_BROKER_PASSWORD or --broker-password-file.
    """
    settings = load_settings()
    setup_logging(settings.log_level)
    token = cluster_token(settings)
    try:
        agent_settings = AgentSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"invalid agent setting {where}: {err['msg']}") from None
    from labelloop.cluster.agent import run_agent

    run_agent(agent_settings, token, settings.environment)


agent = friendly(_agent)
agent.__name__ = "agent"
agent.__signature__ = inspect.Signature(_agent_parameters(), return_annotation=None)  # type: ignore[attr-defined]


# -- labelloop coordinator ---------------------------------------------------------------------
TlsCert = Annotated[
    Path | None, typer.Option(help="Certificate (PEM) to serve HTTPS with (with --tls-key).")
]
TlsKey = Annotated[Path | None, typer.Option(help="Its private key (PEM).")]
TlsCa = Annotated[
    Path | None,
    typer.Option(
        "--tls-ca",
        envvar=CA_ENV,
        help="CA file to verify agents (or the coordinator) that speak HTTPS by "
        "(default: the system's CAs).",
    ),
]


@friendly
def coordinator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8700,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Folder of the coordinator's state file.")
    ] = Path("labelloop-data/coordinator"),
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
) -> None:
    """Run the coordinator: the address agents register with, and where `cluster` commands go.

    The cluster token comes from LABELLOOP_CLUSTER_TOKEN or LABELLOOP_CLUSTER_TOKEN_FILE.
    """
    settings = load_settings()
    setup_logging(settings.log_level)
    token = cluster_token(settings)
    tls = server_tls(tls_cert, tls_key)
    scheme = "https" if tls else "http"
    console.print(
        f"labelloop coordinator on {scheme}://{host}:{port} (state: {state_dir.resolve()})"
    )
    from labelloop.cluster.coordinator import serve as serve_coordinator

    serve_coordinator(host, port, state_dir.resolve(), token, tls, client_tls(tls_ca))


# -- labelloop cluster ... ---------------------------------------------------------------------
cluster_app = typer.Typer(
    help="Roles, initial and status of a cluster of agents (through the coordinator).",
    no_args_is_help=True,
)

CoordinatorUrl = Annotated[
    str,
    typer.Option(
        "--coordinator", envvar="LABELLOOP_COORDINATOR_URL", help="The coordinator's URL."
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _coordinator(url: str, ca: Path | None = None) -> CoordinatorClient:
    return CoordinatorClient(url, cluster_token(load_settings()), verify=client_tls(ca))


def _print_answers(result: dict[str, Any]) -> None:
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
    _print_failing(result.get("failing") or {})


def _print_failing(failing: dict[str, list[dict[str, Any]]]) -> None:
    """Each child that does not run, with its log's path and last lines."""
    for ip, children in failing.items():
        for child in children:
            err_console.print(
                f"[red]{ip}: {child['name']} ({child['role']}) is {child['state']}[/], last exit "
                f"code {child['last_exit_code']}; log {child['log_file']}"
            )
            for line in child.get("log_tail", []):
                err_console.print(f"    {line}", markup=False, highlight=False)


def _failed(result: dict[str, Any]) -> bool:
    return not result["answers"] or bool(result.get("failing")) or "task_error" in result


def _init_body(
    *,
    refresh: bool,
    task_category: str | None,
    task_datastore_path: str | None,
    task_extra_info: str,
    database_url: str | None,
    api_port: int | None,
    train: int | None,
    inference: int | None,
    machines_file: Path | None,
) -> dict[str, Any]:
    """The coordinator's init request from the command's options."""
    if refresh:  # the stored task is what counts; these fields only satisfy the request's shape
        return {"refresh": True, "task_category": "-", "task_datastore_path": "-"}
    if task_category is None or task_datastore_path is None:
        raise InvalidInput("give --task-category and --task-datastore-path (or --refresh)")
    body: dict[str, Any] = {
        "task_category": task_category,
        "task_extra_info": task_extra_info,
        "task_datastore_path": task_datastore_path,
        "database_url": database_url,
        "api_port": api_port,
        "train": train,
        "inference": inference,
    }
    if machines_file is not None:
        from labelloop.cluster.coordinator import load_machines_file

        entries = load_machines_file(machines_file)
        body["machines_info"] = [e.model_dump(exclude_none=True) for e in entries]
    return body


@cluster_app.command("init")
@friendly
def cluster_init(
    coordinator: CoordinatorUrl,
    task_category: Annotated[
        str | None, typer.Option(help="The task's category, e.g. image-classification.")
    ] = None,
    task_datastore_path: Annotated[
        str | None, typer.Option(help="Where the task lives on the shared storage.")
    ] = None,
    task_extra_info: Annotated[str, typer.Option(help="Extra task information.")] = "",
    train: Annotated[int | None, typer.Option(help="Train machines (by address order).")] = None,
    inference: Annotated[int | None, typer.Option(help="Inference machines.")] = None,
    machines_file: Annotated[
        Path | None,
        typer.Option(help="JSON machines_info list (ip and type per machine) instead of counts."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="LABELLOOP_DATABASE_URL",
            help="The store every worker uses. Give it in the environment (it holds a password), "
            "or with --database-url-file.",
            show_default=False,
        ),
    ] = None,
    database_url_file: Annotated[
        Path | None, typer.Option(help="A file (mode 600) holding the database URL.")
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
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Keep roles and task: every machine re-probes the others and brings its view, "
            "hosts file and missing pieces up to date (nothing running is restarted).",
        ),
    ] = False,
    tls_ca: TlsCa = None,
    json_out: JsonOut = False,
) -> None:
    """Give roles and run the seed's `initial` on every machine (in parallel).

    Prints each machine's answer, then each child process that does not run with the last lines
    of its log. Exits 0 when every answering machine's processes run, 1 when none answered, a
    process fails or the task could not be created.
    """
    if database_url_file is not None and not refresh:
        database_url = read_secret_file(database_url_file, "the database URL")
    body = _init_body(
        refresh=refresh,
        task_category=task_category,
        task_datastore_path=task_datastore_path,
        task_extra_info=task_extra_info,
        database_url=database_url,
        api_port=api_port,
        train=train,
        inference=inference,
        machines_file=machines_file,
    )
    if task_labels is not None:
        body["task_labels"] = [label.strip() for label in task_labels.split(",") if label.strip()]
        body["task_name"] = task_name
    _run_init(coordinator, tls_ca, body, json_out)


def _run_init(coordinator: str, tls_ca: Path | None, body: dict[str, Any], json_out: bool) -> None:
    with _coordinator(coordinator, tls_ca) as client:
        result = client.init(body)
    if json_out:
        console.print_json(data=result)
    else:
        _print_answers(result)
        if result.get("task"):
            t = result["task"]
            how = "created" if t["created"] else "attached"
            console.print(f"task {t['name']!r} (id {t['id']}) {how} on {t['service']}")
    if "task_error" in result:
        err_console.print(f"[red]error:[/] {result['task_error']}")
    if _failed(result):
        raise typer.Exit(1)


@cluster_app.command("join")
@friendly
def cluster_join(
    coordinator: CoordinatorUrl,
    ip: Annotated[str, typer.Option(help="The registered machine to add.")],
    role: Annotated[str, typer.Option("--type", help="train or inference.")] = "inference",
    tls_ca: TlsCa = None,
    json_out: JsonOut = False,
) -> None:
    """Initialise one machine that registered after `cluster init`: it joins the running cluster,
    and every other machine refreshes its view and hosts file (each one's answer is shown)."""
    if role not in ("train", "inference"):
        raise InvalidInput("--type must be train or inference")
    with _coordinator(coordinator, tls_ca) as client:
        result = client.join(ip, cast("Role", role))
    if json_out:
        console.print_json(data=result)
    else:
        _print_answers(result)
    if _failed(result):
        raise typer.Exit(1)


@cluster_app.command("leave")
@friendly
def cluster_leave(
    coordinator: CoordinatorUrl,
    ip: Annotated[str, typer.Option(help="The machine to remove for good.")],
    tls_ca: TlsCa = None,
    json_out: JsonOut = False,
) -> None:
    """Remove a machine for good: its processes stop, its RabbitMQ node leaves the cluster (or
    the others forget it, if it is gone), its hosts block goes, and the others refresh."""
    with _coordinator(coordinator, tls_ca) as client:
        result = client.leave(ip)
    if json_out:
        console.print_json(data=result)
        return
    got = result["agent"]
    if "error" in got:
        err_console.print(f"[yellow]{ip} did not answer:[/] {got['error']}")
        by = result.get("forgotten_by")
        console.print(f"its node forgotten by {by}" if by else "[red]no machine forgot its node[/]")
    else:
        console.print(
            f"{ip}: stopped {', '.join(got['stopped']) or 'nothing'}; left the RabbitMQ cluster: "
            f"{got['left_rabbit_cluster']}; hosts block removed: {got['hosts_block_removed']}"
        )
    if "refresh" in result:
        _print_answers(result["refresh"])


def _child_text(w: dict[str, Any]) -> str:
    if w["alive"]:
        up = f"up {w['uptime_s']:.0f} s" if w.get("uptime_s") is not None else "up"
        extra = f", {w['recent_restarts']} restarts in 5 min" if w.get("recent_restarts") else ""
        return f"{w['name']} ({up}{extra})"
    return (
        f"{w['name']} ([red]{w['state']}[/], exit {w.get('last_exit_code')}, "
        f"{w.get('recent_restarts', 0)} restarts in 5 min)"
    )


@cluster_app.command("status")
@friendly
def cluster_status(
    coordinator: CoordinatorUrl, tls_ca: TlsCa = None, json_out: JsonOut = False
) -> None:
    """Machines, roles, states, masters, workers and the RabbitMQ cluster's members.

    Exit code: 0 healthy, 3 degraded (some machine is not good, each role still serves), 4 down
    (a role has no good machine, `cluster down`, or never initialised); 2: could not ask.
    """
    with _coordinator(coordinator, tls_ca) as client:
        status = client.status()
    if json_out:
        console.print_json(data=status)
        raise typer.Exit(status["exit_code"])
    masters = {
        status["master_train"]: "train master",
        status["master_inference"]: "inference master",
    }
    table = Table(title="cluster")
    for col in ("machine", "hostname", "role", "state", "master", "rabbit node", "processes"):
        table.add_column(col)
    for m in status["machines"]:
        colour = {"good": "green", "bad": "red", "failing": "red"}.get(m["state"], "yellow")
        children = ", ".join(_child_text(w) for w in m.get("workers", []))
        table.add_row(
            m["ip"],
            m["hostname"],
            m["type"] or "-",
            f"[{colour}]{m['state']}[/]",
            masters.get(m["ip"], ""),
            m["rabbit_node"],
            children or "-",
        )
    console.print(table)
    console.print(f"RabbitMQ cluster: {', '.join(status['rabbit_cluster']) or '-'}")
    if status["task"]:
        t = status["task"]
        console.print(f"task: {t['task_category']} at {t['task_datastore_path']}")
    for m in status["machines"]:
        for problem in m.get("problems", []):
            err_console.print(f"{m['ip']}: {problem}", markup=False, highlight=False)
        for w in m.get("workers", []):
            if not w["alive"] and w.get("log_tail"):
                err_console.print(f"{m['ip']}: {w['name']}, log {w['log_file']}:", markup=False)
                for line in w["log_tail"]:
                    err_console.print(f"    {line}", markup=False, highlight=False)
    colour = {"healthy": "green", "degraded": "yellow"}.get(status["health"], "red")
    console.print(f"cluster: [{colour}]{status['health']}[/] ({status['reason']})")
    raise typer.Exit(status["exit_code"])


@cluster_app.command("down")
@friendly
def cluster_down(
    coordinator: CoordinatorUrl, tls_ca: TlsCa = None, json_out: JsonOut = False
) -> None:
    """Stop every agent's workers and services, remove the hosts blocks, and stop the RabbitMQ
    nodes the agents started. `cluster status` then says down; `cluster init` starts it again."""
    with _coordinator(coordinator, tls_ca) as client:
        result = client.down()
    if json_out:
        console.print_json(data=result)
        return
    for ip, got in result["machines"].items():
        console.print(f"{ip}: {'[red]' + got['error'] + '[/]' if 'error' in got else 'stopped'}")


@cluster_app.command("rabbit-status")
@friendly
def cluster_rabbit_status(
    coordinator: CoordinatorUrl, tls_ca: TlsCa = None, json_out: JsonOut = False
) -> None:
    """The RabbitMQ cluster the agents built: its running nodes (and any missing), partitions,
    alarms, and each queue with its replicas. Exits 3 when a node is missing or partitioned."""
    with _coordinator(coordinator, tls_ca) as client:
        got = client.rabbit()
    if json_out:
        console.print_json(data=got)
    else:
        console.print(f"asked {got['node']} (on {got['asked']})")
        console.print(f"running nodes: {', '.join(got['running_nodes']) or '-'}")
        if got["missing_nodes"]:
            console.print(f"[red]not running:[/] {', '.join(got['missing_nodes'])}")
        if got["partitions"]:
            console.print(f"[red]partitions:[/] {json.dumps(got['partitions'])}")
        if got["alarms"]:
            console.print(f"[red]alarms:[/] {json.dumps(got['alarms'])}")
        table = Table(title="queues")
        for col in ("queue", "type", "messages", "consumers", "replicas", "leader"):
            table.add_column(col)
        for q in got["queues"]:
            members = q.get("members") or []
            online = q.get("online") or []
            replicas = f"{len(online)}/{len(members)} online" if members else "-"
            table.add_row(
                str(q.get("name")), str(q.get("type")), str(q.get("messages")),
                str(q.get("consumers")), replicas, str(q.get("leader") or "-"),
            )  # fmt: skip
        console.print(table)
    if got["missing_nodes"] or got["partitions"]:
        raise typer.Exit(health.EXIT_CODES[health.Verdict.DEGRADED])


@cluster_app.command("workers")
@friendly
def cluster_workers(
    coordinator: CoordinatorUrl, tls_ca: TlsCa = None, json_out: JsonOut = False
) -> None:
    """The live Celery workers of the cluster (roles, queues, current jobs) and the queues'
    depths, as a role service sees them: no broker URL needed."""
    with _coordinator(coordinator, tls_ca) as client:
        got = client.workers()
    if json_out:
        console.print_json(data=got)
        return
    table = Table(title=f"workers (through {got['service']})")
    for col in ("worker", "queues", "processes", "current jobs"):
        table.add_column(col)
    for w in got.get("workers", []):
        jobs = ", ".join(
            f"{a.get('kind', a.get('task'))} #{a.get('job_id', '?')}" for a in w.get("active", [])
        )
        table.add_row(
            w["name"], ",".join(w.get("queues", [])), str(w.get("concurrency", "-")), jobs or "-"
        )
    console.print(table)
    queues = Table(title="queues")
    for col in ("queue", "ready messages", "consumers"):
        queues.add_column(col)
    for name, q in got.get("queues", {}).items():
        queues.add_row(name, str(q.get("ready")), str(q.get("consumers")))
    console.print(queues)


__all__ = ["SECRET_SETTINGS", "agent", "cluster_app", "coordinator"]
