"""engine/distributed.py: DeepSpeed (ZeRO 0-3) against plain PyTorch, and the real launcher on CPU.

Parity: one iteration (G-main with D frozen, then D-main with one combined fake+real loss per
micro-batch, both over 2 micro-batches so that ZeRO-1/2's silent gradient loss would show; EMA)
through DeepSpeedBackend must give the full state (weights, buffers, EMA, Adam moments) of the
same iteration through PlainBackend. In-process, rank 0 of 1 over gloo. Adam eps is 1e-3
(tests/engine/ds_steps.py) so that rounding-level gradient differences (ZeRO-3 sums the spectral
norm's gradient contributions in another order) stay rounding-level in the weights: with eps 1e-8
Adam's first step is lr * sign(g), which turns a rounding difference of a tiny gradient into a
full step.

Launcher: tests/engine/ds_steps.py under `python -m deepspeed.launcher.runner --num_gpus N`
with DS_ACCELERATOR=cpu (gloo), 1 and 2 ranks. The first DeepSpeed start on a machine JIT-builds
a small shared-memory comm op (about 90 s, cached in ~/.cache/torch_extensions): the in-process
tests or the 1-rank launch pay it, and every launch has a generous timeout.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from engine.divergence import read_counters
from engine.distributed import DeepSpeedBackend, PlainBackend, free_port, launch_env, sanitize_
from tests.engine import ds_steps

REPO = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_TIMEOUT_S = 600  # includes the one-time JIT build of DeepSpeed's comm op
HAS_DS = importlib.util.find_spec("deepspeed") is not None
needs_ds = pytest.mark.skipif(not HAS_DS, reason="deepspeed is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.distributed.*` is deprecated:FutureWarning")  # ZeRO-3 internals


@pytest.fixture(scope="module")
def ds_world():
    """This process as rank 0 of 1 on DeepSpeed's CPU accelerator (launcher variables, a fresh
    port; the gloo group and the environment are restored afterwards). Skips with the reason when
    deepspeed fails to import. The accelerator is chosen when deepspeed is first imported, so
    DS_ACCELERATOR=cpu is set before that: these are CPU parity tests on any machine."""
    saved = dict(os.environ)
    for k in LAUNCH_VARS:
        os.environ.pop(k, None)
    os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        import deepspeed  # noqa: F401
    except Exception as e:  # installed but broken
        os.environ.clear()
        os.environ.update(saved)
        pytest.skip(f"deepspeed is not importable: {e!r}")
    launch_env(port=free_port())
    yield
    if tdist.is_initialized():
        tdist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def setup():
    """Initial G and D (train mode) and one iteration's data, shared by every backend."""
    G, D = ds_steps.build_models(seed=0)
    batch = ds_steps.make_batch(7, ds_steps.BATCH, G.cfg.z_dim)
    return G, D, batch


def run_iteration(be, setup) -> dict:
    G0, D0, batch = setup
    G, D = copy.deepcopy(G0), copy.deepcopy(D0)
    be.setup(G, D, ds_steps.OPTIM)
    chunks = [slice(0, 2), slice(2, 4)]  # two micro-batches per phase
    ds_steps.iteration(be, batch, chunks, D.num_logits(ds_steps.RES), ema_beta=0.5)
    parts = be.state_dicts()
    be.close()
    return parts


@pytest.fixture(scope="module")
def setup_uncond():
    """The same, unconditional (the conditional D does not run under autocast yet)."""
    G, D = ds_steps.build_models(seed=0, c_dim=0)
    return G, D, ds_steps.make_batch(7, ds_steps.BATCH, G.cfg.z_dim, c_dim=0)


@pytest.fixture(scope="module")
def reference(setup):
    torch.manual_seed(0)
    return run_iteration(PlainBackend(), setup)


def assert_parts_close(got: dict, want: dict, rtol: float = 1e-5, atol_frac: float = 1e-5) -> None:
    """Every tensor of every part within rtol plus atol_frac of that tensor's largest value."""
    assert got.keys() == want.keys()
    for part in want:
        assert got[part].keys() == want[part].keys(), part
        for k, w in want[part].items():
            atol = atol_frac * float(w.abs().max()) if w.numel() else 0.0
            torch.testing.assert_close(got[part][k].float(), w.float(), rtol=rtol, atol=atol,
                                       msg=lambda m: f"{part}/{k}: {m}")


