"""Read PyTorch checkpoints without ever running code from them.

``torch.load(weights_only=True)`` is tried first (fast, and enough for bare state dicts). Official
mmseg/mmengine checkpoints fail it: their ``meta`` and ``message_hub`` hold numpy scalars and arrays
and mmengine objects (``HistoryBuffer``, config dicts). Those files are read with
:class:`RestrictedUnpickler`, handed to ``torch.load(pickle_module=...)`` so that torch's own
storage handling stays in charge of the tensor bytes.

What the restricted unpickler does with a global named in the file (``module.name``):

* **allowed** — torch's tensor/storage rebuild functions, dtypes, ``torch.Size``/``device``, the
  standard containers (``collections.OrderedDict``, ``set``, ``bytes`` via ``_codecs.encode``, ...),
  ``datetime`` values and numpy values (``numpy.dtype``, ``numpy.ndarray``,
  ``numpy[._]core.multiarray._reconstruct`` / ``scalar``): the real object is returned;
* **refused** — globals whose only use in a checkpoint is to run code, open files, start processes
  or import modules (``os``/``posix``/``nt``, ``subprocess``, ``builtins.eval``/``exec``/``getattr``/
  ``__import__``/``open``, ``importlib``, ``runpy``, ``shutil``, ``sys``, ``pickle``, ...; see
  :func:`refusal_reason`): loading stops with a :class:`RefusedGlobalError` naming it;
* **anything else** — becomes an inert :class:`Placeholder` class. The name is never imported; a
  NEWOBJ/BUILD of it records the arguments and state, and a call of it (REDUCE) records the
  arguments and returns another placeholder, so no code of the unknown name can run.

Why placeholders instead of refusing every unknown call: legitimate ``meta`` contents pickle as
calls too (enum members, paths, numpy bit-generator states), and refusing them would reject
official checkpoints whose weights are fine. A placeholder call is exactly as inert as a refusal
(the callable does not exist in this process); refusal is kept for the names that have no business
in a checkpoint, so a crafted file gets a sentence saying what it tried. The opcodes that could touch
real objects (REDUCE, NEWOBJ, BUILD, APPEND(S), SETITEM(S), ADDITEMS) are checked too: a call is only
made on an allowed callable or a placeholder, and state is never written into a class or an allowed
global. TorchScript archives are refused (``torch.load`` would hand them to ``torch.jit.load``).

There is no escape hatch: nothing in this package unpickles arbitrary globals.
"""

from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import datetime
import os
import pickle
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._weights_only_unpickler as _torch_safe

from offseg_vis.errors import CheckpointError

try:  # numpy >= 2 spells its core package ``numpy._core``; numpy 1 ``numpy.core``
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric


class RefusedGlobalError(CheckpointError):
    """The checkpoint names a global that can run code; nothing from it was run."""

    def __init__(self, qualified: str, reason: str) -> None:
        super().__init__(f"it names `{qualified}` ({reason})")
        self.qualified = qualified
        self.reason = reason


# ------------------------------------------------------------------------------------ placeholders


class Placeholder:
    """An object of a class this process does not have (and never imports), kept as inert data.

    Subclasses are made per global by :func:`placeholder_class`; ``module`` and ``name`` say which.

    Attributes (of an instance):
        pickled_args / pickled_kwargs: what NEWOBJ or a call passed.
        pickled_state: what BUILD passed (``__setstate__`` state), None if none.
        pickled_items: SETITEM(S) pairs (dict-like classes such as mmengine's ConfigDict).
        pickled_list: APPEND(S)/ADDITEMS values (list- or set-like classes).
    """

    module = "?"
    name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        obj.__dict__.update(
            pickled_args=args, pickled_kwargs=kwargs, pickled_state=None, pickled_items={}, pickled_list=[]
        )
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # the real __init__ never runs
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["pickled_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.pickled_items[key] = value

    def append(self, value: Any) -> None:
        self.pickled_list.append(value)

    def extend(self, values: Any) -> None:
        self.pickled_list.extend(values)

    def add(self, value: Any) -> None:
        self.pickled_list.append(value)

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        """A pickle may call an object it built; the call is recorded, nothing runs."""
        return placeholder_class(self.module, f"{self.name}(...)")(*args, **kwargs)

    @classmethod
    def qualified_name(cls) -> str:
        return f"{cls.module}.{cls.name}"

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name()}>"


_PLACEHOLDERS: dict[tuple[str, str], type[Placeholder]] = {}


def placeholder_class(module: str, name: str) -> type[Placeholder]:
    """The (cached) inert stand-in class for the global ``module.name``."""
    key = (module, name)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = type(name, (Placeholder,), {"module": module, "name": name, "__module__": __name__})
    return _PLACEHOLDERS[key]


def placeholder_names(obj: Any) -> list[str]:
    """Sorted ``module.name`` of every placeholder inside ``obj`` (containers walked, cycles safe)."""
    found: set[str] = set()
    for item in _walk(obj, set()):
        if isinstance(item, Placeholder):
            found.add(item.qualified_name())
        elif isinstance(item, type) and issubclass(item, Placeholder):
            found.add(item.qualified_name())
    return sorted(found)


