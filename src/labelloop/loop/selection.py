"""Query strategies: what people label next. One contract, composed by the task's policy.

A :class:`QueryStrategy` does two things, at two moments:

- when a model scores items (training, re-prediction, on demand), :meth:`~QueryStrategy.priority`
  turns its scores into the number ``/next`` ranks by, stored with the pre-label (no scoring per
  request); :meth:`~QueryStrategy.pool_weights` is what it needs from the whole pool at training
  (density weights), kept with the version;
- when ``/next`` asks, :meth:`~QueryStrategy.query` picks up to ``limit`` items of a :class:`Pool`
  (the items nobody labelled, with their stored priorities).

The strategies (after small-text's query strategies and modAL's uncertainty measures):

- :class:`RandomSampling` -- a stable random order per task;
- :class:`UncertaintySampling` -- most unsure first, by a pure measure of the scores
  (:func:`margin`, :func:`entropy`, :func:`least_confidence`; multi-label: mean binary margin);
- :class:`DensityWeighted` wraps one: its priority times the item's degree in the pool's k-NN graph
  (:func:`~labelloop.learners.neighbours.knn_graph`: approximate, grown in place, shared with the
  image learner);
- :class:`DiverseBatch` wraps one: a batch skips near-copies of items already in it, told apart by
  the :func:`signatures` stored with the items when they are featurized (a request reads no
  features);
- :class:`AuditMixing` wraps one: a share of every batch is random audits, the unbiased evidence
  auto-labelling certifies its accuracy with.

:func:`strategy_for` composes them from a task's :class:`~labelloop.loop.policy.Policy`.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from labelloop.learners.base import Features
from labelloop.learners.neighbours import knn_graph
from labelloop.loop.policy import AutoLabelPolicy, Policy

if TYPE_CHECKING:
    from scipy import sparse

# scikit-learn and scipy are imported where a graph or a hashed view is built, not here: the API
# imports this module, and a cluster's API never scores a pool.

#: Two items whose feature vectors have a cosine similarity above this are near-copies.
NEAR_COPY = 0.97
#: How deep into the ranking a batch may reach to stay diverse.
DEPTH = 10
#: Neighbours per item in the pool's graph.
GRAPH_K = 5


# -- how unsure a model is: pure functions of its scores, higher means less sure -------------------


def margin(scores: np.ndarray) -> np.ndarray:
    """One minus the gap between the two highest class scores."""
    if scores.shape[1] < 2:
        return 1.0 - scores[:, 0] if len(scores) else np.zeros(0)
    top2 = np.sort(scores, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])  # type: ignore[no-any-return]


def entropy(scores: np.ndarray) -> np.ndarray:
    p = np.clip(scores, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)  # type: ignore[no-any-return]


def least_confidence(scores: np.ndarray) -> np.ndarray:
    return 1.0 - scores.max(axis=1)  # type: ignore[no-any-return]


def binary_margin(scores: np.ndarray) -> np.ndarray:
    """Multi-label: how close each label's score is to 0.5, averaged over labels."""
    return 1.0 - np.abs(2.0 * scores - 1.0).mean(axis=1)  # type: ignore[no-any-return]


MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "margin": margin,
    "entropy": entropy,
    "least-confidence": least_confidence,
}


# -- the pool's k-nearest-neighbour graph (built in learners/neighbours.py) ----------------------------


def graph_degrees(features: Features, k: int = GRAPH_K) -> np.ndarray | None:
    """Each item's degree in the symmetric k-nearest-neighbour graph of the pool, or None when the
    items have no numeric view (plain text).

    Degree counts how many items an item is close to: a label on a hub spreads to many items, a
    label on an outlier to almost none. Weighting uncertainty by it removes the cold start of
    uncertainty sampling (measured on digits: 95% accuracy with 0.45 of the labels random order
    needs, against 0.72 for plain margin).
    """
    arrays = [v for v in features.views.values() if isinstance(v, np.ndarray) and v.ndim == 2]
    if not arrays or len(arrays[0]) < 3:
        return None
    return np.asarray(knn_graph(arrays[0], k).sum(axis=1)).ravel()


# -- near-copies -----------------------------------------------------------------------------------