def test_reference_iteration_trains(setup, reference):
    """The reference moved G, D's heads and the EMA, and left D's frozen trunk alone."""
    G0, D0, _ = setup
    g0, d0 = G0.state_dict(), D0.state_dict()
    moved = [k for k, v in reference["G"].items() if v.is_floating_point() and not torch.equal(v, g0[k])]
    assert len(moved) > len([n for n, _ in G0.named_parameters()]) // 2
    heads = [k for k in d0 if k.startswith("discriminators.") and "weight" in k]
    assert heads and all(not torch.equal(reference["D"][k], d0[k]) for k in heads)
    trunk = [k for k in d0 if k.startswith("feature_networks.")]
    assert trunk and all(torch.equal(reference["D"][k], d0[k]) for k in trunk)
    w = "synthesis.layers.L0_36_32.weight"  # EMA with beta 0.5: halfway between G_0 and G_1
    torch.testing.assert_close(reference["G_ema"][w], (g0[w] + reference["G"][w]) / 2)
    assert float(reference["opt_G"]["step"]) == 1 and float(reference["opt_D"]["step"]) == 1


@needs_ds
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_matches_plain(stage, ds_world, setup, reference):
    torch.manual_seed(0)
    got = run_iteration(DeepSpeedBackend(zero_stage=stage, batch_gpu=2), setup)
    assert_parts_close(got, reference)


@needs_ds
def test_autocast_bf16_discriminator(ds_world, setup_uncond):
    """D under bf16 autocast (fp32 weights, DeepSpeed torch_autocast, ZeRO-2) against plain
    PyTorch under the same autocast: the D update agrees within the bf16 tolerance of the update."""
    _, D0, _ = setup_uncond
    parts = {}
    for name, be in (("plain", PlainBackend(precision={"D": "autocast_bf16"})),
                     ("ds", DeepSpeedBackend(zero_stage=2, batch_gpu=2, precision={"D": "autocast_bf16"}))):
        torch.manual_seed(0)
        parts[name] = run_iteration(be, setup_uncond)
    init = D0.state_dict()
    for k in (k for k, p in D0.named_parameters() if p.requires_grad):
        want, got = parts["plain"]["D"][k] - init[k], parts["ds"]["D"][k] - init[k]
        assert want.abs().max() > 0, k
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()), msg=lambda m: f"{k}: {m}")
    trunk = [k for k in init if k.startswith("feature_networks.") and init[k].is_floating_point()]
    assert all(parts["ds"]["D"][k].dtype == torch.float32 for k in trunk)  # frozen trunk stays fp32


def test_conditional_discriminator_under_autocast(setup):
    """FullyConnected casts its bias to the matmul's dtype, so the class projection runs under autocast."""
    _, D, batch = setup
    with PlainBackend(precision={"D": "autocast_bf16"}).autocast("D"):
        out = D(batch["real"][:2], batch["c_real"][:2])
    assert out.shape[0] == 2 and torch.isfinite(out.float()).all()


NAN_INPUT = [[float("nan"), float("inf"), -float("inf"), 2.0]]  # the weight gradient of a linear "G" is its input


def _steps(be, inputs: list[list[list[float]]], net: str = "G") -> tuple[list[dict], dict]:
    """One `net` step per input of a linear G (4 -> 1) and D (1 -> 1): the state after each
    step and the skip counters at the end. For D, the input's second column enters the loss only
    as 0 * x: a nan there makes the loss NaN while every gradient stays finite."""
    torch.manual_seed(0)
    G, D = torch.nn.Linear(4, 1, bias=False), torch.nn.Linear(1, 1)
    be.setup(G, D, ds_steps.OPTIM)
    states = [be.state_dicts()]
    for x in inputs:
        be.begin(net)
        x = torch.tensor(x)
        if net == "G":
            loss = be.forward("G", x).sum()
        else:
            loss = be.forward("D", x[:, :1]).sum() + 0 * x[:, 1:].sum()
        be.backward(net, loss)
        be.step(net)
        states.append(be.state_dicts())
    counters = read_counters(be)
    be.close()
    return states, counters


