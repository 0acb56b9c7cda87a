from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from labelloop.config import Settings
from labelloop.errors import FetchError, ForbiddenPath, PayloadTooLarge
from labelloop.fetch import read_link, text_content
from tests.data_support import (
    Route,
    StubServer,
    fake_dns,
    image_route,
    png,
    png_declaring,
    redirect,
    tls_pair,
)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/img.png":
            body, ctype = png(), "image/png"
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
    httpd.server_close()


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    (tmp_path / "ok").mkdir()
    return Settings(
        data_dir=tmp_path / "data",
        import_roots=[tmp_path / "ok"],
        fetch_max_bytes=1000,
        fetch_allow_hosts=["127.0.0.1"],  # the stub servers; never the default
    )


def test_local_paths_only_below_import_roots(cfg: Settings, tmp_path: Path) -> None:
    good = tmp_path / "ok" / "a.png"
    good.write_bytes(png())
    assert read_link(str(good), cfg).raw == png()
    assert read_link(f"file://{good}", cfg).raw == png()
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
    local.write_bytes(png())
    assert labelstudio_link(str(local), cfg) is None
    assert read_link(str(local), cfg).raw == png()

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


# --- what links may reach ------------------------------------------------------------------------


def test_the_data_folder_is_never_readable(tmp_path: Path) -> None:
    """Not the store, not the Label Studio tokens, not any task's uploads: not even when an
    import root holds the data folder."""
    data = tmp_path / "data"
    secrets = [
        data / "labelloop.db",
        data / "labelstudio" / "credentials.json",
        data / "task-2" / "Uploads" / f"{'a' * 64}.png",
    ]
    for path in secrets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png())
    for roots in ([tmp_path / "ok"], [tmp_path]):
        cfg = Settings(data_dir=data, import_roots=roots)
        for path in secrets:
            for link in (str(path), f"file://{path}", f"{tmp_path}/ok/../data/{path.name}"):
                with pytest.raises(ForbiddenPath):
                    read_link(link, cfg)


def test_uploads_are_read_only_within_their_own_task(tmp_path: Path) -> None:
    from labelloop.datastore import TaskFolder

    cfg = Settings(data_dir=tmp_path / "data")
    own, other = TaskFolder(cfg.resolved_data_dir, 1), TaskFolder(cfg.resolved_data_dir, 2)
    name = f"{'b' * 64}.png"
    own.uploads.mkdir(parents=True)
    (own.uploads / name).write_bytes(png())
    assert read_link(f"upload:{name}", cfg, own).raw == png()
    with pytest.raises(FetchError, match="no such file"):
        read_link(f"upload:{name}", cfg, other)
    with pytest.raises(ForbiddenPath):
        read_link(f"upload:{name}", cfg)  # no task: no upload
    for bad in ("../task-2/x.png", f"{'b' * 64}.svg", "/etc/passwd", f"{'b' * 64}.png/.."):
        with pytest.raises(FetchError):
            read_link(f"upload:{bad}", cfg, own)
    # Links stored before uploads were named by reference (a path into the task's own uploads)
    # are still read, for that task only.
    legacy = str(own.uploads / name)
    assert read_link(legacy, cfg, own).raw == png()
    for task in (other, None):
        with pytest.raises(ForbiddenPath):
            read_link(legacy, cfg, task)


def test_control_characters_and_nul_in_links_are_refused(cfg: Settings, tmp_path: Path) -> None:
    for link in (f"{tmp_path}/ok/a\x00.png", f"file://{tmp_path}/ok/a%00.png", "http://x/a\rb.png"):
        with pytest.raises(FetchError) as err:
            read_link(link, cfg)
        assert "NUL" in err.value.message or "control" in err.value.message