def _walk(obj: Any, seen: set[int]) -> Iterator[Any]:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    elif isinstance(obj, Placeholder):
        d = obj.__dict__
        children = [d.get("pickled_args"), d.get("pickled_kwargs"), d.get("pickled_state")]
        children += [d.get("pickled_items"), d.get("pickled_list")]
    else:
        return
    for child in children:
        yield from _walk(child, seen)


# ------------------------------------------------------------------------------- allowed / refused


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects) restricted to placeholders and allowed types."""
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls.__new__(cls, base, state)
    if cls in _ALLOWED_CLASSES and base in _ALLOWED_CLASSES:  # constructing these runs no file code
        return copyreg._reconstructor(cls, base, state)
    raise RefusedGlobalError("copyreg._reconstructor", f"asked to build {cls!r} from {base!r}")


def _allowed_globals() -> dict[str, Any]:
    allowed: dict[str, Any] = dict(_torch_safe._get_allowed_globals())  # what torch itself trusts
    for t in (set, frozenset, bytearray, bytes, complex, slice, range, list, dict, tuple, int, float, bool, str):
        allowed[f"builtins.{t.__name__}"] = t
    allowed["builtins.object"] = object  # the ``base`` of protocol-0/1 objects
    for t in (collections.OrderedDict, collections.Counter, collections.defaultdict, collections.deque):
        allowed[f"collections.{t.__name__}"] = t
    for t in (datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone):
        allowed[f"datetime.{t.__name__}"] = t
    allowed["copyreg._reconstructor"] = _safe_reconstructor
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings, same objects
        allowed[f"{core}.multiarray._reconstruct"] = _np_multiarray._reconstruct
        allowed[f"{core}.multiarray.scalar"] = _np_multiarray.scalar
        allowed[f"{core}.numeric._frombuffer"] = _np_numeric._frombuffer
    allowed["numpy.dtype"] = np.dtype
    allowed["numpy.ndarray"] = np.ndarray
    return allowed


ALLOWED_GLOBALS: dict[str, Any] = _allowed_globals()
_ALLOWED_IDS = {id(v) for v in ALLOWED_GLOBALS.values()}
_ALLOWED_CLASSES = tuple(v for v in ALLOWED_GLOBALS.values() if isinstance(v, type))

# Top-level modules whose globals run code, touch files/processes/the interpreter, or unpickle.
REFUSED_MODULES = frozenset(
    {
        "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "builtins",
        "importlib", "imp", "zipimport", "pkgutil", "runpy", "shutil", "pickle", "_pickle", "cPickle",
        "dill", "cloudpickle", "joblib", "marshal", "shelve", "ctypes", "_ctypes", "cffi", "socket",
        "http", "urllib", "requests", "ftplib", "smtplib", "telnetlib", "webbrowser", "code",
        "codeop", "pty", "tty", "multiprocessing", "concurrent", "threading", "_thread", "asyncio",
        "signal", "io", "_io", "tempfile", "glob", "fileinput", "operator", "_operator", "functools",
        "_functools", "types", "inspect", "gc", "atexit", "site", "sysconfig", "platform", "pdb",
        "bdb", "timeit", "trace", "profile", "cProfile", "distutils", "setuptools", "pip", "copyreg",
        "yaml", "commands", "popen2", "__builtin__",
    }
)  # fmt: skip
# Attribute names that run code / read files wherever they live (torch.load, numpy.load, ...).
REFUSED_NAMES = frozenset(
    {
        "eval", "exec", "execfile", "compile", "__import__", "import_module", "open", "system",
        "popen", "spawn", "getattr", "setattr", "delattr", "globals", "locals", "vars", "breakpoint",
        "load", "loads", "load_state_dict", "fromfile", "loadtxt", "genfromtxt", "Popen", "call",
        "check_call", "check_output", "run", "getoutput", "getstatusoutput", "remove", "unlink",
        "rmtree", "rmdir", "kill", "fork",
    }
)  # fmt: skip
REFUSED_PREFIXES = ("torch.hub", "torch.jit", "torch._C", "torch.ops", "torch.utils.cpp_extension", "torch.package")


def refusal_reason(module: str, name: str) -> str | None:
    """Why the global ``module.name`` is refused, or None when it is not on the refused list."""
    qualified = f"{module}.{name}"
    top = module.split(".", 1)[0]
    if top in REFUSED_MODULES:
        return f"module {top!r} can run commands, open files or import code"
    if any(part in REFUSED_NAMES or part.startswith(("spawn", "exec")) for part in name.split(".")):
        return "a function that runs code, starts processes or reads other files"
    if qualified.startswith(REFUSED_PREFIXES):
        return "part of torch that loads or compiles code"
    return None


# -------------------------------------------------------------------------------------- unpickler

_PU = pickle._Unpickler  # the pure-Python unpickler: its opcodes can be checked one by one


class RestrictedUnpickler(_PU):
    """A pickle reader that rebuilds tensors, containers and numpy values and nothing that runs code.

    Used through ``torch.load(path, pickle_module=restricted_pickle_module, weights_only=False)``
    (torch subclasses ``Unpickler`` and routes every global through :meth:`find_class`).
    """

    dispatch = dict(_PU.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 names (``__builtin__.set``, ``copy_reg``): protocol-2 pickles written by Python 3
        # use them too, so map them as the standard unpickler would (without importing anything).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        if qualified in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[qualified]
        reason = refusal_reason(module, name)
        if reason is not None:
            raise RefusedGlobalError(qualified, reason)
        return placeholder_class(module, name)

    # -- opcode checks: a call only of an allowed callable or a placeholder; state only into instances

    def _check_callable(self, func: Any, opcode: str) -> None:
        if isinstance(func, Placeholder) or (isinstance(func, type) and issubclass(func, Placeholder)):
            return
        if id(func) in _ALLOWED_IDS:
            return
        raise RefusedGlobalError(_describe(func), f"{opcode} of an object that is not an allowed callable")

    def _check_target(self, target: Any, opcode: str) -> None:
        if isinstance(target, Placeholder):
            return
        if isinstance(target, type) or id(target) in _ALLOWED_IDS or callable(target):
            raise RefusedGlobalError(_describe(target), f"{opcode} would change a class or function")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_callable(func, "REDUCE")
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_callable(cls, "NEWOBJ")
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_callable(cls, "NEWOBJ_EX")
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST / OBJ (protocols 0/1)
        self._check_callable(klass, "INST")
        super()._instantiate(klass, args)

    def load_build(self) -> None:
        self._check_target(self.stack[-2], "BUILD")
        super().load_build()

    def load_append(self) -> None:
        self._check_target(self.stack[-2], "APPEND")
        super().load_append()

    def load_appends(self) -> None:
        self._check_target(self._marked_target(), "APPENDS")
        super().load_appends()

    def load_setitem(self) -> None:
        self._check_target(self.stack[-3], "SETITEM")
        super().load_setitem()

    def load_setitems(self) -> None:
        self._check_target(self._marked_target(), "SETITEMS")
        super().load_setitems()

    def load_additems(self) -> None:
        self._check_target(self._marked_target(), "ADDITEMS")
        super().load_additems()

    def _marked_target(self) -> Any:
        # MARK moves the current stack to metastack and starts an empty one for the items of
        # APPENDS/SETITEMS/ADDITEMS, so the object they modify is the top of the saved stack.
        return self.metastack[-1][-1]

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"an object of type {type(obj).__module__}.{type(obj).__qualname__}"


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with :class:`RestrictedUnpickler` (the legacy format reads its headers with it)."""
    return RestrictedUnpickler(file, **kwargs).load()