@functools.cache
def _hashing() -> Any:
    """The texts' hashed words: one vectorizer (it keeps no state), checked once."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=2**12, alternate_sign=False)


def _parts(features: Features) -> list[np.ndarray | sparse.csr_matrix]:
    """The views as rows of numbers: numeric views as they are, texts as hashed words (sparse)."""
    from sklearn import config_context

    parts: list[np.ndarray | sparse.csr_matrix] = []
    for view in features.views.values():
        if isinstance(view, np.ndarray):
            parts.append(np.asarray(view, dtype=np.float64).reshape(len(view), -1))
        else:
            # Its parameters were checked once and hashed words are finite: every stored text
            # (a Label Studio /predict's write) skips scikit-learn's checks, not a number.
            with config_context(assume_finite=True, skip_parameter_validation=True):
                parts.append(_hashing().transform(view).tocsr())
    return parts


#: Bits of an item's near-copy signature (:func:`signatures`): 32 bytes an item in the store.
SIGNATURE_BITS = 256
#: Two signatures this many bits apart or fewer are near-copies: the bits a cosine of
#: :data:`NEAR_COPY` flips on average (a random hyperplane splits two vectors at an angle a with
#: probability a / pi).
NEAR_COPY_BITS = round(SIGNATURE_BITS * math.acos(NEAR_COPY) / math.pi)
_SIGNATURE_CHUNK = 1000


@functools.lru_cache(maxsize=8)
def _hyperplanes(dim: int) -> np.ndarray:
    """The same random hyperplanes for every process and every run (a fixed seed per dimension)."""
    return np.random.default_rng(dim).standard_normal((dim, SIGNATURE_BITS)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hyperplanes_f64(dim: int) -> np.ndarray:
    """The hyperplanes in the features' float64, converted once: scipy and numpy would convert
    them (8 MB for texts) on every product, to the same numbers."""
    return _hyperplanes(dim).astype(np.float64)


@functools.lru_cache(maxsize=8)
def _plane_sums(dim: int) -> np.ndarray:
    """Each hyperplane's sum over the dimensions (the centring's term), computed once."""
    sums: np.ndarray = _hyperplanes(dim).sum(axis=0)
    return sums


def signatures(features: Features) -> list[bytes]:
    """Each item's near-copy signature: on which side of :data:`SIGNATURE_BITS` random hyperplanes
    its unit vector (numeric views, or hashed words for texts, centred) lies (SimHash). Computed once, when the item
    is featurized, and stored on it, so that ``/next`` tells near-copies apart by comparing bytes,
    with no features at hand. Texts stay sparse: centring and scaling are applied to the
    projection (the sides do not depend on the scale)."""
    out: list[bytes] = []
    for start in range(0, len(features), _SIGNATURE_CHUNK):
        chunk = {k: v[start : start + _SIGNATURE_CHUNK] for k, v in features.views.items()}
        parts = _parts(Features(chunk))
        if not parts:
            break
        dim = sum(p.shape[1] for p in parts)
        planes = _hyperplanes_f64(dim)
        proj = np.zeros((parts[0].shape[0], SIGNATURE_BITS))
        sums = np.zeros(parts[0].shape[0])
        at = 0
        for p in parts:
            proj += np.asarray(p @ planes[at : at + p.shape[1]])
            sums += np.asarray(p.sum(axis=1)).ravel()
            at += p.shape[1]
        if dim > 1:  # centred: each item's mean over its dimensions taken out
            proj -= np.outer(sums / dim, _plane_sums(dim))
        out.extend(row.tobytes() for row in np.packbits(proj > 0, axis=1))
    return out


def pick_diverse(
    signed: Sequence[bytes | None], limit: int, near_copy_bits: int = NEAR_COPY_BITS
) -> list[int]:
    """Positions (in ranking order) of up to ``limit`` items, skipping near-copies of chosen ones
    (signatures at most ``near_copy_bits`` apart; an item without one is a near-copy of nothing).

    If the ranking holds fewer distinct items than ``limit``, the skipped ones fill the rest.
    """
    width = SIGNATURE_BITS // 8
    known = np.zeros((len(signed), width), dtype=np.uint8)
    has = np.array([s is not None and len(s) == width for s in signed], dtype=bool)
    for pos, sig in enumerate(signed):
        if sig is not None and has[pos]:
            known[pos] = np.frombuffer(sig, dtype=np.uint8)
    chosen: list[int] = []
    skipped: list[int] = []
    for pos in range(len(signed)):
        if len(chosen) == limit:
            break
        mine = [c for c in chosen if has[c]]
        if has[pos] and mine:
            apart = np.unpackbits(known[mine] ^ known[pos], axis=1).sum(axis=1)
            if int(apart.min()) <= near_copy_bits:
                skipped.append(pos)
                continue
        chosen.append(pos)
    return chosen + skipped[: limit - len(chosen)]


def candidates_depth(limit: int, available: int) -> int:
    return min(available, max(limit, limit * DEPTH))


# -- the contract ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """What ``/next`` chooses from, read from the store once per request.

    The service reads windows of the ranking kept in the store (:mod:`labelloop.loop.ranking`):
    the head of each order, deep enough for a batch and its replacements, never the whole pool.
    """

    #: Items without a human label, in the task's stable random order (audits draw from these;
    #: left empty for a strategy that draws no audits).
    open: Sequence[int]
    #: Open items without a model label either (what people should label), same order.
    uncovered: Sequence[int]
    #: Stored priority per item (empty before the first model); unused when ``ranked`` is given.
    priority: Mapping[int, float] = field(default_factory=dict)
    #: Uncovered items already ranked by the store from the freshest priorities (highest first,
    #: unscored ones before every scored one, ties in the stable random order); None: rank here.
    ranked: Sequence[int] | None = None
    #: Human labels so far (spreads the audits evenly over the labels people give).
    human_labels: int = 0
    #: Whether a model serves, and whether its auto-labelling threshold is certified.
    served: bool = False
    certified: bool = False
    #: Near-copy signatures (:func:`signatures`) of the items read, stored with them: what keeps
    #: near-copies out of a batch. An item missing here is a near-copy of nothing.
    signatures: Mapping[int, bytes | None] | None = None


@dataclass(frozen=True)
class Query:
    """The items to hand out, best first, and which of them are random audits."""

    items: list[int]
    audits: list[int] = field(default_factory=list)
    #: The rest of the ranking, best first: what takes the place of a picked item that another
    #: annotator reserved in the meantime.
    rest: list[int] = field(default_factory=list)
    #: Whether those replacements are audits too (before the first model every item is one).
    rest_are_audits: bool = False


class QueryStrategy(ABC):
    """Chooses what people label next (see the module docstring for the two moments)."""

    def priority(
        self, scores: np.ndarray, multi_label: bool, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """The number ``/next`` ranks an item by (higher first), from a model's scores."""
        return np.zeros(len(scores))

    def pool_weights(self, pool: Features, item_ids: Sequence[int]) -> dict[int, float]:
        """Per-item weights this strategy needs from the whole pool, computed at training."""
        return {}

    @abstractmethod
    def rank(self, pool: Pool, limit: int) -> list[int]:
        """Every uncovered item, best first; the first ``limit`` make a good batch."""

    def query(self, pool: Pool, limit: int) -> Query:
        """Up to ``limit`` items to hand out (and the rest of the ranking)."""
        ranked = self.rank(pool, limit)
        return Query(ranked[:limit], rest=ranked[limit:])