def test_local_addresses_are_refused_in_every_spelling(tmp_path: Path) -> None:
    """Loopback by name, as a decimal, in hex, shortened, IPv4-mapped, IPv6, unspecified: all
    refused by default before any connection, and the server never sees a request."""
    from labelloop.errors import ForbiddenAddress

    cfg = Settings(data_dir=tmp_path / "data")
    with StubServer({"/img.png": image_route()}) as stub:
        p = stub.port
        for host in (
            "127.0.0.1",
            "localhost",
            "LocalHost",
            "2130706433",
            "0x7f.1",
            "127.1",
            "0x7f000001",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::1]",
            "0.0.0.0",
            "0",
            "[::]",
        ):
            with pytest.raises(ForbiddenAddress, match="LABELLOOP_FETCH_ALLOW_HOSTS"):
                read_link(f"http://{host}:{p}/img.png", cfg)
        with pytest.raises(FetchError):  # httpx refuses the octal spelling outright
            read_link(f"http://0177.0.0.1:{p}/img.png", cfg)
        assert stub.seen == []
        # The operator's allow-list names the stub: then it is read.
        allowed = Settings(data_dir=tmp_path / "data", fetch_allow_hosts=["127.0.0.0/8"])
        assert read_link(f"{stub.url}/img.png", allowed).raw == png()
        assert read_link(f"http://2130706433:{p}/img.png", allowed).raw == png()
        by_name = Settings(data_dir=tmp_path / "data", fetch_allow_hosts=["localhost"])
        assert read_link(f"http://localhost:{p}/img.png", by_name).raw == png()
        with pytest.raises(ForbiddenAddress):
            read_link(f"http://127.0.0.1:{p}/img.png", by_name)  # a name, not its address


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # cloud metadata
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # shared address space (carrier NAT)
        "127.8.8.8",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",  # site-local
        "ff02::1",
        "2001:db8::1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str, tmp_path: Path) -> None:
    import ipaddress

    from labelloop.errors import ForbiddenAddress
    from labelloop.fetch import check_url, refusal

    assert refusal(ipaddress.ip_address(address)) is not None
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ForbiddenAddress):  # a literal address: refused without any connection
        check_url(f"http://{host}/latest/meta-data/", Settings(data_dir=tmp_path))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_pass(address: str) -> None:
    import ipaddress

    from labelloop.fetch import refusal

    assert refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    from labelloop.config import load_settings
    from labelloop.fetch import AllowList

    monkeypatch.setenv("LABELLOOP_FETCH_ALLOW_HOSTS", "10.0.0.0/8, minio.internal ,::1")
    s = load_settings()
    assert s.fetch_allow_hosts == ["10.0.0.0/8", "minio.internal", "::1"]
    allow = AllowList.of(s)
    assert allow.admits("x", ipaddress.ip_address("10.9.9.9"))
    assert allow.admits("x", ipaddress.ip_address("::ffff:10.9.9.9"))
    assert allow.admits("x", ipaddress.ip_address("::1"))
    assert allow.admits("MINIO.internal.", ipaddress.ip_address("192.168.0.5"))
    assert not allow.admits("x", ipaddress.ip_address("192.168.0.5"))
    assert not allow.admits("x", ipaddress.ip_address("127.0.0.1"))
    monkeypatch.delenv("LABELLOOP_FETCH_ALLOW_HOSTS")
    assert AllowList.of(Settings()) == AllowList(frozenset(), ())