# What ``torch.load(pickle_module=...)`` needs: ``Unpickler``, ``load`` and a ``__name__``.
restricted_pickle_module = types.SimpleNamespace(
    __name__=__name__, Unpickler=RestrictedUnpickler, load=_restricted_load
)


# -------------------------------------------------------------------------------------- the reader


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in archive.namelist())


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pth``/``.pt`` checkpoint without running code from it.

    First ``torch.load(weights_only=True)``; if torch refuses the file's contents, the
    :class:`RestrictedUnpickler` reads it (see the module docstring). Objects of unknown classes
    come back as :class:`Placeholder` instances (list them with :func:`placeholder_names`).

    Args:
        path: the checkpoint file (torch zip format, or the legacy format).
        map_location: where tensors go (default CPU).

    Returns:
        The unpickled object (usually a dict of tensors, or ``{"state_dict": ..., "meta": ...}``).

    Raises:
        CheckpointError: the file does not exist or cannot be read; or it names a refused global
            (the sentence names it; nothing from the file was run); or it is a TorchScript archive.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist; check the path.")
    if _is_torchscript_archive(path):  # torch.load(weights_only=False) would pass it to torch.jit.load
        raise CheckpointError(
            f"{path} is a TorchScript archive, not a checkpoint of weights; it was not loaded because "
            "loading TorchScript runs code stored in the file. Export a state dict instead."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 - weights-only refused something; the restricted reader decides
        pass
    try:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=restricted_pickle_module)
    except RefusedGlobalError as err:
        raise CheckpointError(
            f"Refused to load {path}: {err}. Nothing from the file was run. A checkpoint of weights has "
            "no reason to name it; get the file from its official source."
        ) from err
    except Exception as err:  # noqa: BLE001 - torch and pickle raise many types for bad files
        raise CheckpointError(
            f"Could not read {path} as a PyTorch checkpoint ({type(err).__name__}: {err}). Is the download complete?"
        ) from err


__all__ = [
    "ALLOWED_GLOBALS",
    "Placeholder",
    "RefusedGlobalError",
    "RestrictedUnpickler",
    "placeholder_class",
    "placeholder_names",
    "refusal_reason",
    "restricted_pickle_module",
    "safe_load",
]
