"""engine/errors.py and every inference CLI: expected errors are one `error:` line and exit status 2,
bugs keep their traceback, Ctrl-C is `interrupted` / 130, pickles given as --network name the importer,
and garbage given to the importer is one line (never MemoryError)."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import errors, export, generate, import_official, inception, metrics, project
from tests.engine import test_generate

ROOT = Path(__file__).resolve().parents[2]
_one_thread = test_generate._one_thread  # the autouse one-thread fixture

CLIS = {"generate": generate.main, "metrics": metrics.main, "project": project.main, "export": export.main,
        "import_official": import_official.main}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return test_generate.make_checkpoint(tmp_path_factory.mktemp("ck") / "ck.safetensors", 3)


@pytest.fixture(autouse=True)
def _no_traceback_env(monkeypatch):
    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)


def _fails(capsys, main, *argv) -> str:
    """main(argv) must exit 2 with exactly one stderr line `error: ...` and no traceback; returns it."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == errors.EXIT_ERROR, err
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err


def _argv(name: str, network: Path, tmp_path: Path) -> list:
    """Arguments of CLI `name` with `network` as its input file (other inputs valid or unread)."""
    return {"generate": ["--network", network, "--outdir", tmp_path / "out", "--device", "cpu"],
            "metrics": ["--network", network, "--device", "cpu", "--metrics", "rfid1k_128"],
            "project": ["--network", network, "--target", tmp_path / "t.png", "--device", "cpu"],
            "export": ["--network", network, "--out", tmp_path / "e.safetensors"],
            "import_official": ["--pkl", network, "--out", tmp_path / "i.safetensors"]}[name]


# ----------------------------------------------------------------------------- expected errors

@pytest.mark.parametrize("name", CLIS)
def test_missing_input_file_is_one_line(name, tmp_path, capsys):
    err = _fails(capsys, CLIS[name], *_argv(name, tmp_path / "missing.safetensors", tmp_path))
    assert f"{tmp_path / 'missing.safetensors'} does not exist" in err


@pytest.mark.parametrize("name, argv, needle", [
    ("generate", ["--network", "x", "--batch", "two"], "argument --batch: invalid int value: 'two'"),
    ("generate", ["--seeds", "1"], "required: --network"),
    ("metrics", ["--network", "x", "--metrics", "fid3k"], "unknown metric(s) ['fid3k']"),
    ("project", ["--network", "x", "--target", "y", "--steps", "1.5"], "argument --steps"),
    ("export", ["--network", "x"], "required: --out"),
    ("import_official", ["--pkl", "x", "--out", "y", "--dtype", "float16"], "argument --dtype: invalid choice"),
])
def test_bad_arguments_are_one_line(name, argv, needle, capsys):
    err = _fails(capsys, CLIS[name], *argv)
    assert needle in err and "--help" in err


def test_bad_device_and_directory_and_damaged_file(ckpt, tmp_path, capsys):
    assert "is not a device name" in _fails(capsys, generate.main, "--network", ckpt, "--device", "gpu0")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.safetensors").write_bytes(b"")
    err = _fails(capsys, generate.main, "--network", tmp_path / "run")
    assert "is a directory, not a file (it holds: best.safetensors)" in err
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ckpt.read_bytes()[:-1000])
    assert f"{cut} is a damaged safetensors file" in _fails(capsys, export.main, "--network", cut, "--out", tmp_path / "o")


def test_multi_line_messages_become_one_line(monkeypatch, capsys):
    def boom(args):
        raise ValueError("first line\n  second line\n\n")
    monkeypatch.setattr(generate, "run", boom)
    assert _fails(capsys, generate.main, "--network", "x") == "error: first line second line\n"
    assert errors.one_line(FileNotFoundError(2, "No such file or directory", "a.png")) == \
        "a.png: No such file or directory"
    assert errors.one_line(ValueError()) == "ValueError"