def test_redirects_are_checked_at_every_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the name ``outer.test`` is allowed: a redirect from it to the address behind it (also
    spelled as a decimal), or to a file, is refused, and the server it points to never sees a
    request."""
    from labelloop.errors import ForbiddenAddress

    fake_dns(monkeypatch, {"outer.test": ["127.0.0.1"]})
    cfg = Settings(data_dir=tmp_path, fetch_allow_hosts=["outer.test"])
    inner = StubServer({"/secret.png": image_route()})
    routes = {
        "/img.png": image_route(),
        "/to-inner": redirect(f"{inner.url}/secret.png"),
        "/to-inner-decimal": redirect(f"http://2130706433:{inner.port}/secret.png", 307),
        "/to-localhost": redirect(f"http://localhost:{inner.port}/secret.png", 303),
        "/to-self": redirect("/img.png", 301),
        "/twice": redirect("/to-self", 308),
        "/loop": redirect("/loop"),
        "/to-file": redirect("file:///etc/passwd"),
        "/nowhere": Route(status=302),
    }
    with inner, StubServer(routes) as outer:
        base = f"http://outer.test:{outer.port}"
        for path in ("/to-inner", "/to-inner-decimal", "/to-localhost"):
            with pytest.raises(ForbiddenAddress):
                read_link(f"{base}{path}", cfg)
        assert inner.seen == []
        assert read_link(f"{base}/to-self", cfg).raw == png()
        assert read_link(f"{base}/twice", cfg).raw == png()
        with pytest.raises(FetchError, match="redirects more than 5 times"):
            read_link(f"{base}/loop", cfg)
        assert sum(s.path == "/loop" for s in outer.seen) == 6
        with pytest.raises(FetchError, match="http"):
            read_link(f"{base}/to-file", cfg)
        with pytest.raises(FetchError, match="without saying where"):
            read_link(f"{base}/nowhere", cfg)


def test_the_checked_address_is_the_one_connected(
    cfg: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is looked up once, for the check; the request goes to the checked address (a
    second lookup could answer another one: DNS rebinding), with the name in ``Host``."""
    lookups = fake_dns(monkeypatch, {"rebind.test": ["127.0.0.1"]})
    with StubServer({"/img.png": image_route()}) as stub:
        assert read_link(f"http://rebind.test:{stub.port}/img.png", cfg).raw == png()
        assert lookups == ["rebind.test"]
        assert [s.host for s in stub.seen] == [f"rebind.test:{stub.port}"]


def test_a_slow_server_cannot_hold_a_fetch_past_the_time_limit(tmp_path: Path) -> None:
    """Each byte comes well within the time-out, but the whole answer does not."""
    cfg = Settings(data_dir=tmp_path, fetch_allow_hosts=["127.0.0.1"], fetch_timeout_s=0.5)
    slow = Route(body=png(), headers={"content-type": "image/png"}, drip_s=0.05)
    with StubServer({"/slow.png": slow}) as stub, pytest.raises(FetchError, match="timed out"):
        read_link(f"{stub.url}/slow.png", cfg)


