import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_ddp_two_cpu_processes(tmp_path):
    script = Path(__file__).with_name("ddp_train.py")
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path / f"ddp.rank{k}.json").read_text()) for k in (0, 1)]
    assert all(x["world"] == 2 for x in res)
    # both ranks hold the same (synchronised) model and the same epoch history
    assert res[0]["elbo_last"] == pytest.approx(res[1]["elbo_last"])
    assert res[0]["knn"] == pytest.approx(res[1]["knn"])
    assert res[0]["elbo_last"] < res[0]["elbo_first"] - 1.0
    assert res[0]["knn"] > 0.6  # 3 well-separated types: chance is ~0.33
