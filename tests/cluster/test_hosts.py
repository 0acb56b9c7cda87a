"""The managed hosts block: exact content, other lines kept, idempotent, atomic, mode kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labelloop.cluster.hosts import (
    BEGIN,
    END,
    aliases,
    read_block,
    remove_block,
    write_hosts,
)

ORIGINAL = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n# a comment\n10.1.1.1 db\n"


def test_block_is_appended_and_other_lines_kept(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(ORIGINAL)
    assert write_hosts(hosts, [("10.0.0.2", "m2"), ("10.0.0.3", "m3")])
    text = hosts.read_text()
    assert text.startswith(ORIGINAL)
    assert text[len(ORIGINAL) :] == f"{BEGIN}\n10.0.0.2\tm2\n10.0.0.3\tm3\n{END}\n"
    assert read_block(hosts) == [("10.0.0.2", "m2"), ("10.0.0.3", "m3")]


def test_second_write_changes_nothing(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(ORIGINAL)
    entries = [("10.0.0.2", "m2"), ("10.0.0.3", "m3")]
    assert write_hosts(hosts, entries)
    before = hosts.stat()
    assert not write_hosts(hosts, entries)
    after = hosts.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_block_is_replaced_in_place_not_duplicated(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"a\n{BEGIN}\n1.1.1.1\told\n{END}\nz\n")
    assert write_hosts(hosts, [("10.0.0.9", "new"), ("10.0.0.9", "new")])
    assert hosts.read_text() == f"a\n{BEGIN}\n10.0.0.9\tnew\n{END}\nz\n"
    assert write_hosts(hosts, [])
    assert hosts.read_text() == f"a\n{BEGIN}\n{END}\nz\n"


def test_missing_file_is_created_and_mode_is_kept(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "hosts"
    assert write_hosts(fresh, [("10.0.0.2", "m2")])
    assert read_block(fresh) == [("10.0.0.2", "m2")]
    hosts = tmp_path / "hosts"
    hosts.write_text(ORIGINAL)
    os.chmod(hosts, 0o640)
    write_hosts(hosts, [("10.0.0.2", "m2")])
    assert hosts.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.parametrize(
    "bad", [("10.0.0.2", "a b"), ("10.0.0.2 x", "a"), ("", "a"), ("1.1.1.1", "#")]
)
def test_entries_that_would_break_the_file_are_refused(
    tmp_path: Path, bad: tuple[str, str]
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(ORIGINAL)
    with pytest.raises(ValueError):
        write_hosts(hosts, [bad])
    assert hosts.read_text() == ORIGINAL


def test_bind_mounted_file_is_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's /etc/hosts cannot be replaced (EBUSY): the block still gets written."""
    import errno
    import os

    def busy(src: str, dst: object) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    hosts = tmp_path / "hosts"
    hosts.write_text(ORIGINAL)
    inode = hosts.stat().st_ino
    monkeypatch.setattr(os, "replace", busy)
    assert write_hosts(hosts, [("10.0.0.2", "m2")])
    assert hosts.stat().st_ino == inode
    assert read_block(hosts) == [("10.0.0.2", "m2")]
    assert hosts.read_text().startswith(ORIGINAL)
    assert [p.name for p in tmp_path.iterdir()] == ["hosts"]


def test_removing_the_block_leaves_the_file_as_found(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(ORIGINAL)
    hosts.chmod(0o640)
    assert not remove_block(hosts)  # no block: untouched
    write_hosts(hosts, [("10.0.0.2", "m2")])
    assert remove_block(hosts)
    assert hosts.read_text() == ORIGINAL and (hosts.stat().st_mode & 0o777) == 0o640
    assert not remove_block(hosts) and not remove_block(tmp_path / "missing")


def test_node_names_resolve_through_aliases(tmp_path: Path) -> None:
    """``labelloop@m1`` must resolve on every machine: the short name and the node's host part
    are aliases of the machine's line (never a loopback name or an address)."""
    assert aliases("m1.example.com", "m1") == ("m1",)
    assert aliases("m1.example.com", "rabbit-m1") == ("m1", "rabbit-m1")
    assert aliases("machine-2", "localhost") == () and aliases("m3", "10.0.0.3") == ()
    hosts = tmp_path / "hosts"
    hosts.write_text(ORIGINAL)
    write_hosts(hosts, [("10.0.0.2", "m2.example.com", *aliases("m2.example.com", "m2"))])
    assert hosts.read_text().endswith(f"{BEGIN}\n10.0.0.2\tm2.example.com m2\n{END}\n")
    assert read_block(hosts) == [("10.0.0.2", "m2.example.com")]
