"""Import of official network pickles: same images after conversion, loadable by the engine, and a
loader that never runs code from the pickle (globals refused, module_src never executed)."""

from __future__ import annotations

import collections
import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import checkpoint
from engine.import_official import OfficialImportError, convert, import_official, load_official, main
from engine.export import load_generator
from model.generator import build_generator, grow
from tests.engine import official_pickle as op

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL_PACKAGES = ("torch_utils", "dnnlib", "pg_modules", "training", "legacy", "feature_networks")


def _generator(res: int = 16, c_dim: int = 5, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    g = build_generator("tiny", 16, c_dim, **overrides)
    while g.cfg.resolution < res:
        g = grow(g)
    g.mapping.w_avg.normal_()  # per-class averages, used by truncation
    for layer in g.synthesis.layers.values():  # StyleGAN3 pickles carry trained magnitude EMAs
        layer.magnitude_ema.fill_(1.7)
    return g.eval()


def _images(g, z, c, psi=1.0):
    with torch.no_grad():
        return g(z, c, psi=psi)


def _assert_same_images(src, dst, c_dim, psis=(0.6,)):
    """Same images for the same z and class, bit for bit in float32 (psi < 1 also checks w_avg)."""
    z = torch.randn(2, src.cfg.z_dim, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([c_dim - 1, 2]) if c_dim else None
    for psi in psis:
        torch.testing.assert_close(_images(dst, z, c, psi), _images(src, z, c, psi), atol=0, rtol=0)


def _assert_same_state(src, state):
    ours = src.state_dict()
    assert state.keys() == ours.keys() and all(torch.equal(state[k], v) for k, v in ours.items())


def _assert_no_original_modules():
    assert not [m for m in sys.modules if m.split(".")[0] in ORIGINAL_PACKAGES]


def test_xl_stem_converts_to_the_same_images(tmp_path):
    g, g_ema = _generator(seed=0), _generator(seed=1)
    marker = tmp_path / "module_src_ran"
    pkl = tmp_path / "network-snapshot.pkl"
    op.dump(op.snapshot(g, g_ema=g_ema, module_src=f"open({str(marker)!r}, 'w').close()\n"), pkl)
    out = import_official(pkl, tmp_path / "converted.safetensors", head_layers=3)  # a stem pickle cannot say
    assert not marker.exists()  # the embedded module source never ran
    _assert_no_original_modules()
    loaded = load_generator(out, "cpu")[0]  # exactly how a stage opens a checkpoint
    assert loaded.cfg == g_ema.cfg
    assert grow(loaded).cfg == grow(g_ema).cfg  # and it grows like the engine's own stem
    _assert_same_images(g_ema, loaded, 5, psis=(1.0, 0.6))
    parts, meta = checkpoint.load(out)
    assert all(torch.equal(parts["G"][k], v) for k, v in g.state_dict().items())  # G from the pickle's G
    assert meta["arch"]["G"]["embed_rows"] == 1000 and meta["imported_from"]["family"] == "stylegan-xl"
    assert meta["imported_from"]["progress"]["cur_nimg"] == [4000]
    assert meta["imported_from"]["training_set_kwargs"]["path"] == "data.zip"


@pytest.mark.parametrize("zip_form", [False, True], ids=["pickle", "torch.save"])
def test_xl_superres_converts_to_the_same_images(tmp_path, zip_form):
    g = _generator(res=32)
    pkl = tmp_path / "superres.pkl"
    op.dump(op.snapshot(g), pkl, zip_form=zip_form)
    parts, meta = convert(load_official(pkl))
    _assert_no_original_modules()
    assert meta["imported_from"]["class"] == "SuperresGenerator"
    assert meta["arch"]["G"] == {**meta["arch"]["G"], "resolution": 32, "stem_res": 16, "head_layers": 3}
    _assert_same_state(g, parts["G_ema"])
    if not zip_form:  # same tensors either way; run the (slow on CPU) 32² forward once
        path = checkpoint.save(tmp_path / "c.safetensors", parts, meta)
        _assert_same_images(g, load_generator(path, "cpu")[0], 5)


@pytest.mark.parametrize("flavor", ["xl", "sg3"])
def test_unconditional_converts_to_the_same_images(tmp_path, flavor):
    g = _generator(c_dim=0)
    pkl = tmp_path / "uncond.pkl"
    op.dump(op.snapshot(g, flavor=flavor), pkl)  # xl: the unused 1000x320 table is in the pickle
    parts, meta = convert(load_official(pkl))
    _assert_same_state(g, parts["G_ema"])  # the unused table is dropped
    assert meta["imported_from"]["family"] == {"xl": "stylegan-xl", "sg3": "stylegan3-t"}[flavor]
    path = checkpoint.save(tmp_path / "c.safetensors", parts, meta)
    _assert_same_images(g, load_generator(path, "cpu")[0], 0)


def test_cli_as_module_and_as_script(tmp_path, capsys):
    g = _generator()
    pkl = tmp_path / "n.pkl"
    op.dump(op.snapshot(g), pkl)
    assert main(["--pkl", str(pkl), "--out", str(tmp_path / "a.safetensors"), "--dtype", "bfloat16"]) == 0
    assert "stylegan-xl Generator, 16²" in capsys.readouterr().out
    assert checkpoint.load(tmp_path / "a.safetensors")[1]["arch"]["G"]["dtype"] == "bfloat16"
    with pytest.raises(SystemExit) as info:  # an expected error: one `error:` line, exit status 2
        main(["--pkl", str(tmp_path / "missing.pkl"), "--out", str(tmp_path / "b.safetensors")])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("error: network pickle")
    run = subprocess.run([sys.executable, str(ROOT / "engine" / "import_official.py"), "--pkl", str(pkl), "--out",
                          str(tmp_path / "s.safetensors")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "s.safetensors").exists()


def _payload(marker: Path, kind: str) -> bytes:
    """Protocol-0 pickles that would create `marker` if their global were called."""
    calls = {
        "os.system": ("os", "system", f"touch {marker}"),
        "posix.system": ("posix", "system", f"touch {marker}"),
        "builtins.exec": ("builtins", "exec", f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": ("builtins", "eval", f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": ("subprocess", "call", f"touch {marker}"),
        "mypkg.tools.run": ("mypkg.tools", "run", str(marker)),  # an unknown callable
    }
    module, name, arg = calls[kind]
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


@pytest.mark.parametrize("kind", ["os.system", "posix.system", "builtins.exec", "builtins.eval", "subprocess.call",
                                  "mypkg.tools.run"])
def test_code_globals_are_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(_payload(marker, kind))
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load {kind.replace('.', '[.]')}"):
        load_official(pkl)
    assert not marker.exists()
    _assert_no_original_modules()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_payload_inside_a_real_snapshot_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = op.snapshot(_generator())
    data["G_ema"]._init_kwargs["mapping_kwargs"] = _Evil(marker)
    op.dump(data, tmp_path / "n.pkl")
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (os|posix|nt)\.system"):
        load_official(tmp_path / "n.pkl")
    assert not marker.exists()


def test_model_code_globals_stay_inert(tmp_path):
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(b"(dp0\nVG_ema\np1\nctraining.networks_stylegan3_resetting\nmodulated_conv2d\n(V1\ntR"
                    b"sVD\nctimm.models.vision_transformer\nVisionTransformer\n)Rs.")
    data = load_official(pkl)
    assert "modulated_conv2d" in repr(data["G_ema"]) and data["G_ema"].args == ("1",)
    _assert_no_original_modules()
    with pytest.raises(OfficialImportError, match="not a StyleGAN3/StyleGAN-XL Generator"):
        convert(data)


class _CudaStorage:
    """Pickles like the storage of a CUDA tensor (the original dills its snapshot while on the GPU)."""

    def __init__(self, t):
        self.t = t

    def __reduce__(self):
        buf = io.BytesIO()
        typed = torch.storage.TypedStorage(wrap_storage=self.t.untyped_storage(), dtype=self.t.dtype, _internal=True)
        torch.save(typed, buf, _use_new_zipfile_serialization=False)  # what TypedStorage.__reduce__ writes
        raw = buf.getvalue()
        assert raw.count(b"X\x03\x00\x00\x00cpu") == 1
        return (torch.storage._load_from_bytes, (raw.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"),))


class _CudaTensor(_CudaStorage):
    def __reduce__(self):
        args = (_CudaStorage(self.t), 0, tuple(self.t.shape), self.t.stride(), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


def test_cuda_saved_storages_load_on_cpu(tmp_path):
    t = torch.randn(2, 3)
    (tmp_path / "gpu.pkl").write_bytes(pickle.dumps({"w": _CudaTensor(t), "dev": torch.device("cuda", 0)}))
    data = load_official(tmp_path / "gpu.pkl")
    assert data["w"].device.type == "cpu" and torch.equal(data["w"], t)


def test_missing_g_ema_and_foreign_files(tmp_path):
    data = op.snapshot(_generator())
    del data["G_ema"]
    op.dump(data, tmp_path / "n.pkl")
    with pytest.raises(OfficialImportError, match="no 'G_ema'"):
        convert(load_official(tmp_path / "n.pkl"))
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(OfficialImportError, match="not the dict of a network snapshot"):
        load_official(tmp_path / "list.pkl")
    with pytest.raises(FileNotFoundError):
        load_official(tmp_path / "nope.pkl")


def test_mismatched_or_missing_tensors_are_named(tmp_path):
    g = _generator()
    name = g.specs[1].name
    data = op.snapshot(g)
    layer = getattr(data["G_ema"].synthesis, name)
    layer.weight = torch.nn.Parameter(torch.zeros(32, 32, 1, 1))
    op.dump(data, tmp_path / "shape.pkl")
    with pytest.raises(OfficialImportError, match=rf"synthesis\.{name}\.weight: pickle \[32, 32, 1, 1\] vs engine "
                                                  r"\[32, 32, 3, 3\]"):
        convert(load_official(tmp_path / "shape.pkl"))
    data = op.snapshot(g)
    del data["G_ema"].mapping.fc1._parameters["bias"]
    op.dump(data, tmp_path / "missing.pkl")
    with pytest.raises(OfficialImportError, match=r"missing from the pickle \['mapping\.fc1\.bias'\]"):
        convert(load_official(tmp_path / "missing.pkl"))


def test_unrepresentable_architectures_are_clear_errors(tmp_path):
    g = _generator()
    data = op.snapshot(g)
    for name in g.synthesis.layers:
        getattr(data["G_ema"].synthesis, name).use_radial_filters = True  # StyleGAN3-R
    op.dump(data, tmp_path / "r.pkl")
    with pytest.raises(OfficialImportError, match="use_radial_filters"):
        convert(load_official(tmp_path / "r.pkl"))
    data = op.snapshot(g, flavor="sg3")
    data["G_ema"].mapping.embed = op.Persistent("FullyConnectedLayer", "", {})  # conditional StyleGAN3
    op.dump(data, tmp_path / "c.pkl")
    with pytest.raises(OfficialImportError, match="conditional StyleGAN3"):
        convert(load_official(tmp_path / "c.pkl"))
