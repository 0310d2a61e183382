"""The training backend: how G and D are stepped, reduced, averaged (EMA) and checkpointed.

The only module that imports deepspeed. One interface, two implementations: `PlainBackend`
(torch.optim.Adam per network; with several processes, the original's flat all-reduce of each
phase's gradients, SPEC 5.1) and `DeepSpeedBackend` (one `deepspeed.initialize` per network, each
with its own config dict and ZeRO stage 0-3). Per iteration (SPEC 5.2), identical for both::

    be.setup(G, D, cfg.optim)          # requires_grad already marks what trains (frozen trunks off)
    be.begin("G")                      # D frozen, G's trainable set on, grads cleared
    for each chunk:                    # any number of backward() before one step()
        img = be.forward("G", z, c)
        be.backward("G", g_loss(be.forward("D", blur(img), c), split, reduction))
    be.step("G")
    be.begin("D")
    for each chunk:
        with torch.no_grad():
            fake = be.forward("G", z, c, update_w_avg=True)
        be.backward("D", d_loss(be.forward("D", fake, c), be.forward("D", real, rc), split, reduction))
    be.step("D")
    be.update_ema(beta)
    parts = be.state_dicts()           # full tensors on every rank (all ranks call it)

`forward(net, ...)` runs the network being trained through its DeepSpeed engine and the other one
through its raw module (`g_module` / `d_module`), so the other engine's hooks never fire; both
under the network's autocast setting, float outputs cast to fp32. Under ZeRO-3 the trained
network must go through the engine (a raw forward gave silently wrong G updates), so a phase
that calls G's submodules directly (path-length regularization: mapping, then synthesis) needs G
at ZeRO stage <= 2 (`zero_stage={"G": 2, "D": 3}`).

Decisions (ECOSYSTEM "DeepSpeed with a GAN"):
- Accumulation: `managed_gradient_accumulation: false` (the caller owns the boundary: backward()
  accumulates, step() reduces and updates), gradient_accumulation_steps 1 and
  `scale_wrt_gas=False`: micro-batch gradients are summed as in plain PyTorch at every ZeRO stage
  (with the default, ZeRO-1/2 keep only the last backward). Needs deepspeed >= 0.19.
- Optimizer: config "Adam" with `torch_adam: true, adam_w_mode: false, fused: true`, i.e. fused
  torch.optim.Adam (no CUDA JIT op; runs on CPU; `found_inf` skips, below), float betas from
  OptimConfig.adam(), no weight decay.
- Precision per network: "fp32" (default; CPU and the original) or "autocast_bf16" (DeepSpeed
  `torch_autocast` plus torch.autocast around forward: parameters, master weights and Adam stay
  fp32, frozen feature networks keep fp32 weights; the choice for D on GPUs once the conditional
  heads run under autocast, see tests/engine/test_distributed.py). DeepSpeed's `"bf16"` mode is
  not offered: it casts every parameter of the module, frozen EfficientNet/DeiT trunks included,
  and not the fp32 images fed to it. G's precision is GeneratorConfig.dtype, not autocast.
- Gradient reduction dtype: fp32 for both engines, always (`communication_data_type: fp32`, and
  `torch_autocast.lower_precision_safe_modules: []`: by default DeepSpeed's autocast marks every
  Conv2d/Linear parameter for bf16 gradient communication, which rounds D's gradients to bf16
  before the fp32 Adam update). `REDUCE_DTYPE`; tested.
- ZeRO-3: frozen parameters (D's DeiT-B / lite0 trunks and their random projections; G's layers
  carried over from the previous stage) become buffers of their modules before DeepSpeed wraps
  the network (`frozen_params_as_buffers`; same state-dict keys), so they are neither partitioned
  nor gathered on every forward: without gradients or optimizer state there is little memory to
  gain, and each gather is a collective. Only trainable parameters are partitioned; the compile
  regions of engine/compile.py are ZeRO-3 leaf modules (one gather per block).
- torch.compile (`setup(..., compile=True)`): the network's regions are compiled after DeepSpeed
  wraps it, so its hooks stay outside the compiled code (engine/compile.py).
- Sanitizing (SPEC 5.1): plain sanitizes the reduced flat gradient (NaN->0, +-inf->+-1e5) as the
  original; DeepSpeed reduces inside its hooks, so a tensor hook sanitizes each micro-batch
  gradient before it is accumulated (the same for finite gradients).
- Non-finite steps (engine/divergence.py): where the original applies the sanitized gradient, a
  step whose loss or raw gradient held a NaN or an inf on any rank is skipped instead, decided on
  the device with no host sync: a 0-d flag per phase (`isfinite` of every loss in backward(); of
  every gradient in step() for plain, in the same tensor hook for DeepSpeed), MAX-reduced over
  the ranks, is handed to fused torch Adam as `found_inf`, which leaves parameters, moments and
  the step count untouched when it is set (the mechanism torch.amp.GradScaler uses). Adam is
  therefore `fused=True` in both backends (one kernel for all parameters on a GPU). Counters:
  `skipped[net]` (this run's skipped steps) and `bad_run[net]` (non-finite steps in a row), both
  device tensors read by the loop once per tick / every few iterations.
- EMA under ZeRO-3: each rank lerps only its own partition (`param.ds_tensor`) of each G
  parameter, with no communication per step; reading the EMA all-gathers once (snapshots only).
- Checkpoints: `state_dicts()` gives full, name-keyed tensors with one layout for both backends,
  every stage and world size: G, D, G_ema, opt_G, opt_D ("<param>.exp_avg", "<param>.exp_avg_sq",
  "step"), so a run resumes on another backend, stage or GPU count.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import socket

import torch
import torch.distributed as tdist
from torch import nn

NETS = ("G", "D")
REDUCE_DTYPE = torch.float32  # gradients are reduced (all-reduce / reduce-scatter) in this dtype
PRECISIONS = ("fp32", "autocast_bf16")
ADAM_KEYS = ("exp_avg", "exp_avg_sq")
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """An unused TCP port on localhost (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(port: int | None = None) -> dict[str, str]:
    """Make this process rank 0 of 1 unless a launcher set WORLD_SIZE: RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT (a free port unless given), and DS_ACCELERATOR=cpu
    without a CUDA GPU. Without them DeepSpeed looks for mpi4py. Returns the values in effect."""
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port if port is not None else free_port())
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return {k: os.environ[k] for k in LAUNCH_VARS}


