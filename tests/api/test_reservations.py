"""``/next`` reserves what it hands out: concurrent annotators never share an item, an annotator
gets their own items back first, labelling releases, leases expire; with an overlap of k an item
goes to k different people. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from labelloop.client import Client
from labelloop.runtime import Runtime
from labelloop.service import reservations
from labelloop.store.models import AuditPick, Reservation, Task, utcnow

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def text_task(c: TestClient, n: int, **policy: Any) -> tuple[int, list[int]]:
    body = {
        "name": f"texts {policy}",
        "category": "text-classification",
        "labels": ["a", "b"],
        "policy": {"min_labels": 1000, **policy},
    }
    r = c.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    t = int(r.json()["id"])
    texts = [f"{WORDS[i % len(WORDS)]} {i}" for i in range(n)]
    added = c.post(f"/api/v1/tasks/{t}/items", json={"items": [{"data": x} for x in texts]})
    assert added.status_code == 201, added.text
    return t, [it["id"] for it in added.json()["items"]]


def nxt(c: TestClient, t: int, limit: int, who: str | None = None) -> list[int]:
    params: dict[str, Any] = {"limit": limit}
    if who is not None:
        params["annotator"] = who
    r = c.get(f"/api/v1/tasks/{t}/next", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["annotator"] == who and (body["reserved_until"] is None) == (who is None)
    return [it["id"] for it in body["items"]]


def label(
    c: TestClient, t: int, item: int, who: str | None, labels: list[str] | None = None
) -> None:
    a = {"item_id": item, "labels": labels or ["a"], "annotator": who, "shown_none": True}
    r = c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": [a]})
    assert r.status_code == 201, r.text


def test_concurrent_annotators_never_get_the_same_item(live_url: str) -> None:
    """30 annotators at once, each asking for a few items and labelling what it got, until none
    is left: every item gets exactly one label (before, 30 annotators put 730 labels on 68)."""
    n_items, n_people = 90, 30
    with Client(live_url) as ll:
        task = ll.create_task(
            "shared", "text-classification", ["a", "b"], policy={"min_labels": 1000}
        )
        ll.add_items(task["id"], [{"data": f"text number {i}"} for i in range(n_items)])
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n_people)

    def annotator(name: str) -> None:
        try:
            with Client(live_url, timeout=120) as ll:
                start.wait()
                mine = got.setdefault(name, [])
                while True:
                    items = ll.next_items(task["id"], limit=3, annotator=name)["items"]
                    if not items:
                        return
                    mine.extend(it["id"] for it in items)
                    ll.annotate(
                        task["id"],
                        [{"item_id": it["id"], "labels": ["a"], "annotator": name} for it in items],
                    )
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=annotator, args=(f"p{n}",)) for n in range(n_people)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    assert not errors, errors[:3]
    handed = Counter(i for items in got.values() for i in items)
    assert len(handed) == n_items and set(handed.values()) == {1}, handed.most_common(3)
    with Client(live_url) as ll:
        rows = [r for r in ll.list_items(task["id"], limit=500)["items"]]
        assert len(rows) == n_items
        assert all(len(r["annotators"]) == 1 for r in rows)
        assert ll.progress(task["id"])["human_labels"] == n_items
        assert sum(1 for items in got.values() if items) > 1  # the work was shared


def test_own_items_come_back_first_labelling_releases_and_leases_expire(
    app_client: TestClient, rt: Runtime
) -> None:
    c = app_client
    t, _ids = text_task(c, 10)
    ada = nxt(c, t, 3, "Ada")
    assert len(ada) == 3
    # Asking again: her own first (renewed), then new ones; nobody else gets hers.
    again = nxt(c, t, 5, "Ada")
    assert again[:3] == ada and len(set(again)) == 5
    bob = nxt(c, t, 10, "Bob")
    assert not set(bob) & set(again) and len(bob) == 5
    # A look without a name reserves nothing and leaves reserved items out: nothing is free.
    assert nxt(c, t, 10) == []

    # Labelling releases: the item is no longer Ada's, and (overlap 1) nobody else's either.
    label(c, t, ada[0], "Ada")
    assert ada[0] not in nxt(c, t, 10, "Ada")
    with rt.session() as s:
        held = {(r.item_id, r.annotator) for r in s.scalars(select(Reservation))}
    assert (ada[0], "Ada") not in held and (ada[1], "Ada") in held

    # A lease that ends frees the item for someone else.
    with rt.session() as s:
        s.execute(
            update(Reservation)
            .where(Reservation.annotator == "Bob")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    cleo = nxt(c, t, 10, "Cleo")
    assert set(cleo) == set(bob)

    # Giving back at once (a page that closes).
    r = c.delete(f"/api/v1/tasks/{t}/reservations", params={"annotator": "Cleo"})
    assert r.status_code == 200 and r.json() == {"released": len(cleo)}
    assert set(nxt(c, t, 10, "Dan")) == set(cleo)
    progress = c.get(f"/api/v1/tasks/{t}/progress").json()
    holding = {a["annotator"]: a["holding"] for a in progress["annotators"]}
    assert holding == {"Ada": 4, "Dan": len(cleo)}


def test_an_overlap_hands_each_item_to_k_different_people(app_client: TestClient) -> None:
    c = app_client
    t, _ids = text_task(c, 6, overlap=2)
    ada = nxt(c, t, 2, "Ada")
    for item in ada:
        label(c, t, item, "Ada")
    # Items one person labelled come first for the next person, and never back to Ada.
    bob = nxt(c, t, 2, "Bob")
    assert bob == ada
    assert not set(nxt(c, t, 10, "Ada")) & set(ada)
    # Two people may hold an item at once, a third may not.
    both = nxt(c, t, 10, "Cleo")
    dan = nxt(c, t, 10, "Dan")
    assert not set(both) & set(ada) and len(both) == 4  # Ada and Cleo hold the other four
    assert set(dan) == set()  # Ada and Cleo hold 4, Ada and Bob hold/labelled the rest
    label(c, t, bob[0], "Bob", ["a"])
    label(c, t, bob[1], "Bob", ["b"])  # Ada said "a": they disagree on one of two
    progress = c.get(f"/api/v1/tasks/{t}/progress").json()
    assert progress["overlap"] == 2 and progress["done"] == 2 and progress["left"] == 4
    assert progress["labels_needed"] == 8
    by = {a["annotator"]: a for a in progress["annotators"]}
    assert by["Ada"]["agreement"] == 0.5 and by["Ada"]["shared_items"] == 2
    assert by["Bob"]["agreement"] == 0.5 and by["Cleo"]["agreement"] is None


def test_audits_handed_out_are_reserved_too(app_client: TestClient, rt: Runtime) -> None:
    """With auto-labelling, before a model every item is a random audit: still one person each,
    and recorded as audits."""
    c = app_client
    t, ids = text_task(c, 8, auto_label={"target_accuracy": 0.9})
    r = c.get(f"/api/v1/tasks/{t}/next", params={"limit": 3, "annotator": "Ada"}).json()
    assert all(it["audit"] for it in r["items"])
    ada = [it["id"] for it in r["items"]]
    bob = nxt(c, t, 10, "Bob")
    assert len(bob) == 5 and not set(bob) & set(ada)
    with rt.session() as s:
        picked = set(s.scalars(select(AuditPick.item_id).where(AuditPick.task_id == t)))
    assert picked == set(ids)
    # Ada's own audits come back as audits (shown blind).
    again = c.get(f"/api/v1/tasks/{t}/next", params={"limit": 3, "annotator": "Ada"}).json()
    assert [it["id"] for it in again["items"]] == ada and all(it["audit"] for it in again["items"])


def test_an_archived_task_hands_out_nothing(app_client: TestClient) -> None:
    c = app_client
    t, _ids = text_task(c, 3)
    r = c.patch(f"/api/v1/tasks/{t}", json={"archived": True})
    assert r.status_code == 200 and r.json()["archived"] is True
    r = c.get(f"/api/v1/tasks/{t}/next", params={"annotator": "Ada"})
    assert r.status_code == 409 and "archived" in r.json()["detail"]
    assert c.patch(f"/api/v1/tasks/{t}", json={"archived": False}).json()["archived"] is False
    assert len(nxt(c, t, 10, "Ada")) == 3


def snapshot_of(rt: Runtime, t: int, who: str | None) -> tuple[Any, int]:
    """What ``/next``'s read half sees: the labels per person, the reservations, the revision."""
    now = utcnow()
    with rt.reading() as s:
        people, revision = reservations.labellers_now(s, s.get_one(Task, t))
        return reservations.Holdings(1, who, people, reservations.held(s, t, now)), revision


