"""Stub HTTP servers on loopback addresses (127.0.0.x only) and hostile images, for the tests of
what data links may reach."""

from __future__ import annotations

import io
import ssl
import struct
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image


def png(size: tuple[int, int] = (4, 4), value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""
    raw = bytearray(png((1, 1)))
    # Signature (8), IHDR length (4), "IHDR" (4), then width and height; the CRC covers the type
    # and the 13 bytes of data.
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds between bytes of the body (a slow server); 0 sends it at once.
    drip_s: float = 0.0


@dataclass
class Seen:
    path: str
    host: str | None
    authorization: str | None


class StubServer:
    """Answers the routes it is given; records every request (path, Host, Authorization)."""

    def __init__(
        self,
        routes: dict[str, Route],
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        assert host.startswith("127."), "stub servers listen on loopback only"
        self.routes = routes
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append(
                    Seen(self.path, self.headers.get("Host"), self.headers.get("Authorization"))
                )
                route = owner.routes.get(self.path, Route(status=404))
                self.send_response(route.status)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(route.body)))
                self.end_headers()
                if route.drip_s:
                    for i in range(len(route.body)):
                        self.wfile.write(route.body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(route.drip_s)
                else:
                    self.wfile.write(route.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def image_route(body: bytes | None = None) -> Route:
    return Route(body=png() if body is None else body, headers={"content-type": "image/png"})


def redirect(location: str, status: int = 302) -> Route:
    return Route(status=status, headers={"location": location})


def tls_pair(folder: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A certificate authority (its PEM file) and a server context with a certificate it signed
    for the DNS name ``name`` only (made with the ``openssl`` command)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=labelloop test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", f"/CN={name}")
    (folder / "ext.cnf").write_text(f"subjectAltName=DNS:{name}\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "srv.pem", folder / "srv.key")
    return folder / "ca.pem", ctx


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Names of the test's own (``*.test``) that resolve to the given loopback addresses; every
    lookup of them is recorded in the list returned. Other names resolve as usual."""
    import socket

    assert all(ip in ("127.0.0.1", "::1") for ips in answers.values() for ip in ips)
    real = socket.getaddrinfo
    lookups: list[str] = []

    def fake(host: object, port: object, *args: object, **kwargs: object) -> object:
        if isinstance(host, str) and host in answers:
            lookups.append(host)
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (ip, port, 0, 0) if ":" in ip else (ip, port),
                )
                for ip in answers[host]
            ]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return lookups
