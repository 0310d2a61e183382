"""Activation checkpointing of the generator, applied to a built model (model/ stays architecture only).

`checkpoint_synthesis(G, min_size)` makes every synthesis layer whose output side is at least
`min_size` recompute its forward during backward instead of keeping its activations
(torch.utils.checkpoint, non-reentrant: works under torch.compile and keeps RNG state). The
layers keep their names and parameters, so checkpoints and the DeepSpeed engines see the same
module. The high-resolution head layers of the 512² and 1024² stages hold most of G's
activation memory; `--act-ckpt 256` in engine/train.py trades roughly one extra forward of
those layers for it.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def checkpoint_synthesis(G: torch.nn.Module, min_size: int) -> list[str]:
    """Recompute-in-backward for the synthesis layers with output side >= min_size; returns their names."""
    names = []
    for name, layer in G.synthesis.layers.items():
        if layer.spec.out.size < min_size or getattr(layer, "_act_ckpt", False):
            continue
        plain = layer.forward  # the bound method of the class

        def forward(*args, _plain=plain, **kwargs):
            if not torch.is_grad_enabled():
                return _plain(*args, **kwargs)
            return checkpoint(_plain, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
        layer._act_ckpt = True
        names.append(name)
    return names
