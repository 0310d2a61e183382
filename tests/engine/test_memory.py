"""Activation checkpointing (engine/memory.py): same outputs and gradients, forward recomputed."""

from __future__ import annotations

import torch

from engine.memory import checkpoint_synthesis
from model.generator import build_generator


def _grads(G, z, c):
    G.zero_grad(set_to_none=True)
    img = G(z, c)
    (img.square().sum()).backward()
    return img.detach(), {n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None}


def test_checkpointed_layers_match_and_recompute():
    torch.manual_seed(0)
    G = build_generator("tiny", 32, 3, impl="ref")
    z, c = torch.randn(2, G.cfg.z_dim), torch.tensor([0, 2])
    img0, g0 = _grads(G, z, c)
    names = checkpoint_synthesis(G, min_size=40)
    sizes = {n: layer.spec.out.size for n, layer in G.synthesis.layers.items()}
    assert names and all(sizes[n] >= 40 for n in names) and len(names) < len(sizes)
    assert checkpoint_synthesis(G, min_size=40) == []  # idempotent
    calls = []
    hooks = [G.synthesis.layers[n].affine.register_forward_pre_hook(lambda m, a: calls.append(1)) for n in names]
    img1, g1 = _grads(G, z, c)
    for h in hooks:
        h.remove()
    assert len(calls) == 2 * len(names)  # forward, then recomputed in backward (seen through the affine)
    torch.testing.assert_close(img1, img0, rtol=0, atol=0)
    assert g1.keys() == g0.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-6, atol=1e-7, msg=lambda m: f"{k}: {m}")
    assert set(G.state_dict()) == set(build_generator("tiny", 32, 3).state_dict())  # names unchanged
    with torch.no_grad():
        calls.clear()
        torch.testing.assert_close(G(z, c), img0, rtol=0, atol=0)


def test_path_length_double_backward_through_checkpointed_layers():
    """The stem's path-length penalty (double backward) gives the same G gradients with checkpointing."""
    from engine.losses import path_length_penalty

    torch.manual_seed(1)
    G = build_generator("tiny", 16, 3, impl="ref")
    z, c = torch.randn(2, G.cfg.z_dim), torch.tensor([1, 2])
    grads = []
    for ckpt in (False, True):
        if ckpt:
            assert checkpoint_synthesis(G, min_size=20)
        G.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the penalty's random image-space direction
        penalty, _ = path_length_penalty(G.synthesis, G.mapping(z, c), torch.tensor(0.0), 0.01)
        penalty.mean().backward()
        grads.append({n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