def test_plain_skips_nonfinite_steps():
    """A step whose gradient holds NaN or inf changes nothing (weights, Adam moments, step count)
    and is counted; two in a row count 2 in a row; the next finite step is Adam's first step
    (lr * g / (|g| + eps), SPEC 5.1's sanitizing would have moved the weights instead)."""
    good = [[1.0, -2.0, 3.0, 0.5]]
    states, counters = _steps(PlainBackend(), [NAN_INPUT, NAN_INPUT, good])
    for s in states[1:3]:
        for part in ("G", "opt_G"):
            assert all(torch.equal(s[part][k], states[0][part][k]) for k in states[0][part]), part
    assert float(states[2]["opt_G"]["step"]) == 0
    lr, eps = ds_steps.OPTIM.adam("G")["lr"], ds_steps.OPTIM.eps
    g = torch.tensor(good)
    torch.testing.assert_close(states[3]["G"]["weight"] - states[0]["G"]["weight"], -lr * g / (g.abs() + eps))
    assert float(states[3]["opt_G"]["step"]) == 1
    assert counters == {"skipped_G": 2, "skipped_D": 0, "bad_run_G": 0, "bad_run_D": 0}
    _, counters = _steps(PlainBackend(), [good, NAN_INPUT, NAN_INPUT])
    assert counters["bad_run_G"] == 2 and counters["skipped_G"] == 2
    g = [torch.tensor([float("nan"), float("inf"), -float("inf"), 3.0])]
    sanitize_(g)
    assert g[0].tolist() == [0.0, 1e5, -1e5, 3.0]


def test_plain_skips_a_nonfinite_loss_with_finite_gradients():
    states, counters = _steps(PlainBackend(), [[[0.5, float("nan")]], [[0.5, 1.0]]], net="D")
    assert all(torch.equal(states[1]["D"][k], states[0]["D"][k]) for k in states[0]["D"])
    assert not torch.equal(states[2]["D"]["weight"], states[0]["D"]["weight"])
    assert counters["skipped_D"] == 1 and counters["bad_run_D"] == 0 and counters["skipped_G"] == 0


@needs_ds
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_skips_nonfinite_steps(stage, ds_world):
    """The same skips through DeepSpeed's engines (ZeRO's wrapped optimizers call fused Adam)."""
    inputs = [NAN_INPUT, [[1.0, -2.0, 3.0, 0.5]], NAN_INPUT]
    got, got_counters = _steps(DeepSpeedBackend(zero_stage=stage), inputs)
    want, want_counters = _steps(PlainBackend(), inputs)
    assert got_counters == want_counters == {"skipped_G": 2, "skipped_D": 0, "bad_run_G": 1, "bad_run_D": 0}
    for g, w in zip(got, want):
        for part in ("G", "opt_G"):
            for k in w[part]:
                torch.testing.assert_close(g[part][k], w[part][k], msg=f"{part}.{k}")


def test_launch_env(monkeypatch):
    for k in (*LAUNCH_VARS, "DS_ACCELERATOR"):  # recorded, so that what launch_env sets is undone
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    env = launch_env(port=12345)
    assert env == {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "12345"}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_env(port=1)["RANK"] == "1"  # a launcher's variables are left alone


