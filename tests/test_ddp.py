"""2-process DistributedDataParallel (gloo, CPU) equals 1 process with the same global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port

from offseg_vis.engine.train import train
from offseg_vis.models.weights import read_metadata, read_state_dict

OVERRIDES = {
    "schedule.max_iters": 4,
    "schedule.eval_interval": 2,
    "schedule.checkpoint_interval": 0,
    "runtime.num_threads": 1,
    # no padding: every process then averages over the same number of pixels, so the mean of the
    # per-process losses equals the global-batch loss (flip and photometric stay on)
    "data.ratio_range": "[1.0,1.0]",
}


def _worker(rank: int, world: int, port: int, work_dir: str, batch: int) -> None:
    from test_train import tiny_config, tiny_dataset, tiny_model

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.manual_seed(0)
    data = tiny_dataset()
    cfg = tiny_config(**OVERRIDES, **{"data.batch_size": batch})
    train(cfg, work_dir=work_dir, model=tiny_model(), train_dataset=data, val_dataset=data)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_equal_one(tmp_path):
    from test_train import tiny_config, tiny_dataset, tiny_model

    for attempt in range(2):
        ddp_dir = tmp_path / f"ddp{attempt}"
        try:
            mp.spawn(_worker, args=(2, free_port(), str(ddp_dir), 2), nprocs=2, join=True)
            break
        except mp.ProcessRaisedException as exc:
            # the free port can be taken by another program between lookup and bind: retry once
            if attempt or not any(s in str(exc) for s in ("Address already in use", "EADDRINUSE")):
                raise

    torch.manual_seed(0)
    data = tiny_dataset()
    single = train(
        tiny_config(**OVERRIDES, **{"data.batch_size": 4}),
        work_dir=tmp_path / "single",
        model=tiny_model(),
        train_dataset=data,
        val_dataset=data,
    )

    a, b = read_state_dict(single.last_checkpoint), read_state_dict(ddp_dir / "last.safetensors")
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff <= 1e-5
    # the weights did move (a test that compares two untouched models would pass trivially)
    torch.manual_seed(0)
    init = tiny_model().state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-4
    meta = read_metadata(ddp_dir / "last.safetensors")
    assert meta["global_batch"] == 4 and meta["step"] == 4
    # evaluation is sharded over both processes and summed: same metrics as one process
    assert meta["metrics"]["mIoU"] == pytest.approx(single.evals[-1]["mIoU"], abs=1e-6)
    log = (ddp_dir / "train.log").read_text()
    assert "2 process(es) x batch 2 = global batch 4" in log