def init_distributed(device: torch.device | str = "cpu") -> tuple[int, int]:
    """Join the launcher's process group (nccl on CUDA, gloo on CPU) when WORLD_SIZE > 1 and none
    exists. Returns (rank, world size); (0, 1) for a single process."""
    if not tdist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        tdist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return (tdist.get_rank(), tdist.get_world_size()) if tdist.is_initialized() else (0, 1)


def sanitize_(grads: list[torch.Tensor]) -> None:
    """In place: NaN -> 0, +inf -> 1e5, -inf -> -1e5 (SPEC 5.1)."""
    for g in grads:
        torch.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5, out=g)


def _sanitized(grad: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(grad, nan=0.0, posinf=1e5, neginf=-1e5)


def init_adam_state(opt: torch.optim.Optimizer, params: list[torch.Tensor] | None = None) -> None:
    """Create torch Adam's lazy state (step 0, zero moments) for `params` (default: the
    optimizer's) as its first step would, so the moments can be read and loaded before it."""
    group = opt.param_groups[0]
    on_device = group.get("fused") or group.get("capturable")
    for p in params if params is not None else [p for g in opt.param_groups for p in g["params"]]:
        if not opt.state[p]:
            opt.state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
                                exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches a clone of the world group in module globals (deepspeed.utils.groups).
    When a process destroys its process group and creates a new one (several training stages or
    test modules in one process), the clone points at the dead group and ZeRO's broadcasts fail
    with "Group ... is not registered". Called after a fresh group is created: DeepSpeed clones
    the new world group on first use."""
    from deepspeed.utils import groups

    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP"):
        if getattr(groups, name, None) is not None:
            setattr(groups, name, None)


def frozen_params_as_buffers(module: nn.Module):
    """Re-register every frozen parameter of `module` (requires_grad False) as a persistent buffer
    of the same module under the same name, and return a function that undoes it. State-dict keys
    and values are unchanged, and the forward computes the same (gradients still reach the
    inputs); but `module.parameters()` no longer lists them, so DeepSpeed ZeRO-3, which takes
    every parameter of the module it wraps, neither partitions nor gathers them."""
    moved = []
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and not p.requires_grad:
                del m._parameters[name]
                m._buffers[name] = p
                moved.append((m, name))

    def restore() -> None:
        for m, name in moved:
            if name in m._buffers:
                m._parameters[name] = m._buffers.pop(name)

    return restore


class Backend:
    """The interface the loop uses, and the code both implementations share.

    Args:
        device: where the modules live ("cpu", "cuda:N").
        precision: {"G": "fp32" | "autocast_bf16", "D": ...}; missing entries are "fp32".
        sanitize: repair NaN/inf gradients (SPEC 5.1).

    Attributes: rank, world_size, device, g_module / d_module (the raw nn.Modules), phase.
    """

    def __init__(self, *, device: torch.device | str = "cpu", precision: dict[str, str] | None = None,
                 sanitize: bool = True):
        self.device = torch.device(device)
        self.precision = {"G": "fp32", "D": "fp32", **(precision or {})}
        if set(self.precision) != set(NETS) or not set(self.precision.values()) <= set(PRECISIONS):
            raise ValueError(f"precision must map G and D to one of {PRECISIONS}, got {self.precision}")
        self.sanitize = sanitize
        self.rank, self.world_size, self.phase = 0, 1, None
        self.modules: dict[str, nn.Module] = {}
        self.trainable: dict[str, list[nn.Parameter]] = {}
        self._ema: list[torch.Tensor] = []  # this rank's piece (`_local`) of every G parameter
        self._ema_template: nn.Module | None = None  # G's structure on the meta device
        zero = lambda: torch.zeros((), device=self.device)  # noqa: E731
        self._nonfinite = {n: zero() for n in NETS}  # this phase saw a NaN/inf loss or gradient (0. or 1.)
        self.skipped = {n: zero() for n in NETS}  # steps skipped as non-finite, this process's run
        self.bad_run = {n: zero() for n in NETS}  # non-finite steps in a row, up to the last step

    def setup(self, G: nn.Module, D: nn.Module, optim_cfg, *, compile: bool = False) -> None:
        """Take over G and D; requires_grad must mark exactly what trains (begin() restores that
        set per phase). optim_cfg: engine.config.OptimConfig (Adam per network via .adam(net)).
        compile: torch.compile both networks' regions (engine/compile.py) once they are wrapped."""
        raise NotImplementedError

    def _record(self, G: nn.Module, D: nn.Module) -> None:
        from engine.compile import uncompiled_copy

        self.modules = {"G": G, "D": D}
        self._ema_template = uncompiled_copy(G).to("meta")
        self.trainable = {n: [p for p in m.parameters() if p.requires_grad] for n, m in self.modules.items()}
        # Before setup moves anything: ZeRO-3 re-registers frozen parameters as buffers.
        self.param_names = {n: [k for k, _ in m.named_parameters()] for n, m in self.modules.items()}

    @property
    def g_module(self) -> nn.Module:
        return self.modules["G"]

    @property
    def d_module(self) -> nn.Module:
        return self.modules["D"]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- a phase: begin, forward, backward (any number), step ---------------------------------
    def begin(self, net: str) -> None:
        """Start `net`'s phase: the other network frozen, `net`'s trainable set on, grads cleared."""
        for n in NETS:
            for p in self.trainable[n]:
                p.requires_grad_(n == net)
        self.phase = net
        self.zero_grad(net)
        self._nonfinite[net].zero_()

    def _flag_nonfinite(self, net: str, t: torch.Tensor) -> None:
        """Mark `net`'s phase non-finite when `t` holds a NaN or an inf (on the device, no sync)."""
        torch.maximum(self._nonfinite[net], (~torch.isfinite(t.detach()).all()).float(), out=self._nonfinite[net])

    def _found_inf(self, net: str) -> torch.Tensor:
        """The phase's non-finite flag agreed over the ranks (MAX), for Adam's `found_inf`, and the
        counters updated; every rank calls it once per step."""
        flag = self._nonfinite[net]
        if self.world_size > 1:
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        self.skipped[net] += flag
        self.bad_run[net].add_(flag).mul_(flag)  # +1 while non-finite, back to 0 at a good step
        return flag

    @contextlib.contextmanager
    def _all_trainable(self):
        """Every trainable parameter on for the duration (DeepSpeed's state helpers need it)."""
        params = self.trainable["G"] + self.trainable["D"]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

    def autocast(self, net: str):
        """The forward context of `net`: bf16 autocast, or nothing."""
        if self.precision[net] == "autocast_bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, net: str, *args, **kwargs):
        """Run `net` (through its engine when it is the phase's network); float outputs in fp32."""
        with self.autocast(net):
            out = self._callable(net)(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    def _callable(self, net: str):
        return self.modules[net]

    def zero_grad(self, net: str) -> None:
        raise NotImplementedError

    def backward(self, net: str, loss: torch.Tensor) -> None:
        """Accumulate d loss / d (net's parameters); calls add up until step()."""
        raise NotImplementedError

    def step(self, net: str) -> None:
        """Average over ranks, sanitize, one Adam step, clear the gradients."""
        raise NotImplementedError

    # -- EMA of G -------------------------------------------------------------------------------
    def _local(self, p: nn.Parameter) -> torch.Tensor:
        """This rank's piece of a parameter: the whole tensor (ZeRO-3: its partition)."""
        return p.detach()

    def _slice(self, full: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
        """This rank's `_local` piece of a full tensor."""
        return full

    def _gather(self, pieces: list[torch.Tensor], params: list[nn.Parameter]) -> list[torch.Tensor]:
        """Full tensors from every rank's `_local`-shaped pieces (collective under ZeRO-3)."""
        return [t.detach().clone() for t in pieces]

    def init_ema(self) -> None:
        """Restart the EMA from G's current weights (setup does this)."""
        self._ema = [self._local(p).clone() for p in self.g_module.parameters()]

    @torch.no_grad()
    def update_ema(self, beta: float) -> None:
        """G_ema = lerp(G, G_ema, beta) for every parameter, frozen ones too (SPEC 5.7), each rank
        on its own piece. Buffers are G's whenever the EMA is read (the original copies them)."""
        torch._foreach_lerp_(self._ema, [self._local(p) for p in self.g_module.parameters()], 1.0 - beta)

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """Full G_ema state dict: EMA parameters and G's current buffers (collective, ZeRO-3)."""
        params = dict(self.g_module.named_parameters())
        full = dict(zip(params, self._gather(self._ema, list(params.values()))))
        return {k: full[k] if k in full else v.detach().clone()
                for k, v in self.g_module.state_dict(keep_vars=True).items()}

    @torch.no_grad()
    def load_ema_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for e, (name, p) in zip(self._ema, self.g_module.named_parameters()):
            e.copy_(self._slice(sd[name].to(e.device, e.dtype), p))

    def ema_module(self) -> nn.Module:
        """A fresh plain generator with the EMA weights, for samples and metrics (collective
        under ZeRO-3; built on each call, so keep it only while needed)."""
        m = copy.deepcopy(self._ema_template).to_empty(device=self.device)
        m.load_state_dict(self.ema_state_dict())
        src = dict(self.g_module.named_buffers())  # under ZeRO-3 also G's frozen params (same names)
        with torch.no_grad():
            for name, b in m.named_buffers():
                b.copy_(src[name])  # non-persistent buffers too
        return m.requires_grad_(False)

    # -- checkpoints ------------------------------------------------------------------------------
    def module_state_dict(self, net: str) -> dict[str, torch.Tensor]:
        """Full state dict of G or D (collective under ZeRO-3)."""
        return {k: v.detach().clone() for k, v in self.modules[net].state_dict().items()}

    def optimizer_state_dict(self, net: str) -> dict[str, torch.Tensor]:
        """{"step", "<param>.exp_avg", "<param>.exp_avg_sq"}, full tensors (collective)."""
        raise NotImplementedError

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """G, D, G_ema, opt_G, opt_D as full tensors on every rank (all ranks must call)."""
        with self._all_trainable():
            return {"G": self.module_state_dict("G"), "D": self.module_state_dict("D"), "G_ema": self.ema_state_dict(),
                    "opt_G": self.optimizer_state_dict("G"), "opt_D": self.optimizer_state_dict("D")}

    def load_state_dicts(self, parts: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load state_dicts() output of any backend, stage or world size; absent parts are kept."""
        with self._all_trainable(), torch.no_grad():
            for net in NETS:
                if net in parts:
                    want, got = set(self.modules[net].state_dict()), set(parts[net])
                    if want != got:
                        raise KeyError(f"{net} state dict: missing {sorted(want - got)[:5]}, "
                                       f"unexpected {sorted(got - want)[:5]}")
                    self._load_module(net, parts[net])
                if f"opt_{net}" in parts:
                    self._load_optimizer(net, parts[f"opt_{net}"])
            if "G_ema" in parts:
                self.load_ema_state_dict(parts["G_ema"])

    def _load_module(self, net: str, sd: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _load_optimizer(self, net: str, sd: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _named_trainable(self, net: str) -> list[tuple[str, nn.Parameter]]:
        ids = {id(p) for p in self.trainable[net]}
        return [(n, p) for n, p in self.modules[net].named_parameters() if id(p) in ids]

    def close(self) -> None:
        """Drop what setup() built (the process group is the caller's)."""
        self.modules, self.trainable, self._ema = {}, {}, []


class PlainBackend(Backend):
    """Plain PyTorch, one torch.optim.Adam per network. With several ranks (torch.distributed
    initialized, or WORLD_SIZE > 1), parameters and buffers are broadcast from rank 0 at setup,
    and each step's gradients are flattened, summed, divided by the world size and sanitized."""

    def setup(self, G: nn.Module, D: nn.Module, optim_cfg, *, compile: bool = False) -> None:
        from engine.compile import compile_regions

        self.rank, self.world_size = init_distributed(self.device)
        self._record(G, D)
        if self.world_size > 1:
            with torch.no_grad():
                for t in [*G.parameters(), *G.buffers(), *D.parameters(), *D.buffers()]:
                    tdist.broadcast(t.data, src=0)
        self.optimizers = {n: torch.optim.Adam(self.trainable[n], **optim_cfg.adam(n), fused=True) for n in NETS}
        for opt in self.optimizers.values():
            init_adam_state(opt)
        self.init_ema()
        if compile:
            compile_regions([G, D])

    def zero_grad(self, net: str) -> None:
        self.optimizers[net].zero_grad(set_to_none=True)

    def backward(self, net: str, loss: torch.Tensor) -> None:
        self._flag_nonfinite(net, loss)
        loss.backward()

    @torch.no_grad()
    def step(self, net: str) -> None:
        params = [p for p in self.trainable[net] if p.grad is not None]
        if params:  # the largest |gradient| of each tensor: NaN or inf exactly when one element is
            self._flag_nonfinite(net, torch.stack(torch._foreach_norm([p.grad for p in params], float("inf"))))
        if params and self.world_size > 1:
            flat = torch.cat([p.grad.flatten() for p in params])
            tdist.all_reduce(flat)
            flat /= self.world_size
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad.copy_(g.view_as(p.grad))
        if self.sanitize:
            sanitize_([p.grad for p in params])
        opt = self.optimizers[net]
        opt.found_inf = self._found_inf(net)  # fused Adam skips the whole update when it is 1
        opt.step()
        self.zero_grad(net)

    def optimizer_state_dict(self, net: str) -> dict[str, torch.Tensor]:
        state = self.optimizers[net].state
        out = {"step": max(state[p]["step"] for p in self.trainable[net]).detach().float().cpu().clone()}
        for name, p in self._named_trainable(net):
            out.update({f"{name}.{k}": state[p][k].detach().clone() for k in ADAM_KEYS})
        return out

    def _load_module(self, net: str, sd: dict[str, torch.Tensor]) -> None:
        self.modules[net].load_state_dict(sd)

    def _load_optimizer(self, net: str, sd: dict[str, torch.Tensor]) -> None:
        state = self.optimizers[net].state
        for name, p in self._named_trainable(net):
            state[p]["step"].fill_(float(sd["step"]))
            for k in ADAM_KEYS:
                state[p][k].copy_(sd[f"{name}.{k}"])


class DeepSpeedBackend(Backend):
    """One DeepSpeed engine per network: separate config dicts, learning rates and optimizers.

    Args:
        zero_stage: ZeRO stage 0-3 of both engines, or per network ({"G": 2, "D": 3}).
        batch_gpu: images per micro-batch (DeepSpeed's bookkeeping only; no loss scaling).
        device, precision, sanitize: see Backend. The process group comes from the launcher's
            environment; setup() calls launch_env() so that a single plain process works too.

    ZeRO-3 partitions: rank r holds elements [r*n, (r+1)*n) of a flattened parameter (the last
    rank's zero-padded), n = p.ds_tensor.numel().
    """

    def __init__(self, *, zero_stage: int | dict[str, int] = 0, batch_gpu: int = 1, **kwargs):
        super().__init__(**kwargs)
        stages = zero_stage if isinstance(zero_stage, dict) else {n: zero_stage for n in NETS}
        if set(stages) != set(NETS) or not all(s in (0, 1, 2, 3) for s in stages.values()):
            raise ValueError(f"zero_stage must be 0-3 for G and D, got {zero_stage!r}")
        self.stages, self.batch_gpu, self.engines = stages, batch_gpu, {}
        self._restore = []  # undo frozen_params_as_buffers at close()

    def config(self, net: str, optim_cfg) -> dict:
        """The JSON-able DeepSpeed config of `net`'s engine (worth recording in the run dir)."""
        adam, stage = optim_cfg.adam(net), self.stages[net]
        cfg = {
            "train_micro_batch_size_per_gpu": self.batch_gpu,
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,  # backward() accumulates, step() is the boundary
            "optimizer": {"type": "Adam", "params": {
                "lr": float(adam["lr"]), "betas": [float(b) for b in adam["betas"]], "eps": float(adam["eps"]),
                "weight_decay": 0.0, "torch_adam": True, "adam_w_mode": False, "fused": True}},
            # With caller-owned accumulation DeepSpeed allows overlap_comm at ZeRO-2 only.
            "zero_optimization": {"stage": stage, "overlap_comm": stage == 2},
            "gradient_clipping": 0.0,
            "communication_data_type": "fp32",  # REDUCE_DTYPE (module docstring)
            "steps_per_print": 2**31 - 1,
        }
        if self.precision[net] == "autocast_bf16":  # no parameter marked for bf16 gradient communication
            cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
        return cfg

    def setup(self, G: nn.Module, D: nn.Module, optim_cfg, *, compile: bool = False) -> None:
        import deepspeed

        from engine.compile import compile_regions, regions, zero3_leaves

        if not hasattr(deepspeed.DeepSpeedEngine, "managed_gradient_accumulation"):
            raise RuntimeError("DeepSpeedBackend needs managed_gradient_accumulation (deepspeed >= 0.19), "
                               f"found deepspeed {deepspeed.__version__}")
        launch_env()
        fresh = not tdist.is_initialized()
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        if fresh:
            _forget_deepspeed_groups()
        self.rank, self.world_size = tdist.get_rank(), tdist.get_world_size()
        self._record(G, D)
        for net in NETS:  # before ZeRO's own gradient hooks, on every micro-batch
            for p in self.trainable[net]:
                p.register_hook(functools.partial(self._grad_hook, net))
        blocks = {}
        for net in NETS:
            zero3 = self.stages[net] == 3
            blocks[net] = regions(self.modules[net], zero3)
            if zero3:
                zero3_leaves(blocks[net])
                self._restore.append(frozen_params_as_buffers(self.modules[net]))
            engine, *_ = deepspeed.initialize(model=self.modules[net], model_parameters=self.trainable[net],
                                              config=self.config(net, optim_cfg))
            self.engines[net] = engine
            # ZeRO-3 detaches its flat fp32 partitions from Adam's param groups between steps.
            flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
            init_adam_state(engine.basic_optimizer, None if flat is None else list(flat))
            link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
            if link is not None:  # ZeRO-1/2: point each parameter's fragment at the new moments
                link()
        self.init_ema()
        if compile:
            for net in NETS:
                compile_regions(blocks[net])

    @staticmethod
    def _zero3(p: torch.Tensor) -> bool:
        return hasattr(p, "ds_tensor")

    def _callable(self, net: str):
        return self.engines[net] if net == self.phase else self.engines[net].module

    def zero_grad(self, net: str) -> None:
        engine = self.engines[net]
        (engine.optimizer.zero_grad if self.stages[net] else engine.zero_grad)()

    def _grad_hook(self, net: str, grad: torch.Tensor) -> torch.Tensor:
        self._flag_nonfinite(net, grad)
        return _sanitized(grad) if self.sanitize else grad

    def backward(self, net: str, loss: torch.Tensor) -> None:
        self._flag_nonfinite(net, loss)
        self.engines[net].backward(loss, scale_wrt_gas=False)

    def step(self, net: str) -> None:
        # The wrapped ZeRO optimizers call this torch Adam on their fp32 partitions.
        self.engines[net].basic_optimizer.found_inf = self._found_inf(net)
        self.engines[net].step()

    def _local(self, p: nn.Parameter) -> torch.Tensor:
        return p.ds_tensor.detach() if self._zero3(p) else p.detach()

    def _slice(self, full: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
        if not self._zero3(p):
            return full
        n = p.ds_tensor.numel()
        flat = torch.nn.functional.pad(full.flatten(), (0, n * self.world_size - full.numel()))
        return flat[self.rank * n:(self.rank + 1) * n]

    def _gather(self, pieces: list[torch.Tensor], params: list[nn.Parameter]) -> list[torch.Tensor]:
        z3 = [self._zero3(p) for p in params]
        rows = None
        if self.world_size > 1 and any(z3):  # one all_gather of all partitions, concatenated
            local = torch.cat([t.detach().flatten() for t, z in zip(pieces, z3) if z])
            rows = [torch.empty_like(local) for _ in range(self.world_size)]
            tdist.all_gather(rows, local)
        out, offset = [], 0
        for t, p, z in zip(pieces, params, z3):
            if not z:
                out.append(t.detach().clone())
                continue
            n = t.numel()
            parts = [r[offset:offset + n] for r in rows] if rows is not None else [t.detach().flatten()]
            out.append(torch.cat(parts)[:p.ds_numel].view(p.ds_shape).clone())
            offset += n
        return out

    def module_state_dict(self, net: str) -> dict[str, torch.Tensor]:
        from deepspeed.runtime.zero import GatheredParameters

        out = {}
        for k, v in self.modules[net].state_dict(keep_vars=True).items():  # one parameter at a time
            with GatheredParameters([v], enabled=self._zero3(v)):
                out[k] = v.detach().clone()
        return out

    def optimizer_state_dict(self, net: str) -> dict[str, torch.Tensor]:
        from deepspeed.utils import safe_get_full_optimizer_state

        state = self.engines[net].basic_optimizer.state
        out = {"step": max(st["step"] for st in state.values()).detach().float().cpu().clone()}
        for name, p in self._named_trainable(net):
            for k in ADAM_KEYS:
                full = state[p][k] if self.stages[net] == 0 else safe_get_full_optimizer_state(p, k)
                out[f"{name}.{k}"] = full.detach().reshape(p.ds_shape if self._zero3(p) else p.shape).clone()
        return out

    def _load_module(self, net: str, sd: dict[str, torch.Tensor]) -> None:
        from deepspeed.runtime.zero import GatheredParameters
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_local_fp32_param

        trainable = {id(p) for p in self.trainable[net]}
        for k, v in self.modules[net].state_dict(keep_vars=True).items():
            src = sd[k].to(self.device)
            with GatheredParameters([v], modifier_rank=0, enabled=self._zero3(v)):
                v.data.copy_(src)
            if self.stages[net] > 0 and id(v) in trainable:  # and the optimizer's fp32 master copy
                if self._zero3(v):  # the full-tensor setter mishandles a padded last partition
                    safe_set_local_fp32_param(v, self._slice(src.float(), v))
                else:
                    safe_set_full_fp32_param(v, src.float())

    def _load_optimizer(self, net: str, sd: dict[str, torch.Tensor]) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state, safe_set_local_optimizer_state

        state = self.engines[net].basic_optimizer.state
        for st in state.values():
            st["step"].fill_(float(sd["step"]))
        for name, p in self._named_trainable(net):
            for k in ADAM_KEYS:
                src = sd[f"{name}.{k}"].to(self.device)
                if self.stages[net] == 0:
                    state[p][k].copy_(src)
                elif self._zero3(p):
                    safe_set_local_optimizer_state(p, self._slice(src, p), k)
                else:
                    safe_set_full_optimizer_state(p, src, k)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.destroy()
        for restore in self._restore:
            restore()
        self.engines, self._restore = {}, []
        super().close()
