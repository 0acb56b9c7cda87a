"""``labelloop simulate``: replay a labelled data set against a running server to pick a policy.

A data set is a folder of images by class (one sub-folder per label), a CSV/TSV file of text and
label, or ``digits``. The replay labels through the HTTP API, in ``stream`` mode (items in a fixed
random order, measuring the edit rate) or ``active`` mode (labelling whatever ``/next`` asks for,
with auto-labelling on), and writes a JSON report and a learning-curve PNG.
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelloop.client import (
    Client,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from labelloop.errors import InvalidInput
from labelloop.simulation import Annotator, Step, plot_curve, run_active, run_stream

#: How long the server may take to read (fetch, decode, featurize) the items before a replay.
READ_TIMEOUT_S = 600
ADD_BATCH = 5000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class LabelledSet:
    name: str
    category: str
    labels: list[str]
    data: list[str]
    truth: list[str]

    def size(self, limit: int | None = None) -> int:
        """How many items a replay with ``limit`` uses."""
        return len(self.data) if limit is None else min(limit, len(self.data))


def image_folder(folder: Path) -> LabelledSet:
    """``folder/<label>/<image>``: one sub-folder per label."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder")
    data, truth = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(sub.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                data.append(str(path))
                truth.append(sub.name)
    if len(set(truth)) < 2:
        raise InvalidInput(f"{folder} needs at least two sub-folders of images (one per label)")
    return LabelledSet(folder.name, "image-classification", sorted(set(truth)), data, truth)


def text_table(path: Path) -> LabelledSet:
    """A CSV or TSV with a header; text and label columns are named text/label (or similar),
    else the first column is taken as the label and the second as the text."""
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" or raw.split("\n", 1)[0].count("\t") else ","
    rows = list(csv.reader(raw.splitlines(), delimiter=delimiter))
    if len(rows) < 3:
        raise InvalidInput(f"{path} has too few rows")
    header = [h.strip().lower() for h in rows[0]]
    text_names = ("text", "sms", "sentence", "question", "content", "message")
    label_names = ("label", "class", "category", "target")
    ti = next((header.index(h) for h in text_names if h in header), 1)
    li = next((header.index(h) for h in label_names if h in header), 0)
    data = [r[ti] for r in rows[1:] if len(r) > max(ti, li)]
    truth = [r[li].strip() for r in rows[1:] if len(r) > max(ti, li)]
    if len(set(truth)) < 2:
        raise InvalidInput(f"{path} needs at least two distinct labels")
    return LabelledSet(path.stem, "text-classification", sorted(set(truth)), data, truth)


def digits(folder: Path) -> LabelledSet:
    from labelloop.demo import write_digits

    pairs = write_digits(folder)
    return LabelledSet(
        "digits",
        "image-classification",
        [str(d) for d in range(10)],
        [str(p) for p, _ in pairs],
        [label for _, label in pairs],
    )


def load(dataset: str, images_dir: Path) -> LabelledSet:
    if dataset == "digits":
        return digits(images_dir)
    path = Path(dataset)
    if path.is_dir():
        return image_folder(path)
    if path.is_file():
        return text_table(path)
    raise InvalidInput(
        f"{dataset!r} is not 'digits', a folder of images by class, or a CSV/TSV file"
    )


def _new_task(client: Client, name: str, ds: Any, policy: Any) -> Any:
    """A task for this run; task names are unique, so a run again on the same server gets
    ``name (2)``, ``name (3)``…"""
    for n in range(1, 1000):
        try:
            return client.create_task(
                name if n == 1 else f"{name} ({n})", ds.category, ds.labels, policy=policy
            )
        except ConflictError:
            continue
    raise InvalidInput(f"the server has too many tasks named {name!r}")


def simulate(
    url: str,
    ds: LabelledSet,
    mode: str,
    out: Path,
    seed: int = 0,
    policy: dict[str, Any] | None = None,
    flip_rate: float = 0.0,
    limit: int | None = None,
    token: str | None = None,
    on_step: Any = None,
) -> dict[str, Any]:
    """Run one replay; writes ``report.json`` and ``learning-curve.png`` into ``out``."""
    if mode not in ("stream", "active"):
        raise InvalidInput("mode must be 'stream' or 'active'")
    order = list(range(len(ds.data)))
    random.Random(seed).shuffle(order)
    if limit is not None:
        order = order[:limit]
    out.mkdir(parents=True, exist_ok=True)
    with Client(url, token=token, timeout=600) as client:
        task = _new_task(client, f"simulate {ds.name} ({mode}, seed {seed})", ds, policy)
        specs = [{"data": ds.data[i], "external_id": str(i)} for i in order]
        try:
            # One item first: a server that cannot read the files says so before the rest go in.
            added = client.add_items(task["id"], specs[:1])
            require_readable(client, task["id"], url, ds, [it["id"] for it in added["items"]])
            for start in range(1, len(specs), ADD_BATCH):
                rest = client.add_items(task["id"], specs[start : start + ADD_BATCH])
                added["items"] += rest["items"]
                require_readable(client, task["id"], url, ds, [it["id"] for it in rest["items"]])
        except InvalidInput:
            client.delete_task(task["id"])
            raise
        except (ForbiddenError, NotFoundError, InvalidRequestError) as exc:  # the links are refused
            client.delete_task(task["id"])
            raise InvalidInput(
                f"the server at {url} refused the items ({exc.detail}); nothing was replayed "
                f"and the task is deleted{_link_hint(ds)}"
            ) from None
        truth = {it["id"]: [ds.truth[int(str(it["external_id"]))]] for it in added["items"]}
        noise = Annotator(ds.labels, flip_rate, seed) if flip_rate else None
        report: dict[str, Any] = {
            "dataset": ds.name,
            "mode": mode,
            "seed": seed,
            "task_id": task["id"],
            "policy": client.get_task(task["id"])["policy"],
            "flip_rate": flip_rate,
        }
        if mode == "stream":
            stream = run_stream(
                client,
                task["id"],
                [(it["id"], truth[it["id"]]) for it in added["items"]],
                on_step,
                noise=noise,
            )
            report["summary"] = stream.summary()
            report["curve"] = stream.curve
        else:
            active = run_active(client, task["id"], truth, on_step, noise=noise)
            report["summary"] = active.summary()
            report["curve"] = active.curve
        if noise is not None:
            flagged = {s["item_id"] for s in client.suspects(task["id"], limit=10_000)["suspects"]}
            planted = noise.flipped
            hits = len(flagged & planted)
            report["suspects"] = {
                "planted": len(planted),
                "flagged": len(flagged),
                "precision": hits / len(flagged) if flagged else None,
                "recall": hits / len(planted) if planted else None,
            }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_curve(report["curve"], out / "learning-curve.png", f"{ds.name}: {mode} mode, seed {seed}")
    return report


def require_readable(
    client: Client, task_id: int, url: str, ds: LabelledSet, item_ids: list[int]
) -> None:
    """Wait until the server has read every item; any it could not read stops the replay.

    An item the server cannot read can never be labelled right, so a replay with some would
    report an accuracy that says nothing about the model (300 unreadable digits: "accuracy 0.017").
    """
    deadline = time.monotonic() + READ_TIMEOUT_S
    while True:
        counts = client.get_task(task_id)["counts"]
        if not counts["pending"]:
            break
        if time.monotonic() > deadline:
            raise InvalidInput(
                f"the server at {url} has not read {counts['pending']} items "
                f"after {READ_TIMEOUT_S} s"
            )
        time.sleep(0.1)
    if not counts["failed"]:
        return
    example = ""
    for item_id in item_ids:
        item = client.get_item(task_id, item_id)
        if item["status"] == "failed":
            example = f" (for one, {item['data']}: {item['error']})"
            break
    raise InvalidInput(
        f"the server at {url} could not read {counts['failed']} of the {counts['items']} "
        "item(s) it was given"
        f"{example}; nothing was replayed and the task is deleted{_link_hint(ds)}"
    )


def _link_hint(ds: LabelledSet) -> str:
    if not ds.category.startswith("image"):
        return ""
    return (
        ". Items link to files by path: run the server on this machine with an import root over "
        f"their folder (labelloop serve --import-root {os.path.commonpath(ds.data)})"
    )


__all__ = ["LabelledSet", "Step", "load", "require_readable", "simulate"]
