"""One-line errors for the command lines: expected failures say what is wrong, bugs keep their traceback.

How a CLI uses it (engine/generate.py, metrics.py, project.py, export.py, import_official.py; the
same two lines serve engine/train.py):

    from engine import errors

    @errors.cli
    def main(argv=None) -> int:
        args = errors.ArgumentParser(prog="python -m engine.x", ...).parse_args(argv)
        ...
        return 0

    if __name__ == "__main__":
        sys.exit(main())

What `@errors.cli` does around main(argv):
- an EXPECTED error (an instance of one of EXPECTED_ERRORS) prints exactly one line on stderr,
  `error: <message>` (a multi-line message is joined into one line), and raises SystemExit(2);
- Ctrl-C (KeyboardInterrupt) prints `interrupted` and raises SystemExit(130);
- any other exception propagates unchanged: Python prints its traceback and exits 1;
- SystemExit (sys.exit, --help) passes through; main's return value is returned.
SystemExit rather than a returned code, so in-process callers (tests) see the same thing for a bad
argument as argparse gives, whatever main returns (engine.metrics returns a dict).
Set SGXL_TRACEBACK=1 to print the full traceback of expected errors and of Ctrl-C as well (then the
`error:` line; the exit status stays 2 or 130), when debugging where an expected error came from.

EXPECTED_ERRORS, precisely:
- UserError (this module; subclass it, or raise UsageError / MissingWeightsError);
- ValueError and its subclasses: bad values, damaged or foreign files, incompatible checkpoints
  (the codebase raises these: OfficialImportError, json.JSONDecodeError, UnicodeDecodeError too);
- FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError.
RuntimeError is NOT expected by itself (CUDA out of memory, NotImplementedError, RecursionError and
torch's own failures are RuntimeErrors and need their traceback). Missing pretrained weights raise
a plain RuntimeError deep down (engine/inception.py, model/feature_networks.py); wrap the call that
builds such a network in `with errors.needs_weights():`, which re-raises a RuntimeError of exactly
that class as MissingWeightsError (still a RuntimeError, same message, chained) and so makes it
expected. Bad command lines: `errors.ArgumentParser` raises UsageError instead of printing the
usage block, so they are one line too.

Files of the wrong kind (a pickle, a directory, a truncated file given where a checkpoint is
expected): `not_a_checkpoint(path, cause)` is the error to raise; `file_kind(path)` sniffs the first
bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import sys
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

EXIT_ERROR = 2  # an expected error: the message says what to change (argparse uses 2 too)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
TRACEBACK_ENV = "SGXL_TRACEBACK"  # "1": full tracebacks for expected errors too


class UserError(Exception):
    """An expected error that is neither a ValueError nor a missing/forbidden file."""


class UsageError(UserError):
    """A command line argparse cannot parse (raised by errors.ArgumentParser)."""


class MissingWeightsError(UserError, RuntimeError):
    """Pretrained weights were not found offline (the message lists the ways to provide them)."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
    PermissionError)

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors raise UsageError (one line under @cli), not a usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


@contextlib.contextmanager
def needs_weights() -> Iterator[None]:
    """Inside: a plain RuntimeError (missing pretrained weights) becomes MissingWeightsError, same text.

    Wrap only the call that builds a network with pretrained weights; RuntimeError subclasses
    (out of memory, NotImplementedError, ...) pass unchanged.
    """
    try:
        yield
    except RuntimeError as e:
        if type(e) is not RuntimeError:
            raise
        raise MissingWeightsError(str(e)) from e


def is_expected(e: BaseException) -> bool:
    """True for the errors @cli reports in one line (see EXPECTED_ERRORS)."""
    return isinstance(e, EXPECTED_ERRORS)