def test_missing_pretrained_weights_are_one_line(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(inception.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    err = _fails(capsys, metrics.main, "--network", ckpt, "--metrics", "fid10k_full", "--device", "cpu",
                 "--max-images", "2", "--cache-dir", tmp_path / "cache", "--workers", "0")
    assert "--inception-weights" in err and inception.INCEPTION_ENV in err
    with pytest.raises(errors.MissingWeightsError, match="gone") as info, errors.needs_weights():
        raise RuntimeError("gone")
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(NotImplementedError), errors.needs_weights():  # subclasses stay unexpected
        raise NotImplementedError("a bug")


# ----------------------------------------------------------------------------- unexpected errors, Ctrl-C

@pytest.mark.parametrize("name, module, attr", [
    ("generate", generate, "run"), ("metrics", metrics.data, "open_dataset"), ("project", project, "run"),
    ("export", export, "export_generator"), ("import_official", import_official, "import_official")])
def test_unexpected_errors_propagate(name, module, attr, ckpt, tmp_path, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(module, attr, bug)  # metrics: opening the dataset, right after loading G
    with pytest.raises(ZeroDivisionError):
        CLIS[name]([str(a) for a in _argv(name, ckpt, tmp_path)])
    assert "error:" not in capsys.readouterr().err


def test_ctrl_c_is_one_word_and_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(project, "run", interrupted)
    with pytest.raises(SystemExit) as info:
        project.main(["--network", "x", "--target", "y"])
    assert info.value.code == errors.EXIT_INTERRUPTED and capsys.readouterr().err == "interrupted\n"


def test_traceback_env_shows_expected_tracebacks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(errors.TRACEBACK_ENV, "1")
    with pytest.raises(SystemExit) as info:
        export.main(["--network", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" in err and "FileNotFoundError" in err
    assert err.splitlines()[-1].startswith("error: generator file")


# ----------------------------------------------------------------------------- pickles and garbage

@pytest.fixture(scope="module")
def pickles(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pkl")
    (d / "net.pkl").write_bytes(pickle.dumps({"G_ema": [1, 2]}, protocol=4))
    torch.save({"G_ema": torch.zeros(2)}, d / "net.pt")  # zip archive holding data.pkl
    return {"plain": d / "net.pkl", "torch_save": d / "net.pt"}


@pytest.mark.parametrize("name", ["generate", "metrics", "project", "export"])
@pytest.mark.parametrize("kind", ["plain", "torch_save"])
def test_a_pickle_as_network_names_the_importer(name, kind, pickles, tmp_path, capsys):
    path = pickles[kind]
    err = _fails(capsys, CLIS[name], *_argv(name, path, tmp_path))
    assert f"{path} is a pickle (e.g. an original StyleGAN-XL network), not a checkpoint of this engine" in err
    assert f"convert it first: python -m engine.import_official --pkl {path} --out {path.with_suffix('.safetensors')}" \
        in err


def _garbage(seed: int) -> bytes:
    r = random.Random(seed)
    head = (b"", b"\x80\x04", b"PK\x03\x04", b"\x80\x02", b"\x80\x05")[seed % 5]
    return head + r.randbytes(r.choice((0, 1, 9, 200, 5000)))


def test_random_bytes_to_the_importer_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pkl"
    crafted = [b"\x80\x04\x8e" + (2 ** 62).to_bytes(8, "little"),  # BINBYTES8 claiming 4 EiB
               b"\x80\x04\x8d" + (2 ** 40).to_bytes(8, "little") + b"x",  # BINUNICODE8 claiming 1 TiB
               b"cbuiltins\nbytearray\n(I1000000000000\ntR."]  # bytearray(10**12)
    said = []
    for blob in crafted + [_garbage(seed) for seed in range(40)]:
        bad.write_bytes(blob)
        said.append(_fails(capsys, import_official.main, "--pkl", bad, "--out", tmp_path / "o.safetensors"))
        assert said[-1].startswith(f"error: {bad}") and "MemoryError" not in said[-1], (blob[:16], said[-1])
    assert "impossibly large" in said[0] and "refusing to load builtins.bytearray" in said[2]
    bad.write_bytes(b"")
    assert "the file is empty" in _fails(capsys, import_official.main, "--pkl", bad, "--out", tmp_path / "o")
    assert not (tmp_path / "o.safetensors").exists()


def test_a_checkpoint_given_to_the_importer_says_no_conversion_is_needed(ckpt, tmp_path, capsys):
    err = _fails(capsys, import_official.main, "--pkl", ckpt, "--out", tmp_path / "o.safetensors")
    assert "safetensors file; a checkpoint of this engine needs no conversion" in err


# ----------------------------------------------------------------------------- real processes

def _python(*argv, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env})


def test_module_entry_points_in_a_process(pickles, tmp_path):
    run = _python("-m", "engine.generate", "--network", pickles["plain"], "--outdir", tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "engine.import_official --pkl" in run.stderr, \
        run.stderr
    bug = ("import sys, engine.export as m; m.export_generator = lambda *a: 1 / 0; "
           "sys.exit(m.main(['--network', 'a', '--out', 'b']))")
    run = _python("-c", bug)
    assert run.returncode == 1 and "Traceback" in run.stderr and "ZeroDivisionError" in run.stderr, run.stderr
