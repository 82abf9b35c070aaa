"""Latency-measured, per-layer search: the fastest artifact within a top-1 budget.

``space`` (what may change per layer / per prunable group), ``latency`` (per-node ORT
profiles -> a cost table, checked against whole-model timing), ``sensitivity`` (per-option
KL to the FP32 model on search images), ``solve`` (multiple-choice knapsack + measured
verification), ``pareto`` (the front and its plot), ``run`` (the whole search).
See docs/search.md for the method and why it was chosen.
"""

from edgecnn.search.solve import Candidate, SearchResult, knapsack, solve

__all__ = ["Candidate", "SearchResult", "knapsack", "solve"]
