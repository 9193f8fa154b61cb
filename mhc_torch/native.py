"""Native CPU kernels: C sources shipped inside the package, compiled on first use by the
system's C compiler into a per-user cache and loaded with ctypes.

No build step at install time and no dependence on PyTorch's C++ ABI: a kernel reads and
writes the memory of contiguous CPU tensors through their data pointers. Kernels that split
work across threads do so with OpenMP, given PyTorch's thread count per call; the library
links ``libgomp.so.1``, which on Linux wheels of PyTorch is the runtime PyTorch has already
loaded, so the kernels run on PyTorch's own thread pool. Where PyTorch has not loaded that
runtime (another OpenMP, another platform) a second pool would contend with PyTorch's for
the cores, and where the compiler has no OpenMP it cannot be built: there the same source
is built serial. Each source is
compiled twice (``float`` and ``double``) into one shared library whose file name holds a
hash of the source, the flags, the compiler's version and the CPU (the code is tuned with
``-march=native``), so a cache shared between machines never serves a wrong binary.

Where no compiler works, the library is ``None`` with a reason (warned once) and callers use
their PyTorch operations. Settings (environment variables):

- ``MHC_NATIVE_KERNELS=0``: never compile or load (PyTorch operations only);
- ``MHC_CACHE_DIR``: where the libraries go (default ``$XDG_CACHE_HOME/mhc`` or
  ``~/.cache/mhc``);
- ``CC``: the compiler (default ``cc``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-std=c11")
OPENMP, SERIAL = ("-fopenmp",), ("-fopenmp-simd",)  # serial: the pragmas vectorise only
RUNTIME = "libgomp.so.1"  # the OpenMP runtime a -fopenmp build links (GCC's)
ELEMENT_TYPES = {"f32": "float", "f64": "double"}
SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}  # the dtypes the kernels take
_LOCK = threading.Lock()


class NativeUnavailable(RuntimeError):
    """Why a native library could not be built or loaded."""


def enabled() -> bool:
    """False when ``MHC_NATIVE_KERNELS`` is set to 0 (or ``false``/``no``/``off``)."""
    value = os.environ.get("MHC_NATIVE_KERNELS", "1").strip().lower()
    return value not in {"0", "false", "no", "off"}


def cache_dir() -> Path:
    """``MHC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mhc``, else ``~/.cache/mhc``."""
    if explicit := os.environ.get("MHC_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mhc"


def _cpu_signature() -> str:
    """The machine and its CPU's feature flags (what -march=native compiles for)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags}"


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NativeUnavailable(f"{command[0]!r} could not run: {error}") from error
    if done.returncode != 0:
        raise NativeUnavailable(f"`{' '.join(command)}` failed:\n{done.stderr.strip()}")
    return done.stdout


def shares_pytorch_runtime(maps: Path = Path("/proc/self/maps")) -> bool:
    """Whether this process has ``libgomp.so.1`` loaded (PyTorch's Linux wheels bring it), so
    that a library linking it joins that runtime's pool instead of starting one."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return False
    return any(Path(line.split()[-1]).name.startswith(RUNTIME)
               for line in lines if line.split())


def recipes() -> tuple[tuple[str, ...], ...]:
    """The threading flags to try in order: OpenMP first where it would share PyTorch's
    runtime, then serial."""
    return (OPENMP, SERIAL) if shares_pytorch_runtime() else (SERIAL,)


def _commands(compiler: list[str], source: Path, scratch: Path, library: Path,
              parallel: tuple[str, ...]) -> list[list[str]]:
    """One compile per element type, then the link; ``parallel`` is OPENMP or SERIAL."""
    objects = [scratch / f"{suffix}.o" for suffix in ELEMENT_TYPES]
    compiles = [[*compiler, *FLAGS, *parallel, f"-DREAL={element}", f"-DNAME(f)=f##_{suffix}",
                 "-c", str(source), "-o", str(obj)]
                for (suffix, element), obj in zip(ELEMENT_TYPES.items(), objects, strict=True)]
    return [*compiles, [*compiler, "-shared", *parallel, *map(str, objects), "-o",
                        str(library), "-lm"]]


def build(source: Path, directory: Path, compiler: str) -> Path:
    """The shared library of ``source`` in ``directory``, compiled unless already there;
    ``compiler`` is a command line (``CC``, e.g. ``"ccache gcc"``). Built with OpenMP where
    that shares PyTorch's runtime and the compiler has it, else serial (:func:`recipes`);
    the first recipe's error is raised if none works."""
    command = shlex.split(compiler)
    if not command or shutil.which(command[0]) is None:
        raise NativeUnavailable(f"no C compiler: {compiler!r} is not on PATH (set CC)")
    version = (_run([*command, "--version"]).splitlines() or ["unknown version"])[0]
    errors = []
    for parallel in recipes():
        try:
            return _build(command, version, source, directory, parallel)
        except NativeUnavailable as error:
            errors.append(error)
    raise errors[0]


