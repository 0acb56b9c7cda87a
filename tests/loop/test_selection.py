"""What /next ranks by: the query strategies, diversity within a batch, density weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from labelloop.learners.base import Features
from labelloop.learners.image import PoolGraph
from labelloop.loop.policy import AutoLabelPolicy, Policy
from labelloop.loop.selection import (
    NEAR_COPY_BITS,
    SIGNATURE_BITS,
    AuditMixing,
    DensityWeighted,
    DiverseBatch,
    Pool,
    RandomSampling,
    UncertaintySampling,
    entropy,
    graph_degrees,
    knn_graph,
    least_confidence,
    margin,
    pick_diverse,
    signatures,
    strategy_for,
)


def test_near_copies_are_pushed_back() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(16)
    rows = np.vstack([base, base + 1e-4, base + 2e-4, rng.random(16), rng.random(16)])
    signed = signatures(Features({"pixels": rows}))
    assert pick_diverse(signed, 3) == [0, 3, 4]
    assert pick_diverse(signed, 5) == [0, 3, 4, 1, 2]  # copies only fill what is left
    assert pick_diverse([None, *signed[1:]], 3) == [0, 1, 3]  # unsigned: a copy of nothing


def test_texts_compare_by_their_words() -> None:
    signed = signatures(Features({"text": ["the cat sat", "the cat sat", "stock prices fell"]}))
    assert pick_diverse(signed, 2) == [0, 2]


def test_signatures_are_as_far_apart_as_the_cosine_says() -> None:
    """The bits two signatures differ in estimate the angle between the similarity vectors: pairs
    well above the near-copy cosine fall within :data:`NEAR_COPY_BITS`, pairs well below do not."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 64))
    noise = rng.normal(size=(200, 64))
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    ortho = noise - (noise * unit).sum(axis=1, keepdims=True) * unit
    ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)

    def at(cos: float) -> np.ndarray:
        return cos * unit + np.sqrt(1 - cos**2) * ortho

    def apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sa = signatures(Features({"x": a - a.mean(axis=1, keepdims=True)}))
        sb = signatures(Features({"x": b - b.mean(axis=1, keepdims=True)}))
        return np.array(
            [
                np.unpackbits(np.frombuffer(x, np.uint8) ^ np.frombuffer(y, np.uint8)).sum()
                for x, y in zip(sa, sb, strict=True)
            ]
        )

    centred = unit - unit.mean(axis=1, keepdims=True)
    assert (apart(centred, at(0.995)) <= NEAR_COPY_BITS).mean() > 0.95
    assert (apart(centred, at(0.85)) > NEAR_COPY_BITS).mean() > 0.95
    assert len(signatures(Features({"x": base}))[0]) * 8 == SIGNATURE_BITS


def test_hubs_have_higher_degree_than_outliers() -> None:
    rng = np.random.default_rng(1)
    cluster = rng.normal(0, 0.1, (40, 2))
    outlier = np.array([[10.0, 10.0]])
    degrees = graph_degrees(Features({"pixels": np.vstack([cluster, outlier])}), k=5)
    assert degrees is not None
    assert degrees[-1] == 5  # nobody lists the outlier among its neighbours
    assert degrees[:-1].max() > 5
    assert graph_degrees(Features({"text": ["a", "b", "c", "d"]})) is None


# -- query strategies ------------------------------------------------------------------------------

SCORES = np.array([[0.9, 0.1], [0.55, 0.45], [0.5, 0.5]])


def test_uncertainty_measures_are_pure_functions_of_the_scores() -> None:
    assert np.allclose(margin(SCORES), [0.2, 0.9, 1.0])
    assert np.allclose(least_confidence(SCORES), [0.1, 0.45, 0.5])
    assert np.argmax(entropy(SCORES)) == 2 and np.argmin(entropy(SCORES)) == 0
    three = np.array([[0.6, 0.3, 0.1], [0.4, 0.4, 0.2]])
    assert np.allclose(margin(three), [0.7, 1.0])
    # Multi-label: each label's own margin from 0.5, averaged.
    assert np.allclose(
        UncertaintySampling().priority(np.array([[1.0, 0.5], [0.0, 1.0]]), multi_label=True),
        [0.5, 0.0],
    )


def pool(**kw: object) -> Pool:
    defaults: dict[str, object] = {"open": [5, 4, 3, 2, 1], "uncovered": [5, 4, 3, 2, 1]}
    return Pool(**(defaults | kw))  # type: ignore[arg-type]


