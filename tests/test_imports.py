"""Data in from the browser (server folders, uploads, CSVs) and item content out, over HTTP."""

from __future__ import annotations

import io
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from tests.support import wait_until


def new_task(c: TestClient, category: str, labels: list[str]) -> int:
    r = c.post("/api/v1/tasks", json={"name": "t", "category": category, "labels": labels})
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
    r = c.post(f"/api/v1/tasks/{task_id}/import/folder", json={"path": str(image_root)})
    assert r.status_code == 201 and r.json()["created"] == len(digit_files)
    again = c.post(
        f"/api/v1/tasks/{task_id}/import/folder", json={"path": str(image_root), "recursive": True}
    )
    assert again.json() == {
        "folder": str(image_root.resolve()),
        "created": 1,
        "existing": len(digit_files),
    }
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
    assert r.json() == {"created": 1, "existing": 0, "refused": ["evil.html"]}
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
    assert r.json() == {"created": 2, "existing": 0, "skipped": 1, "text_column": "text"}
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
