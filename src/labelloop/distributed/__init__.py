"""Data-parallel training across the train machines with PyTorch's own distributed stack.

:mod:`.trainer` is the fine-tuning loop every rank runs; :mod:`.world` forms the world (c10d store,
ranks, re-forming after a lost rank). Both import only PyTorch and NumPy, so a rank process starts
quickly.
"""