# -- the real launcher -------------------------------------------------------------------------
def _launch(n: int, out: Path, backends: str) -> dict[tuple[str, int], dict]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["DS_ACCELERATOR"] = "cpu"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(n), "--master_port", str(free_port()),
           str(REPO / "tests/engine/ds_steps.py"), "--out", str(out), "--backends", backends]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it started
        log, _ = proc.communicate()
        pytest.fail(f"{n}-rank launch timed out after {LAUNCH_TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, f"{n}-rank launch failed:\n{log[-6000:]}"
    results = {}
    for name in backends.split(","):
        for r in range(n):
            results[(name, r)] = json.loads((out / f"{name}_rank{r}.json").read_text())
    return results


@pytest.fixture(scope="module")
def launched(ds_world, tmp_path_factory):
    """1 rank (ZeRO-2, ZeRO-3), then 2 ranks (plain, ZeRO-2, ZeRO-3). The 1-rank launch goes first
    so that a cold machine JIT-builds the comm op in one process, not two at once."""
    one = _launch(1, tmp_path_factory.mktemp("ranks1"), "zero2,zero3")
    two = _launch(2, tmp_path_factory.mktemp("ranks2"), "plain,zero2,zero3")
    return one, two


def _assert_stats_close(got: dict, want: dict, what: str) -> None:
    """Per tensor [numel, sum, abs sum, first 8 values]: sums within 1e-4 of the abs sum, values
    within 1e-4 relative plus 5e-3 of the tensor's mean magnitude. Seen: ZeRO-2 bitwise equal to
    plain and 1 rank bitwise equal to 2; ZeRO-3 sums some gradients in another order, which D's
    random trunk amplifies to ~1e-3 of the mean magnitude after two steps. A lost micro-batch or a
    sum instead of a mean over ranks moves Adam's moments by O(1)."""
    assert got.keys() == want.keys()
    for k, w in want.items():
        g, n, scale = got[k], w[0], w[2]
        assert abs(g[1] - w[1]) <= 1e-4 * scale and abs(g[2] - w[2]) <= 1e-4 * scale, f"{what}: {k} {g[:3]} vs {w[:3]}"
        for a, b in zip(g[3:], w[3:]):
            assert abs(a - b) <= 1e-4 * abs(b) + 5e-3 * scale / n, f"{what}: {k} {g[3:]} vs {w[3:]}"


@needs_ds
@pytest.mark.parametrize("ranks", [1, 2])
def test_launcher_ranks_agree_and_resume(ranks, launched):
    """Every rank holds identical parameters, EMA and Adam moments; training changed them; reloading
    the state after iteration 1 and redoing iteration 2 reproduces it exactly; G_ema samples."""
    results = launched[ranks - 1]
    for name in {name for name, _ in results}:
        per_rank = [results[(name, r)] for r in range(ranks)]
        assert len({d["sha"] for d in per_rank}) == 1, f"{name}: ranks differ"
        for d in per_rank:
            assert d["world"] == ranks and d["sha"] != d["initial_sha"], name
            c = d["changed"]  # fractions of tensors: trained ones moved, D's frozen trunk did not
            assert c["G"] > 0.9 and c["D"] > 0.9 and c["G_ema"] > 0.9 and c["D_frozen"] == 0, (name, c)
            assert d["load_err"] == 0.0 and d["resume_err"] == 0.0, (name, d["load_err"], d["resume_err"])
            assert d["ema_sample_finite"], name


@needs_ds
def test_launcher_one_rank_equals_two_ranks(launched):
    """Two ranks average the same gradient one rank accumulates (the script scales its loss by
    1 / micro-batches per rank), so both runs agree; so do plain, ZeRO-2 and ZeRO-3 at 2 ranks."""
    one, two = launched
    for name in ("zero2", "zero3"):
        _assert_stats_close(two[(name, 0)]["stats"], one[(name, 0)]["stats"], f"{name} 2 ranks vs 1 rank")
    for name in ("zero2", "zero3"):
        _assert_stats_close(two[(name, 0)]["stats"], two[("plain", 0)]["stats"], f"{name} vs plain, 2 ranks")


@needs_ds
def test_new_process_group_after_destroy(ds_world, setup):
    """A process that destroys its group and creates a new one (several stages or test modules in
    one process) trains again: DeepSpeed's cached clone of the old world group is dropped."""
    torch.manual_seed(0)
    run_iteration(DeepSpeedBackend(zero_stage=2, batch_gpu=2), setup)
    tdist.destroy_process_group()
    for k in LAUNCH_VARS:
        os.environ.pop(k, None)
    launch_env(port=free_port())
    torch.manual_seed(0)
    want = run_iteration(PlainBackend(), setup)  # not the module's reference: other tests run `setup`'s D
    torch.manual_seed(0)
    assert_parts_close(run_iteration(DeepSpeedBackend(zero_stage=2, batch_gpu=2), setup), want)
