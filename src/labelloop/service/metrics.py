"""Per-task metrics: every version's scores and the edit rate people actually experienced."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from labelloop.runtime import Runtime
from labelloop.service.common import get_task_row
from labelloop.service.models import list_versions
from labelloop.store.models import Annotation

CURVE_WINDOW = 50


def task_metrics(rt: Runtime, task_id: int) -> dict[str, Any]:
    versions = list_versions(rt, task_id)
    with rt.session() as s:
        task = get_task_row(s, task_id)
        served = task.served_version
        edits = (
            s.execute(
                select(Annotation.edited)
                .where(
                    Annotation.task_id == task_id,
                    Annotation.source == "human",
                    Annotation.edited.is_not(None),
                )
                .order_by(Annotation.id)
            )
            .scalars()
            .all()
        )
    n = len(edits)
    edited = sum(1 for e in edits if e)
    half = n // 2
    curve = []
    for start in range(0, n, CURVE_WINDOW):
        window = edits[start : start + CURVE_WINDOW]
        curve.append(
            {"labels": start + len(window), "edit_rate": sum(1 for e in window if e) / len(window)}
        )
    return {
        "task_id": task_id,
        "served_version": served,
        "edit_rate": {
            "overall": edited / n if n else None,
            "second_half": (sum(1 for e in edits[half:] if e) / (n - half))
            if n - half > 0
            else None,
            "submitted": n,
            "edited": edited,
            "curve": curve,
        },
        "versions": [
            {
                "version": v["version"],
                "serving": v["serving"],
                "status": v["status"],
                "n_labels": v["n_labels"],
                "heldout_accuracy": v["metrics"].get("cv_accuracy"),
                "heldout_macro_f1": v["metrics"].get("cv_macro_f1"),
                **{
                    f"heldout_entity_{k}": v["metrics"].get(f"cv_entity_{k}")
                    for k in ("precision", "recall", "f1")
                },
                "train_seconds": v["train_seconds"],
                "live_accuracy": v["live_accuracy"],
                "live_n": v["live_n"],
            }
            for v in versions
        ],
    }
