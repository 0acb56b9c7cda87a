"""The managed block of a hosts file: the good machines' ``ip hostname`` lines (seed step 2.1 i).

Only the lines between the two markers belong to labelloop; every other line is left as it was.
The file is replaced atomically (temp file in the same folder, then ``os.replace``), and writing the
same block twice leaves the file untouched, so a second ``initial`` changes nothing.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path

from labelloop.datastore import write_bytes_atomic

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
BEGIN = "# BEGIN labelloop cluster"
END = "# END labelloop cluster"


def render_block(entries: Iterable[tuple[str, ...]]) -> list[str]:
    """The block's lines for ``(ip, hostname, *aliases)`` entries, without duplicates, in the
    order given."""
    lines = [BEGIN]
    seen: set[tuple[str, ...]] = set()
    for entry in entries:
        if entry in seen:
            continue
        ip, names = entry[0], entry[1:]
        text = " ".join(entry)
        if not ip or not names or any(not n or any(c.isspace() for c in n) for n in entry):
            raise ValueError(f"not a hosts entry: {text!r}")
        if "#" in text:
            raise ValueError(f"not a hosts entry: {text!r}")
        seen.add(entry)
        lines.append(f"{ip}\t{' '.join(names)}")
    lines.append(END)
    return lines


def aliases(hostname: str, node_host: str) -> tuple[str, ...]:
    """Other names a machine must resolve by: its short hostname and its RabbitMQ node's host
    part (``labelloop@m1`` must resolve on every machine); never a loopback name or an IP."""
    out: list[str] = []
    for name in (hostname.split(".")[0], node_host):
        if name and name != hostname and name not in out and name not in LOOPBACK_NAMES:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                out.append(name)
    return tuple(out)


def replace_block(text: str, block: list[str]) -> str:
    """``text`` with its managed block replaced by ``block`` (appended if it had none)."""
    lines = text.splitlines()
    out: list[str] = []
    inside = placed = False
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
            if not placed:
                out.extend(block)
                placed = True
            continue
        if stripped == END and inside:
            inside = False
            continue
        if not inside:
            out.append(line)
    if not placed:
        out.extend(block)
    return "\n".join(out) + "\n"


def read_block(path: Path) -> list[tuple[str, str]]:
    """The ``(ip, hostname)`` pairs currently in the managed block (empty if none; aliases left
    out)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    pairs: list[tuple[str, str]] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
        elif stripped == END:
            inside = False
        elif inside and stripped:
            ip, *names = stripped.split()
            pairs.append((ip, names[0] if names else ip))
    return pairs


def write_hosts(path: Path, entries: Iterable[tuple[str, ...]]) -> bool:
    """Put ``entries`` (``ip, hostname, *aliases``) in the managed block of ``path``; returns
    whether the file changed."""
    block = render_block(entries)
    try:
        old = path.read_text()
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        old, mode = "", 0o644
    new = replace_block(old, block)
    if new == old:
        return False
    _write(path, new, mode)
    return True


def _write(path: Path, text: str, mode: int) -> None:
    try:
        write_bytes_atomic(path, text.encode(), mode=mode)
    except OSError as exc:
        # A container's /etc/hosts is a bind mount: it cannot be replaced, only rewritten.
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
            raise
        log.warning("%s cannot be replaced atomically (%s); rewriting it in place", path, exc)
        with open(path, "w") as fh:
            fh.write(text)


def remove_block(path: Path) -> bool:
    """Take the managed block out of ``path`` (the host left as found); whether it changed."""
    try:
        old = path.read_text()
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return False
    lines = old.splitlines()
    if BEGIN not in (line.strip() for line in lines):
        return False
    new = replace_block(old, [])
    _write(path, new if new.strip() else "", mode)
    return True
