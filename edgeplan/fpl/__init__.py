"""Flexible parallel learning (FPL): one branch per data source, joined by a learned junction layer.

``build`` turns a single-input model into the K-input FPL model file (``edgeplan fpl``);
``junction`` is the junction layer; training across sources lives in
``edgeplan.training.sources``.
"""
