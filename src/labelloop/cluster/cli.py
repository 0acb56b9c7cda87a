"""The cluster bootstrap's commands: ``labelloop agent``, ``labelloop coordinator`` and the
operator's ``labelloop cluster ...`` (docs/DEPLOY.md). ``labelloop.cli`` mounts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer
from pydantic import ValidationError
from rich.table import Table

from labelloop.cliutil import console, err_console, friendly, setup_logging
from labelloop.cluster.agent import AgentSettings, run_agent
from labelloop.cluster.client import CoordinatorClient
from labelloop.cluster.coordinator import load_machines_file
from labelloop.cluster.coordinator import serve as serve_coordinator
from labelloop.cluster.protocol import Role
from labelloop.config import load_settings
from labelloop.errors import ConfigError, InvalidInput


# -- the cluster bootstrap: agent side (docs/DEPLOY.md) ---------------------------------------------
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

CoordinatorUrl = Annotated[
    str,
    typer.Option(
        "--coordinator", envvar="LABELLOOP_COORDINATOR_URL", help="The coordinator's URL."
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _coordinator(url: str) -> CoordinatorClient:
    return CoordinatorClient(url, load_settings().cluster_token)


@friendly
def coordinator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8700,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Folder of the coordinator's state file.")
    ] = Path("labelloop-data/coordinator"),
) -> None:
    """Run the coordinator: the address agents register with, and where `cluster` commands go."""
    settings = load_settings()
    setup_logging(settings.log_level)
    console.print(f"labelloop coordinator on http://{host}:{port} (state: {state_dir.resolve()})")
    serve_coordinator(host, port, state_dir.resolve(), settings.cluster_token)


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
