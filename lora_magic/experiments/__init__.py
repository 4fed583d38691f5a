"""Experiments on runs: plan (and its measured pre-flight), sweep, evaluate, diff and export."""