class RandomSampling(QueryStrategy):
    """The task's stable random order (the order before any model, whatever the strategy)."""

    def rank(self, pool: Pool, limit: int) -> list[int]:
        return list(pool.uncovered)


class UncertaintySampling(QueryStrategy):
    """Most unsure first, by ``measure`` (margin, entropy, least-confidence)."""

    def __init__(self, measure: str = "margin") -> None:
        self.measure = measure
        self._measure = MEASURES[measure]

    def priority(
        self, scores: np.ndarray, multi_label: bool, weights: np.ndarray | None = None
    ) -> np.ndarray:
        if len(scores) == 0:
            return np.zeros(0)
        return binary_margin(scores) if multi_label else self._measure(scores)

    def rank(self, pool: Pool, limit: int) -> list[int]:
        if pool.ranked is not None:
            return list(pool.ranked)
        if not pool.priority:
            return list(pool.uncovered)  # no model yet: random order
        # Items with no score yet (just added) rank first: nothing is known of them. Ties keep
        # the stable random order.
        return sorted(pool.uncovered, key=lambda i: -pool.priority.get(i, math.inf))


class Wrapper(QueryStrategy):
    """A strategy that changes another one's behaviour and hands the rest through."""

    def __init__(self, inner: QueryStrategy) -> None:
        self.inner = inner

    def priority(
        self, scores: np.ndarray, multi_label: bool, weights: np.ndarray | None = None
    ) -> np.ndarray:
        return self.inner.priority(scores, multi_label, weights)

    def pool_weights(self, pool: Features, item_ids: Sequence[int]) -> dict[int, float]:
        return self.inner.pool_weights(pool, item_ids)

    def rank(self, pool: Pool, limit: int) -> list[int]:
        return self.inner.rank(pool, limit)


