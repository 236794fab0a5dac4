"""A run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from offseg_vis.engine.train import train
from offseg_vis.models.weights import read_metadata, read_state_dict

TESTS = Path(__file__).resolve().parent
OVERRIDES = {
    "schedule.max_iters": 8,
    "schedule.checkpoint_interval": 2,
    "schedule.eval_interval": 4,  # an evaluation in the middle must not perturb training
    "runtime.num_threads": 1,
    "data.ratio_range": "[0.5,2.0]",  # random resize, crop, flip, photometric: all must replay
}

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import torch
    from test_resume import OVERRIDES
    from test_train import tiny_config, tiny_dataset, tiny_model
    from offseg_vis.engine.train import train

    def kill(step, **_):
        if step == 5:  # after step 5; the last checkpoint is step 4's
            os.kill(os.getpid(), signal.SIGKILL)

    torch.manual_seed(0)
    data = tiny_dataset()
    train(tiny_config(**OVERRIDES), work_dir={work_dir!r}, model=tiny_model(), train_dataset=data,
          val_dataset=data, callbacks=[kill])
    """
)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    from test_train import tiny_config, tiny_dataset, tiny_model

    data = tiny_dataset()
    cfg = tiny_config(**OVERRIDES)

    torch.manual_seed(0)
    full = train(cfg, work_dir=tmp_path / "full", model=tiny_model(), train_dataset=data, val_dataset=data)

    killed = tmp_path / "killed"
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS), work_dir=str(killed))],
        capture_output=True, text=True, timeout=600,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert read_metadata(killed / "last.safetensors")["step"] == 4

    torch.manual_seed(123)  # a differently initialised model: everything must come from the checkpoint
    resumed = train(cfg, resume=True, work_dir=killed, model=tiny_model(), train_dataset=data, val_dataset=data)

    assert resumed.steps == full.steps == 8
    a, b = read_state_dict(full.last_checkpoint), read_state_dict(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.losses == full.losses
    assert [e["mIoU"] for e in resumed.evals] == [e["mIoU"] for e in full.evals]