def test_claims_from_one_snapshot_never_share_an_item(app_client: TestClient, rt: Runtime) -> None:
    """Annotators who chose from the same snapshot claim in turn under the task's lock: each gets
    what the ones before left, and an item labelled after the snapshot is not handed out."""
    t, items = text_task(app_client, 12)
    late = items[0]
    snaps = {who: snapshot_of(rt, t, who) for who in ("p1", "p2", "p3")}
    label(app_client, t, late, "p0")  # after the snapshots were read
    now = utcnow()
    start = threading.Barrier(len(snaps))
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def claim(who: str) -> None:
        holdings, revision = snaps[who]
        try:
            start.wait()
            got[who] = reservations.hand_out(
                rt, t, holdings, revision, items, 3, now, now + timedelta(minutes=5), set()
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(who,)) for who in snaps]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    handed = [i for mine in got.values() for i in mine]
    assert len(handed) == 9 and len(set(handed)) == 9 and late not in handed
    with rt.reading() as s:
        rows = s.execute(select(Reservation.item_id, Reservation.annotator)).all()
    assert sorted(rows) == sorted((i, who) for who, mine in got.items() for i in mine)


def test_next_without_a_name_reserves_nothing_and_still_records_audits(
    app_client: TestClient, rt: Runtime
) -> None:
    t, items = text_task(app_client, 6)
    holdings, revision = snapshot_of(rt, t, None)
    now = utcnow()
    audits = {items[1]}
    chosen = reservations.hand_out(rt, t, holdings, revision, items, 2, now, now, audits)
    assert chosen == items[:2]
    with rt.reading() as s:
        assert s.scalars(select(Reservation.item_id)).all() == []
        assert s.scalars(select(AuditPick.item_id)).all() == [items[1]]
