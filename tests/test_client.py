"""The Python client against a live server: every endpoint, and an exception class per failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from labelloop import client as cl
from labelloop.client import Client
from labelloop.demo import free_port


def test_every_endpoint(
    live_url: str, digit_files: list[tuple[str, str]], image_root: Path
) -> None:
    with Client(live_url) as ll:
        assert ll.wait_until_up()["status"] == "ok"
        task = ll.create_task(
            "digits", "image-classification", [str(d) for d in range(10)], policy={"min_labels": 10}
        )
        tid = task["id"]
        assert task["served_version"] is None and task["counts"]["items"] == 0
        assert [t["id"] for t in ll.list_tasks()] == [tid]
        patched = ll.update_task(tid, name="digits!", policy={"growth": 0.2})
        assert patched["name"] == "digits!" and patched["policy"]["growth"] == 0.2
        assert patched["policy"]["min_labels"] == 10 and patched["auto_label"] is None

        assert ll.import_folders()["roots"] == [str(image_root.resolve())]
        assert ll.import_folders(str(image_root))["images"] == len(digit_files)
        added = ll.import_folder(tid, str(image_root))
        assert added["created"] == len(digit_files)
        # Reservations, progress, the item list, archiving, annotator tokens.
        held = ll.next_items(tid, limit=2, annotator="Ada")
        assert held["annotator"] == "Ada" and len(held["items"]) == 2
        assert ll.release_reservations(tid, "Ada") == {"released": 2}
        assert ll.progress(tid)["left"] == len(digit_files)
        listed = ll.list_items(tid, source="none", suspect=False, limit=5)
        assert listed["total"] == len(digit_files) and len(listed["items"]) == 5
        assert ll.update_task(tid, archived=True)["archived"] is True
        assert ll.update_task(tid, archived=False)["archived"] is False
        assert ll.me() == {"role": "admin", "annotator": None, "token_required": False}
        made = ll.create_annotator_token("Ada")
        assert [t["annotator"] for t in ll.annotator_tokens()] == ["Ada"]
        with Client(live_url, token=made["token"]) as ada:
            assert ada.me()["annotator"] == "Ada"
            with pytest.raises(cl.ForbiddenError):
                ada.delete_task(tid)
        ll.revoke_annotator_token(made["id"])
        assert ll.annotator_tokens()[0]["active"] is False

        first = ll.next_items(tid, limit=1)["items"][0]
        assert first["prediction"]["status"] == "no_model"
        assert ll.item_content(tid, first["id"]) == Path(first["data"]).read_bytes()
        assert ll.prediction(tid, first["id"])["status"] == "no_model"
        assert ll.predict(tid, [digit_files[0][0]])["status"] == "no_model"

        truth = {p: label for p, label in digit_files}
        seen: set[str] = set()
        batch = []
        for it in ll.next_items(tid, limit=300)["items"]:
            label = truth[it["data"]]
            if label not in seen or len(batch) < 20:
                seen.add(label)
                batch.append({"item_id": it["id"], "labels": [label], "shown_none": True})
            if len(batch) >= 30:
                break
        out = ll.annotate(tid, batch)
        assert out["training_triggered"] and len(out["annotations"]) == len(batch)
        task = ll.wait_for_training(tid)
        assert task["served_version"] == 0, [
            (j["kind"], j["state"], j["result"], j["error"])
            for j in ll.jobs(tid)
            if j["kind"] == "train"
        ]
        assert ll.models(tid)[0]["serving"] is True
        assert ll.metrics(tid)["edit_rate"]["submitted"] == len(batch)
        assert ll.jobs(tid, limit=5)[0]["kind"] in ("train", "rescore", "predict", "featurize")
        item = ll.get_item(tid, first["id"])
        assert item["id"] == first["id"]
        assert ll.predict(tid, [digit_files[0][0]])["model_version"] == 0
        assert ll.train(tid)["job_id"] is not None
        ll.wait_for_training(tid)
        assert ll.promote(tid, 0)["served_version"] == 0
        rows = [json.loads(line) for line in ll.export(tid)]
        assert len(rows) == len(digit_files)

        text = ll.create_task("texts", "text-classification", ["pos", "neg"])
        assert ll.import_csv(text["id"], "text\ngood\nbad\n")["created"] == 2
        lines = [{"id": "j1", "text": "fine", "labels": ["pos"]}, {"text": "so-so"}]
        assert ll.import_jsonl(text["id"], lines)["labelled"] == 1
        png = Path(digit_files[0][0])
        up = ll.create_task("uploads", "image-classification", ["a", "b"])
        assert ll.upload_images(up["id"], [png, ("copy.png", png.read_bytes())])["created"] == 1

        metrics = {f.name for f in text_string_to_metric_families(ll.prometheus_metrics())}
        assert {"labelloop_http_requests", "labelloop_jobs", "labelloop_edit_rate"} <= metrics

        assert ll.labelstudio_health()["status"] == "UP"
        with pytest.raises(cl.InvalidRequestError):
            ll.labelstudio_setup({"project": "3.1", "schema": "<View/>"})

        ll.delete_task(up["id"])
        with pytest.raises(cl.NotFoundError) as info:
            ll.get_task(up["id"])
        assert info.value.status == 404 and info.value.code == "not_found"


def test_errors_are_typed(live_url: str, tmp_path: Path) -> None:
    with Client(live_url) as ll:
        with pytest.raises(cl.InvalidRequestError) as bad:
            ll.create_task("x", "image-classification", ["only-one"])
        assert bad.value.status == 422 and "two labels" in bad.value.detail
        task = ll.create_task("x", "image-classification", ["a", "b"])
        with pytest.raises(cl.ForbiddenError):
            ll.import_folder(task["id"], str(tmp_path))
        with pytest.raises(cl.NotFoundError):
            ll.get_item(task["id"], 12345)
        with pytest.raises(cl.NotFoundError):  # an endpoint this server does not have (yet)
            ll.cluster_workers()
        with pytest.raises(cl.ApiError):  # every typed error is still an ApiError
            ll.promote(task["id"], 3)
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=2) as gone,
        pytest.raises(cl.ConnectionFailed),
    ):
        gone.health()


def test_readme_example_runs(
    live_url: str, digit_files: list[tuple[str, str]], image_root: Path
) -> None:
    """The README's client example, as written, against a live server."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("### From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = block.replace("http://127.0.0.1:8000", live_url).replace(
        "/path/to/images", str(image_root)
    )
    assert code != block
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    with Client(live_url) as ll:
        (task,) = ll.list_tasks()
        assert task["name"] == "cats-vs-dogs" and task["counts"]["human_labelled"] == 1
