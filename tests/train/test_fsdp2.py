"""FSDP2 through Fabric's ModelParallelStrategy on the root TreeModule: 2 CPU ranks x B == 1 process x 2B."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemofn.core.rng import RngKey
from nemofn.core.state import ModelState
from nemofn.train.loop import fit

HERE = Path(__file__).parent


@pytest.mark.slow
def test_fsdp2_two_ranks_match_one_process(tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        import nemofn_fsdp2_script as script
    finally:
        sys.path.remove(str(HERE))
    out = tmp_path / "fsdp2.pt"
    launcher_vars = ("LOCAL_RANK", "MASTER_", "WORLD_SIZE", "NODE_RANK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher_vars)}
    run = subprocess.run([sys.executable, str(HERE / "nemofn_fsdp2_script.py"), str(out)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    sharded = torch.load(out, weights_only=True)
    one = fit(ModelState.create(*script.NET.init(RngKey(0))), script.step(), script.data(), batch_size=16, devices=1,
              **script.COMMON)
    for row_one, row_two in zip(one.history, sharded["history"]):
        assert abs(row_one["grad_norm"] - row_two["grad_norm"]) < 1e-5
    for name, a, b in zip(one.state.model.param_names, one.state.model.param_list, sharded["params"]):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), name