def one_line(e: BaseException) -> str:
    """The message of e on one line: lines joined by spaces; an OSError as '<file>: <reason>'."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror and len(e.args) <= 2:
        text = f"{e.filename}: {e.strerror}"  # open() and friends: "[Errno 2] No such file ..." otherwise
    else:
        text = str(e) if not isinstance(e, KeyError) or len(e.args) != 1 else str(e.args[0])
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(e).__name__


def _traceback_wanted() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0")


def cli(main: Callable[..., T]) -> Callable[..., T]:
    """Decorator for a CLI's main(argv=None): expected errors -> `error: ...` + SystemExit(2).

    See the module docstring for the whole contract (Ctrl-C, tracebacks, SGXL_TRACEBACK).
    """

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            if _traceback_wanted():
                traceback.print_exc()
            print("interrupted", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        except EXPECTED_ERRORS as e:
            if _traceback_wanted():
                traceback.print_exc()
            print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_ERROR) from None

    return wrapped


# ----------------------------------------------------------------------------- files of the wrong kind

def file_kind(path: str | Path) -> str:
    """What `path` is, from its first bytes.

    Returns one of: "missing", "directory", "empty", "safetensors" (a plausible header: 8-byte
    little-endian length that fits the file, then "{"), "pickle" (protocol 2-5 magic 0x80 0x02..05,
    or a zip holding data.pkl = torch.save), "zip", "unknown" (also: unreadable).
    """
    path = Path(path)
    if path.is_dir():
        return "directory"
    if not path.exists():
        return "missing"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
        if not head:
            return "empty"
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            return "pickle"
        if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
            return "safetensors"
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                torch_save = any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
            return "pickle" if torch_save else "zip"
    except (OSError, zipfile.BadZipFile, ValueError):
        return "unknown"
    return "unknown"


def _converted_name(path: Path) -> Path:
    out = path.with_suffix(".safetensors")
    return out if out != path else path.with_name(f"{path.stem}-engine.safetensors")


def not_a_checkpoint(path: str | Path, cause: BaseException | str | None = None, *,
                     what: str = "checkpoint") -> Exception:
    """The error to raise when `path` (given as a checkpoint of this engine) cannot be opened.

    Args:
        path: the file the user named.
        cause: what safetensors said, if it was tried (kept in the message).
        what: how the file is called in the "does not exist" / "is a directory" messages.

    Returns (to raise, `from cause`):
        FileNotFoundError "<what> X does not exist";
        IsADirectoryError "<what> X is a directory, not a file (it holds: a.safetensors, ...)";
        ValueError, by what the first bytes say:
          pickle: "X is a pickle (e.g. an original StyleGAN-XL network), not a checkpoint of this
            engine; convert it first: python -m engine.import_official --pkl X --out X.safetensors";
          safetensors: "X is a damaged safetensors file (<cause>): truncated or corrupted; use
            another checkpoint";
          empty: "X is empty (0 bytes): not a checkpoint of this engine";
          else: "X is not a checkpoint of this engine (<cause>); expected a .safetensors file written
            by training, engine.export or engine.import_official".
    """
    path = Path(path)
    kind = file_kind(path)
    why = f" ({one_line(cause) if isinstance(cause, BaseException) else cause})" if cause else ""
    if kind == "missing":
        return FileNotFoundError(f"{what} {path} does not exist")
    if kind == "directory":
        inside = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" (it holds: {', '.join(inside[:6])})" if inside else ""
        return IsADirectoryError(f"{what} {path} is a directory, not a file{hint}")
    if kind == "pickle":
        cmd = f"python -m engine.import_official --pkl {shlex.quote(str(path))} " \
              f"--out {shlex.quote(str(_converted_name(path)))}"
        return ValueError(f"{path} is a pickle (e.g. an original StyleGAN-XL network), not a checkpoint of this "
                          f"engine; convert it first: {cmd}")
    if kind == "safetensors":
        return ValueError(f"{path} is a damaged safetensors file{why}: truncated or corrupted; use another checkpoint")
    if kind == "empty":
        return ValueError(f"{path} is empty (0 bytes): not a checkpoint of this engine")
    return ValueError(f"{path} is not a checkpoint of this engine{why}; expected a .safetensors file written by "
                      f"training, engine.export or engine.import_official")
