"""Texts the text-encoder tests share: questions of several lengths and languages, and a tiny
two-class task."""

from __future__ import annotations

SENTENCES = [
    "How far is it from Denver to Aspen ?",
    "What is the capital of France?",
    "Who wrote Hamlet ?",
    "hello",
    "A much longer sentence about the colour of the sky at dusk, over a calm and quiet sea.",
    "Combien de kilomètres entre Paris et Lyon ?",
]
TEXTS = ["the match ended", "a late goal", "the team won", "bake the bread", "tomato soup", "pasta"]
LABELS = [["sport"]] * 3 + [["food"]] * 3
