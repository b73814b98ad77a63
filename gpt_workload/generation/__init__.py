"""Generation (serving): prefill, then one decode step per new token against a KV cache.

The decode step's layout is described by :mod:`gpt_workload.generation.split`: how each
weight matrix is tiled over PEs for the matrix-vector products and how the KV cache of a
head is spread over PEs. The timing lowering and the numerics both read it, so the numerics
combine partial sums in the order the simulated fabric does.
"""
