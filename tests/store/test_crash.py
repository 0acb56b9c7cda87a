"""The crash test: eight clients stream annotations, the server is killed with ``kill -9`` in the
middle, and after a restart every acknowledged annotation is there and the served version loads.
On SQLite and on PostgreSQL; models train (and promote) while the labels stream in."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from sqlalchemy import select

from labelloop.client import ClientError
from labelloop.config import Settings
from labelloop.runtime import Runtime
from labelloop.store.models import Annotation
from tests.support import Server, wait_until

DIGITS = [str(d) for d in range(10)]
CLIENTS = 8


def test_kill_9_mid_stream_loses_no_acknowledged_annotation(
    tmp_path: Path,
    image_root: Path,
    digit_files: list[tuple[str, str]],
    database_url: str | None,
) -> None:
    data = tmp_path / "data"
    env = {"LABELLOOP_IMPORT_ROOTS": str(image_root)}
    if database_url:
        env["LABELLOOP_DATABASE_URL"] = database_url
    server = Server(data, env)
    try:
        client = server.up()
        task = client.create_task("crash", "image-classification", DIGITS, policy={"growth": 0.2})
        items = client.add_items(task["id"], [{"data": p} for p, _ in digit_files])["items"]
        truth = {it["id"]: y for it, (_, y) in zip(items, digit_files, strict=True)}
        wait_until(lambda: client.get_task(task["id"])["counts"]["pending"] == 0, 120, "features")
        seeds: dict[str, int] = {}
        for item_id, y in truth.items():
            seeds.setdefault(y, item_id)
        client.annotate(task["id"], [{"item_id": i, "labels": [y]} for y, i in seeds.items()])
        client.wait_for_training(task["id"], timeout=300)
        assert client.get_task(task["id"])["served_version"] == 0

        # Eight clients, each labelling its own share of the items one request at a time.
        rest = [i for i in truth if i not in seeds.values()]
        acked: list[list[int]] = [[] for _ in range(CLIENTS)]
        lost = threading.Event()

        def stream(k: int) -> None:
            with server.client() as cl:
                for item_id in rest[k::CLIENTS]:
                    try:
                        cl.annotate(task["id"], [{"item_id": item_id, "labels": [truth[item_id]]}])
                    except ClientError:
                        lost.set()  # the server is gone: what was not answered may be lost
                        return
                    acked[k].append(item_id)

        threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(map(len, acked)) >= 80, 120, "annotations acknowledged")
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
        for t in threads:
            t.join(timeout=60)
        assert lost.is_set()  # the kill landed in the middle of the stream
        acknowledged = [i for share in acked for i in share]
        assert len(acknowledged) < len(rest)

        server = Server(data, env)
        client = server.up()
        settings = Settings(data_dir=data, database_url=database_url)
        store = Runtime(settings)
        try:
            with store.session() as s:
                stored = {
                    item_id: labels
                    for item_id, labels in s.execute(
                        select(Annotation.item_id, Annotation.labels).where(
                            Annotation.task_id == task["id"], Annotation.source == "human"
                        )
                    )
                }
        finally:
            store.close()
        missing = [i for i in acknowledged if stored.get(i) != [truth[i]]]
        assert not missing, f"{len(missing)} acknowledged annotations lost: {missing[:10]}"

        # The served version loads and answers, whatever training the kill interrupted.
        # (Training goes on meanwhile, so a promotion may land between two calls: each answer
        # comes from the version served when it was asked, or a newer one.)
        served = client.get_task(task["id"])["served_version"]
        assert served is not None
        answer = client.prediction(task["id"], rest[-1])
        assert answer["status"] == "ok" and answer["model_version"] >= served
        served = client.get_task(task["id"])["served_version"]
        assert client.predict(task["id"], [digit_files[0][0]])["model_version"] >= served
        # Training goes on: the labels of the stream train the next model.
        client.train(task["id"])
        done = client.wait_for_training(task["id"], timeout=300)
        assert done["served_version"] is not None
    finally:
        server.stop()
