"""Training of GPT models on the simulated wafer.

Numerics (this package's ``backward``, ``optim``, ``loss_scale``, ``tokenizer`` and ``trainer``
modules): forward + backward of every GPT-2 op, AdamW with decoupled weight decay as done in
MemoryX, dynamic loss scaling, a download-free byte tokenizer with a shipped public-domain
text, and a trainer that ties them together. Import the submodules directly; this file
imports nothing so that importing the package stays cheap.
"""