def test_label_studio_gets_its_token_only_for_media_paths(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from labelloop.fetch import labelstudio_link

    cfg = Settings(
        data_dir=tmp_path / "data",
        labelstudio_url="http://ls.example:8080",
        labelstudio_token=SecretStr("t0k"),
    )
    auth = {"Authorization": "Token t0k"}
    for path in ("/data/upload/1/a.png", "/data/local-files/?d=x/a.png", "/storage-data/x.png"):
        assert labelstudio_link(f"http://ls.example:8080{path}", cfg) == (
            f"http://ls.example:8080{path}",
            auth,
        )
    assert labelstudio_link("http://ls.example:80/data/upload/1/a.png", cfg) is None
    for path in (
        "/api/projects/",
        "/api/current-user/whoami",
        "/data/avatars/a.png",
        "/tasks/1/",
        "/data/upload/%2e%2e/%2e%2e/api/projects",
        "/data/upload/..%2f..%2fapi/projects",
        "/data/upload/%2E%2E/%2E%2E/api/projects",
    ):
        assert labelstudio_link(f"http://ls.example:8080{path}", cfg) is None, path


def test_label_studio_media_on_a_local_address(tmp_path: Path) -> None:
    """The operator's Label Studio may run on a local address: its media paths are read (with the
    token), anything else below it is an ordinary link (refused on loopback), and a redirect
    carries no token anywhere but to another media path."""
    from pydantic import SecretStr

    from labelloop.errors import ForbiddenAddress

    routes = {
        "/data/upload/1/a.png": image_route(),
        "/api/projects/": image_route(),
        "/data/upload/1/moved.png": redirect("/api/img.png"),
        "/api/img.png": image_route(),
    }
    with StubServer(routes) as ls:
        cfg = Settings(
            data_dir=tmp_path / "data",
            labelstudio_url=ls.url,
            labelstudio_token=SecretStr("t0k"),
        )
        assert read_link("/data/upload/1/a.png", cfg).raw == png()
        assert read_link(f"{ls.url}/data/upload/1/a.png", cfg).raw == png()
        with pytest.raises(ForbiddenAddress):
            read_link(f"{ls.url}/api/projects/", cfg)
        with pytest.raises(ForbiddenAddress):
            read_link("/data/upload/1/moved.png", cfg)  # the hop to /api/... is not media
        assert [(s.path, s.authorization) for s in ls.seen] == [
            ("/data/upload/1/a.png", "Token t0k"),
            ("/data/upload/1/a.png", "Token t0k"),
            ("/data/upload/1/moved.png", "Token t0k"),
        ]
        # With the stub allowed as an ordinary host, the redirect is followed without the token.
        ls.seen.clear()
        cfg.fetch_allow_hosts = ["127.0.0.1"]
        assert read_link("/data/upload/1/moved.png", cfg).raw == png()
        assert [(s.path, s.authorization) for s in ls.seen] == [
            ("/data/upload/1/moved.png", "Token t0k"),
            ("/api/img.png", None),
        ]


# --- what is an image -----------------------------------------------------------------------------


def test_images_are_identified_before_they_are_decoded(cfg: Settings, tmp_path: Path) -> None:
    """A small file that declares a huge canvas, a file of another kind or a damaged one is a
    clear error in people's words (no Python repr), before anything decodes it."""
    from labelloop.fetch import identify_image

    assert identify_image(png()).mime == "image/png"
    cases = {
        "bomb.png": (png_declaring(60000, 60000), "more than 64,000,000 pixels"),
        "big.png": (png_declaring(10000, 10000), "10000x10000 pixels"),
        "page.png": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not an image"),
        "empty.png": (b"", "not an image"),
    }
    for name, (raw, words) in cases.items():
        with pytest.raises(FetchError, match=words) as err:
            identify_image(raw)
        assert "<_io" not in err.value.message and " at 0x" not in err.value.message
        path = tmp_path / "ok" / name
        path.write_bytes(raw)
        with pytest.raises(FetchError, match=words):
            read_link(str(path), cfg)
    truncated = png((64, 64))[:-30]
    with pytest.raises(FetchError, match="damaged"):
        identify_image(truncated, verify=True)


def test_https_to_the_checked_address_verifies_the_name(
    cfg: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection goes to the checked address, but TLS is spoken with the link's name: the
    certificate must be valid for that name (not for the address, not for another name)."""
    import certifi

    ca, server_tls = tls_pair(tmp_path / "tls", "pinned.test")
    monkeypatch.setattr(certifi, "where", lambda: str(ca))  # trust the test authority only
    fake_dns(monkeypatch, {"pinned.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with StubServer({"/img.png": image_route()}, tls=server_tls) as stub:
        assert read_link(f"https://pinned.test:{stub.port}/img.png", cfg).raw == png()
        assert [s.host for s in stub.seen] == [f"pinned.test:{stub.port}"]
        for wrong in ("other.test", "127.0.0.1"):
            with pytest.raises(FetchError, match="TLS certificate"):
                read_link(f"https://{wrong}:{stub.port}/img.png", cfg)


def test_every_address_of_a_name_is_checked_and_tried_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name with one refused address among its answers is refused; with several allowed ones,
    the next is tried when one does not take the connection (as a connection by name would)."""
    from labelloop.errors import ForbiddenAddress

    fake_dns(monkeypatch, {"two.test": ["::1", "127.0.0.1"], "mixed.test": ["127.0.0.1", "::1"]})
    with StubServer({"/img.png": image_route()}) as stub:  # listens on 127.0.0.1 only
        both = Settings(data_dir=tmp_path, fetch_allow_hosts=["127.0.0.1", "::1"])
        assert read_link(f"http://two.test:{stub.port}/img.png", both).raw == png()
        one = Settings(data_dir=tmp_path, fetch_allow_hosts=["127.0.0.1"])
        with pytest.raises(ForbiddenAddress, match="loopback"):
            read_link(f"http://mixed.test:{stub.port}/img.png", one)
        assert len(stub.seen) == 1
