"""Evaluation: the BBH and headroom suites, their methods, answer generation and reports."""