def test_uncertainty_sampling_ranks_the_unsure_first_and_the_unscored_before_them() -> None:
    s = UncertaintySampling("margin")
    assert s.query(pool(), 2).items == [5, 4]  # no model yet: the random order
    ranked = pool(served=True, priority={5: 0.1, 4: 0.9, 3: 0.5, 2: 0.9})
    assert s.query(ranked, 5).items == [1, 4, 2, 3, 5]  # 1 has no score yet; ties keep the order
    assert s.query(ranked, 5).audits == []
    assert RandomSampling().query(ranked, 3).items == [5, 4, 3]


def test_density_weighting_multiplies_the_inner_priority_by_the_weight() -> None:
    s = DensityWeighted(UncertaintySampling("least-confidence"))
    got = s.priority(SCORES, False, np.array([1.0, 0.5, 0.0]))
    assert np.allclose(got, [0.1, 0.225, 0.0])
    assert np.allclose(s.priority(SCORES, False), least_confidence(SCORES))
    rng = np.random.default_rng(1)
    features = Features({"pixels": np.vstack([rng.normal(0, 0.1, (40, 2)), [[10.0, 10.0]]])})
    weights = s.pool_weights(features, list(range(100, 141)))
    assert max(weights.values()) == 1.0 and weights[140] == min(weights.values())
    assert s.pool_weights(Features({"text": ["a", "b", "c", "d"]}), [1, 2, 3, 4]) == {}


def test_a_diverse_batch_pushes_near_copies_back() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(16)
    rows = {1: base, 2: base + 1e-4, 3: rng.random(16), 4: rng.random(16), 5: base + 2e-4}
    signed = dict(
        zip(rows, signatures(Features({"pixels": np.vstack(list(rows.values()))})), strict=True)
    )
    ranked = pool(open=[1, 2, 5, 3, 4], uncovered=[1, 2, 5, 3, 4], signatures=signed)
    s = DiverseBatch(RandomSampling())
    assert s.query(ranked, 2).items == [1, 3]
    assert s.rank(ranked, 3) == [1, 3, 4, 2, 5]  # nothing is lost: the copies follow
    assert s.query(ranked, 1).items == [1]  # one item: nothing to compare
    # Items not signed yet (not featurized) are near-copies of nothing.
    unsigned = replace(ranked, signatures={i: signed[i] for i in (1, 2, 5)})
    assert s.query(unsigned, 4).items == [1, 3, 4, 2]


def test_audit_mixing_spreads_random_audits_over_the_batches() -> None:
    policy = AutoLabelPolicy(audit_share=0.5, tail=2)
    s = AuditMixing(UncertaintySampling(), policy)
    before = s.query(pool(), 3)
    assert before.items == before.audits == [5, 4, 3]  # before a model, all of them
    # 5 is model-labelled (not uncovered) but still drawn as an audit.
    scored = pool(served=True, uncovered=[4, 3, 2, 1], priority={4: 0.1, 3: 0.2, 2: 0.3, 1: 0.4})
    got = s.query(scored, 4)
    assert got.items == [1, 5, 2, 4] and got.audits == [5, 4]  # every second label an audit
    assert s.query(scored, 4) == got  # stable
    shifted = s.query(replace(scored, human_labels=1), 4)
    assert shifted.items == [5, 1, 4, 2] and shifted.audits == [5, 4]  # turns follow the labels
    tail = replace(scored, certified=True, uncovered=[2, 1])
    assert s.query(tail, 4).items == [1, 2] and s.query(tail, 4).audits == []


def test_the_policy_composes_the_strategy() -> None:
    s = strategy_for(Policy())
    assert isinstance(s, DiverseBatch) and isinstance(s.inner, DensityWeighted)
    assert isinstance(s.inner.inner, UncertaintySampling) and s.inner.inner.measure == "margin"
    s = strategy_for(Policy(selection="entropy", auto_label={"target_accuracy": 0.9}))
    assert isinstance(s, AuditMixing) and isinstance(s.inner, DiverseBatch)
    assert isinstance(s.inner.inner, UncertaintySampling)  # no density with auto-labelling
    s = strategy_for(Policy(selection="random", density_weighting=True))
    assert isinstance(s, DiverseBatch) and isinstance(s.inner, RandomSampling)


def test_the_image_learner_spreads_labels_over_the_same_graph() -> None:
    rng = np.random.default_rng(2)
    nodes = rng.random((30, 4)).astype(np.float32)
    graph = PoolGraph(nodes, 5)
    assert (graph.S != 0).nnz == knn_graph(nodes, 5).nnz
    assert np.array_equal((graph.S != 0).toarray(), knn_graph(nodes, 5).toarray() > 0)
    assert knn_graph(nodes, 5) is knn_graph(nodes, 5)  # built once per pool