class DensityWeighted(Wrapper):
    """The inner priority times the item's degree in the pool's k-NN graph over the largest one,
    so that unsure outliers do not crowd out unsure typical items."""

    def priority(
        self, scores: np.ndarray, multi_label: bool, weights: np.ndarray | None = None
    ) -> np.ndarray:
        base = self.inner.priority(scores, multi_label)
        return base if weights is None else base * weights

    def pool_weights(self, pool: Features, item_ids: Sequence[int]) -> dict[int, float]:
        degrees = graph_degrees(pool)
        if degrees is None or degrees.max() <= 0:
            return {}
        scaled = degrees / degrees.max()
        return {int(i): float(w) for i, w in zip(item_ids, scaled.tolist(), strict=True)}


class DiverseBatch(Wrapper):
    """The inner ranking, with near-copies of an item already in the batch pushed back."""

    def __init__(self, inner: QueryStrategy, near_copy_bits: int = NEAR_COPY_BITS) -> None:
        super().__init__(inner)
        self.near_copy_bits = near_copy_bits

    def rank(self, pool: Pool, limit: int) -> list[int]:
        ranked = self.inner.rank(pool, limit)
        if limit <= 1 or len(ranked) <= limit or pool.signatures is None:
            return ranked
        depth = ranked[: candidates_depth(limit, len(ranked))]
        signed = [pool.signatures.get(i) for i in depth]
        head = [depth[p] for p in pick_diverse(signed, limit, self.near_copy_bits)]
        taken = set(head)
        return head + [i for i in ranked if i not in taken]


class AuditMixing(Wrapper):
    """A share of every batch drawn uniformly at random from every item without a human label
    (model-labelled ones included): their labels are the unbiased evidence the auto-labelling
    threshold is estimated from. Before the first model every item is an audit; once a threshold
    is certified and only ``tail`` items are left uncovered, those are handed out directly."""

    def __init__(self, inner: QueryStrategy, policy: AutoLabelPolicy) -> None:
        super().__init__(inner)
        self.policy = policy

    def query(self, pool: Pool, limit: int) -> Query:
        if not pool.served:
            first = list(pool.uncovered[:limit])
            return Query(first, first, rest=list(pool.uncovered[limit:]), rest_are_audits=True)
        if pool.certified and len(pool.uncovered) <= self.policy.tail:
            return self.inner.query(pool, limit)
        chosen: list[int] = []
        audits: list[int] = []
        ranked = self.inner.rank(pool, limit)
        draw, unsure = iter(pool.open), iter(ranked)
        for k in range(min(limit, len(pool.open))):
            audit_turn = audit_turn_at(pool.human_labels + k, self.policy.audit_share)
            pick = _next_unchosen(draw if audit_turn else unsure, chosen)
            if pick is None:  # one source ran dry: take from the other
                audit_turn = not audit_turn
                pick = _next_unchosen(draw if audit_turn else unsure, chosen)
            if pick is None:
                break
            chosen.append(pick)
            if audit_turn:
                audits.append(pick)
        taken = set(chosen)
        return Query(chosen, audits, rest=[i for i in ranked if i not in taken])


def audit_turn_at(position: int, share: float) -> bool:
    """Whether the ``position``-th human label should be an audit: spreads ``share`` evenly."""
    return math.floor((position + 1) * share + 1e-9) > math.floor(position * share + 1e-9)


def _next_unchosen(source: Iterator[int], chosen: list[int]) -> int | None:
    for item_id in source:
        if item_id not in chosen:
            return item_id
    return None


def strategy_for(policy: Policy) -> QueryStrategy:
    """The task's strategy: its measure (or random), density weighting, diverse batches, audits."""
    base: QueryStrategy
    if policy.selection == "random":
        base = RandomSampling()
    else:
        base = UncertaintySampling(policy.selection)
        if policy.weights_by_density:
            base = DensityWeighted(base)
    strategy: QueryStrategy = DiverseBatch(base)
    if policy.auto_label is not None:
        strategy = AuditMixing(strategy, policy.auto_label)
    return strategy
