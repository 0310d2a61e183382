"""Every torch.compile call of the engine lives here, applied to modules that are already built.

Training (`compile_regions` / `compile_for_training`): what is compiled is a network's
`forward` *function*, assigned to the module instance, never its `__call__`. Module hooks
therefore run eagerly around the compiled code: DeepSpeed's engine hooks on the root module
(timers, autocast), and under ZeRO-3 its parameter fetch/release hooks, are marked
`torch.compiler.disable` and would stop a `fullgraph=True` trace (or, without fullgraph, break
the graph at every submodule and recompile per submodule id). Parameter names keep no
`_orig_mod.` prefix, so checkpoints, the DeepSpeed engines and the EMA see the same names.

Regions, per ZeRO stage of the network:
- ZeRO 0-2 (and the plain backend): one region, the whole network's forward, fullgraph.
- ZeRO-3: DeepSpeed fetches and releases parameters in hooks on every submodule, which no
  fullgraph region can contain, and without fullgraph Dynamo breaks the graph at every hook and
  recompiles per submodule id (the recompile limit is reached in one iteration, then inductor
  fails: seen with DeepSpeed 0.19 / torch 2.14). The regions are therefore the frozen blocks
  (`frozen_blocks`: D's feature networks, the bulk of D's compute; G's mapping and carried-over
  layers in superres stages): their parameters are not partitioned (engine/distributed.py turns
  them into buffers), they are marked ZeRO-3 leaves so no hook sits inside, and each is compiled
  fullgraph. Trainable blocks run eagerly under ZeRO-3. That is why ZeRO-2 is the default at
  every stage (the memory arithmetic is in the README).

The path-length phase runs G under `torch.compiler.set_stance("force_eager")` (double backward
does not compile, STYLE 4.1), whatever is compiled. `uncompiled_copy` gives a deep copy without
any per-instance `forward` (compiled or checkpointed): a copied function would still call the
original module, so an EMA copy would render the training weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def compile_enabled(setting: str | bool, device: torch.device | str) -> bool:
    """Resolve a compile setting: "auto" = on for CUDA devices, off on CPU; "on"/"off" (or a bool)."""
    if isinstance(setting, bool):
        return setting
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"compile must be 'auto', 'on' or 'off', got {setting!r}")
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def frozen_blocks(net: nn.Module) -> list[nn.Module]:
    """The maximal submodules of `net` whose parameters are all frozen (at least one): D's feature
    networks, and in superres stages G's mapping and carried-over synthesis layers."""
    out = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, (nn.ModuleDict, nn.ModuleList)):  # containers have no forward
                visit(child)
                continue
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                out.append(child)
            elif params:
                visit(child)

    visit(net)
    return out


def regions(net: nn.Module, zero3: bool) -> list[nn.Module]:
    """The modules whose forward is compiled (see the module docstring). Call it before
    DeepSpeed wraps the network (under ZeRO-3 the frozen parameters then become buffers)."""
    return frozen_blocks(net) if zero3 else [net]


def zero3_leaves(blocks: list[nn.Module]) -> None:
    """Mark `blocks` as DeepSpeed ZeRO-3 leaf modules (before deepspeed.initialize): ZeRO-3
    registers no hooks inside them, so their compiled forward never meets one. Only for blocks
    without ZeRO-3 parameters: leaf mode on trainable blocks released parameters before their
    backward used them (DeepSpeed 0.19, seen on G's synthesis layers and D's heads)."""
    from deepspeed.utils import set_z3_leaf_module

    for m in blocks:
        set_z3_leaf_module(m, True)


def compile_regions(blocks: list[nn.Module], *, mode: str | None = None) -> list[nn.Module]:
    """Compile the forward of each module in `blocks` in place (fullgraph); returns them."""
    done = []
    for m in blocks:
        if "forward" in m.__dict__:
            raise RuntimeError(f"{type(m).__name__}.forward is already replaced (compiled or checkpointed); "
                               "compile before activation checkpointing, once")
        m.forward = torch.compile(m.forward, fullgraph=True, mode=mode)
        done.append(m)
    return done


def uncompiled_copy(module: nn.Module) -> nn.Module:
    """A deep copy with every per-instance forward override and in-place compile removed, so that it
    computes with its own parameters."""
    out = copy.deepcopy(module)
    for m in out.modules():
        m.__dict__.pop("forward", None)
        m.__dict__.pop("_act_ckpt", None)
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return out


def maybe_compile(module: torch.nn.Module, *, enabled: bool, device: torch.device,
                  mode: str | None = None) -> torch.nn.Module:
    """Inference: compile `module` in place (fullgraph) on GPU when enabled; returns the module.

    In place (`nn.Module.compile`) rather than a wrapper: parameter names keep no `_orig_mod.`
    prefix. mode: torch.compile mode; "reduce-overhead" records CUDA graphs (inference benchmarks).
    """
    if enabled and torch.device(device).type == "cuda":
        module.compile(fullgraph=True, mode=mode)
    return module