def _build(command: list[str], version: str, source: Path, directory: Path,
           parallel: tuple[str, ...]) -> Path:
    recipe = repr(_commands(command, source, Path("."), Path("lib.so"), parallel))
    key = hashlib.sha256(b"\0".join(
        [source.read_bytes(), recipe.encode(), version.encode(), _cpu_signature().encode()]))
    target = directory / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    # Private to the user: a library loaded from a folder others can write to would run
    # their code. Built in a scratch folder and renamed into place, so processes compiling
    # at the same time (DDP ranks) each finish with a whole library.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        library = Path(scratch) / target.name
        for step in _commands(command, source, Path(scratch), library, parallel):
            _run(step)
        os.replace(library, target)
    return target


@functools.cache
def _load(source: Path) -> ctypes.CDLL | NativeUnavailable:
    try:
        return ctypes.CDLL(str(build(source, cache_dir(), os.environ.get("CC", "cc"))))
    except Exception as error:  # any failure here means: use the PyTorch operations
        reason = error if isinstance(error, NativeUnavailable) else NativeUnavailable(
            f"could not build or load {source.name}: {type(error).__name__}: {error}")
        warnings.warn(f"mhc_torch: native CPU kernels unavailable ({reason}); using PyTorch "
                      "operations, which are slower on the CPU. Set MHC_NATIVE_KERNELS=0 to "
                      "silence this.", RuntimeWarning, stacklevel=2)
        return reason


def load(source: Path) -> ctypes.CDLL | None:
    """The loaded library of ``source`` (built once per process), or None when it cannot be
    built or loaded; ignores :func:`enabled`."""
    with _LOCK:
        loaded = _load(source)
    return None if isinstance(loaded, NativeUnavailable) else loaded


def library(source: Path) -> ctypes.CDLL | None:
    """The loaded library of ``source``, or None when disabled or unavailable."""
    return load(source) if enabled() else None


Signature = tuple[str, tuple[type, ...], type | None]  # C name without suffix, args, result


@functools.cache
def bind(source: Path, suffix: str, signatures: tuple[Signature, ...]
         ) -> Mapping[str, Callable[..., Any]] | None:
    """{name: function} of ``source``'s library for one element type (``f32``, ``f64``),
    typed by ``signatures``; bound once per process, None when the library is unavailable
    (whatever :func:`enabled` says: a backward needs its forward's kernels)."""
    lib = load(source)
    if lib is None:
        return None
    functions = {}
    for name, argtypes, restype in signatures:
        function = getattr(lib, f"{name}_{suffix}")
        function.argtypes, function.restype = list(argtypes), restype
        functions[name] = function
    return functions


def kernels_for(source: Path, signatures: tuple[Signature, ...], dtype: torch.dtype,
                device: torch.device) -> Mapping[str, Callable[..., Any]] | None:
    """:func:`bind` for tensors of ``dtype`` on ``device`` where native kernels may run: on
    the CPU, for a dtype of :data:`SUFFIXES`, when :func:`enabled`, outside TorchScript
    tracing (which would not record the call); else None. Callers add their own shape and
    mode conditions."""
    if (device.type != "cpu" or dtype not in SUFFIXES or not enabled()
            or torch.jit.is_tracing()):
        return None
    return bind(source, SUFFIXES[dtype], signatures)
