from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from labelloop.config import Settings
from labelloop.errors import FetchError, ForbiddenPath, PayloadTooLarge
from labelloop.fetch import read_link, text_content


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/img.png":
            body, ctype = b"\x89PNG fake", "image/png"
        elif self.path == "/page":
            body, ctype = b"<html></html>", "text/html"
        elif self.path == "/big.png":
            body, ctype = b"x" * 5000, "image/png"
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    (tmp_path / "ok").mkdir()
    return Settings(
        data_dir=tmp_path / "data", import_roots=[tmp_path / "ok"], fetch_max_bytes=1000
    )


def test_local_paths_only_below_import_roots(cfg: Settings, tmp_path: Path) -> None:
    good = tmp_path / "ok" / "a.png"
    good.write_bytes(b"abc")
    assert read_link(str(good), cfg).raw == b"abc"
    assert read_link(f"file://{good}", cfg).raw == b"abc"
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    for link in (str(secret), f"file://{secret}", f"{tmp_path}/ok/../secret.txt", "/etc/passwd"):
        with pytest.raises(ForbiddenPath):
            read_link(link, cfg)
    with pytest.raises(FetchError, match="absolute"):
        read_link("relative/path.png", cfg)
    with pytest.raises(FetchError, match="no such file"):
        read_link(str(tmp_path / "ok" / "missing.png"), cfg)
    big = tmp_path / "ok" / "big.png"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(PayloadTooLarge):
        read_link(str(big), cfg)


def test_http_links(cfg: Settings, server: str) -> None:
    assert read_link(f"{server}/img.png", cfg).raw.startswith(b"\x89PNG")
    with pytest.raises(FetchError, match="content type"):
        read_link(f"{server}/page", cfg)
    with pytest.raises(FetchError, match="404"):
        read_link(f"{server}/missing", cfg)
    with pytest.raises(PayloadTooLarge):
        read_link(f"{server}/big.png", cfg)
    with pytest.raises(FetchError, match="cannot fetch"):
        read_link("http://127.0.0.1:9/nothing.png", cfg)
    with pytest.raises(FetchError, match="scheme"):
        read_link("ftp://example/x.png", cfg)


def test_text_hash_is_stable() -> None:
    assert text_content("hello").content_hash == text_content("hello").content_hash
    assert text_content("hello").content_hash != text_content("hello!").content_hash


def test_label_studio_media_links(tmp_path: Path) -> None:
    """Relative Label Studio links need its URL; the token goes only to links below that URL."""
    from pydantic import SecretStr

    from labelloop.fetch import labelstudio_link
    from labelloop.labelstudio.links import remember

    cfg = Settings(data_dir=tmp_path / "data", import_roots=[tmp_path / "ok"])
    with pytest.raises(FetchError, match="LABELLOOP_LABELSTUDIO_URL"):
        read_link("/data/upload/1/a.png", cfg)
    # A path below an import root stays a local file, even under a folder called data.
    local = tmp_path / "ok" / "data" / "upload" / "b.png"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"local")
    assert labelstudio_link(str(local), cfg) is None
    assert read_link(str(local), cfg).raw == b"local"

    cfg = Settings(
        data_dir=tmp_path / "data",
        labelstudio_url="http://ls.example:8080/",
        labelstudio_token=SecretStr("settings-token"),
    )
    assert labelstudio_link("/data/upload/1/a.png", cfg) == (
        "http://ls.example:8080/data/upload/1/a.png",
        {"Authorization": "Token settings-token"},
    )
    # A token from a project's setup applies to its own Label Studio only.
    remember(cfg, "http://other-ls:9000", "setup-token")
    assert labelstudio_link("http://other-ls:9000/data/upload/2/b.png", cfg) == (
        "http://other-ls:9000/data/upload/2/b.png",
        {"Authorization": "Token setup-token"},
    )
    assert labelstudio_link("http://other-ls:9000.evil.example/data/x.png", cfg) is None
    assert labelstudio_link("http://elsewhere/data/upload/2/b.png", cfg) is None
    remember(cfg, "http://other-ls:9000", None)
    assert labelstudio_link("http://other-ls:9000/data/upload/2/b.png", cfg) is None
