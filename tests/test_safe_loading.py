"""Loading a checkpoint never runs code from it (issue 13 §2).

A crafted malicious ``.pth`` is refused with a sentence naming the global it calls, and the command
it carries never runs; an mmengine-style checkpoint whose ``meta`` holds numpy values and an object
of a module that is not installed loads, with that object as an inert placeholder.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from offseg_vis import build_model
from offseg_vis.cli import main
from offseg_vis.errors import CheckpointError
from offseg_vis.models.convert import read_official_checkpoint, read_official_state_dict
from offseg_vis.models.safe_pickle import Placeholder, placeholder_names, restricted_pickle_module, safe_load

# os.system is pickled under the module that defines it: posix on Linux/macOS, nt on Windows.
SYSTEM_GLOBAL = f"{os.system.__module__}.system"


class _TouchFile:
    """Unpickling this calls os.system("touch <path>") (the classic pickle attack)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def _malicious_checkpoint(tmp_path, legacy: bool = False):
    marker = tmp_path / "pwned"
    path = tmp_path / ("evil_legacy.pth" if legacy else "evil.pth")
    state = {"decode_head.conv_seg.weight": torch.zeros(150, 8, 1, 1)}
    torch.save(
        {"meta": {"epoch": 1, "hook": _TouchFile(marker)}, "state_dict": state},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    return path, marker


def test_the_crafted_checkpoint_is_really_malicious(tmp_path):
    """Negative control: a plain unpickler runs the command, so the refusals below mean something."""
    path, marker = _malicious_checkpoint(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_checkpoint_runs_nothing_and_names_the_global(tmp_path, legacy):
    path, marker = _malicious_checkpoint(tmp_path, legacy)
    with pytest.raises(CheckpointError) as info:
        read_official_state_dict(path)
    message = str(info.value)
    assert (
        f"`{SYSTEM_GLOBAL}`" in message and "Refused to load" in message and "Nothing from the file was run" in message
    )
    assert not marker.exists()


def test_malicious_checkpoint_through_build_model_and_cli(tmp_path, capsys):
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=rf"`{SYSTEM_GLOBAL}`"):
        build_model("segformer-b0", num_classes=150, pretrained=path)
    out = tmp_path / "out.safetensors"
    code = main(["convert", str(path), str(out), "--model", "offseg-t"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("offseg convert: Refused to load") and f"`{SYSTEM_GLOBAL}`" in err
    assert "Traceback" not in err
    assert not marker.exists() and not out.exists()


def _restricted_loads(data: bytes):
    return restricted_pickle_module.load(io.BytesIO(data), encoding="utf-8")


@pytest.mark.parametrize(
    "data,refused",
    [
        (pickle.dumps(_TouchFile("x"), protocol=4), SYSTEM_GLOBAL),  # STACK_GLOBAL spelling
        (b"cbuiltins\neval\n(Vprint(1)\ntR.", "builtins.eval"),
        (b"c__builtin__\nexec\n(Vprint(1)\ntR.", "builtins.exec"),  # Python-2 spelling, mapped first
        (b"cbuiltins\ngetattr\n(cbuiltins\nobject\nV__class__\ntR.", "builtins.getattr"),
        (b"csubprocess\ncheck_output\n((Vtrue\nltR.", "subprocess.check_output"),
        (b"cimportlib\nimport_module\n(Vos\ntR.", "importlib.import_module"),
        (b"cnumpy\nload\n(Vx.npy\ntR.", "numpy.load"),
        (b"ctorch\nload\n(Vx.pth\ntR.", "torch.load"),
    ],
    ids=["os.system", "eval", "py2-exec", "getattr", "subprocess", "importlib", "numpy.load", "torch.load"],
)
def test_code_running_globals_are_refused_by_name(data, refused):
    with pytest.raises(CheckpointError, match=rf"`{refused}`"):
        _restricted_loads(data)


def test_unknown_globals_become_placeholders_without_import(capsys):
    # `this` prints the Zen of Python when imported: if the unpickler imported it, stdout shows it.
    sys.modules.pop("this", None)
    call = _restricted_loads(b"cthis\nrot13\n(Vabc\nK\x02tR.")  # REDUCE: a call of an unknown function
    assert "this" not in sys.modules and capsys.readouterr().out == ""
    assert isinstance(call, Placeholder) and type(call).qualified_name() == "this.rot13"
    assert call.pickled_args == ("abc", 2)
    # NEWOBJ + SETITEMS + BUILD of a class whose module does not exist (mmengine's ConfigDict shape)
    data = b"\x80\x02cno_such_pkg.config\nConfigDict\n)\x81(X\x01\x00\x00\x00aK\x01u}X\x01\x00\x00\x00sK\x02sb."
    obj = _restricted_loads(data)
    assert "no_such_pkg" not in sys.modules
    assert type(obj).qualified_name() == "no_such_pkg.config.ConfigDict"
    assert obj.pickled_items == {"a": 1} and obj.pickled_state == {"s": 2}
    # calling what the pickle built is recorded, not run
    again = obj(5)
    assert isinstance(again, Placeholder) and again.pickled_args == (5,)


def test_state_is_never_written_into_a_class():
    before = dict(vars(torch.Tensor))
    # BUILD on the allowed class torch.Tensor with slot state {'__repr__': 1}
    data = b"ctorch\nTensor\n(N}V__repr__\nK\x01stb."
    with pytest.raises(CheckpointError, match="BUILD would change a class"):
        _restricted_loads(data)
    assert dict(vars(torch.Tensor)) == before
    with pytest.raises(CheckpointError, match="SETITEM would change a class"):
        _restricted_loads(b"ccollections\nOrderedDict\nVk\nK\x01s.")


FAKE_MODULES = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")


def _mmengine_style_checkpoint(path, state):
    """A checkpoint shaped like mmengine's, with a HistoryBuffer of a module that exists only while pickling."""
    modules = {name: types.ModuleType(name) for name in FAKE_MODULES}

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([0.5, 0.25, 0.125])
            self._count_history = np.array([1, 1, 1])
            self.max_length = 1000000

    HistoryBuffer.__module__ = FAKE_MODULES[-1]
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    modules[FAKE_MODULES[-1]].HistoryBuffer = HistoryBuffer
    assert not any(name in sys.modules for name in FAKE_MODULES)
    sys.modules.update(modules)
    try:
        torch.save(
            {
                "meta": {
                    "seed": np.int64(90817),
                    "lr": np.float64(0.00006),
                    "hist": np.arange(6, dtype=np.int32).reshape(2, 3),
                    "time": "20250101_000000",
                    "dataset_meta": {"classes": ("wall", "flag"), "palette": [[120, 120, 120], [92, 0, 255]]},
                },
                "state_dict": collections.OrderedDict(state),
                "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"iter": 160000}},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.00006, "params": [0, 1]}]},
            },
            path,
        )
    finally:
        for name in FAKE_MODULES:
            del sys.modules[name]


def test_mmengine_style_checkpoint_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"backbone.w": torch.randn(4, 3, generator=g), "decode_head.b": torch.arange(5)}
    path = tmp_path / "official.pth"
    _mmengine_style_checkpoint(path, state)
    with pytest.raises(pickle.UnpicklingError):  # torch's weights-only reader cannot (the reason for ours)
        torch.load(path, weights_only=True)

    checkpoint = read_official_checkpoint(path)
    assert set(checkpoint.state_dict) == set(state)
    for key, value in state.items():
        assert torch.equal(checkpoint.state_dict[key], value) and checkpoint.state_dict[key].dtype == value.dtype
    meta = checkpoint.meta
    assert type(meta["seed"]) is np.int64 and meta["seed"] == 90817
    assert type(meta["lr"]) is np.float64 and meta["lr"] == 0.00006
    assert meta["hist"].dtype == np.int32 and np.array_equal(meta["hist"], np.arange(6).reshape(2, 3))
    assert meta["dataset_meta"]["classes"] == ("wall", "flag")
    assert checkpoint.placeholders == ["mmengine.logging.history_buffer.HistoryBuffer"]
    assert not any(name in sys.modules for name in FAKE_MODULES)  # never imported

    whole = safe_load(path)
    buffer = whole["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, Placeholder)
    assert np.array_equal(buffer.pickled_state["_log_history"], [0.5, 0.25, 0.125])
    assert buffer.pickled_state["max_length"] == 1000000
    assert whole["optimizer"]["param_groups"][0]["params"] == [0, 1]
    assert placeholder_names(whole) == ["mmengine.logging.history_buffer.HistoryBuffer"]


def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        safe_load(path)


def test_plain_state_dicts_still_take_the_weights_only_path(tmp_path):
    state = {"w": torch.randn(3, 2), "p": torch.nn.Parameter(torch.ones(2))}
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    loaded = safe_load(path)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["p"], state["p"])
