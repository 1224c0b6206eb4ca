"""profiles/: boards as data (YAML), cluster files, and the cost model.

Pure Python + numpy + yaml: no torch, no TVM (a test enforces it).
"""
