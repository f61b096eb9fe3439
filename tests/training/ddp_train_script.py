"""Run the trainer with the stand-in policy under torchrun (used by test_multiprocess.py):

    python -m torch.distributed.run --nproc_per_node 2 tests/training/ddp_train_script.py ROOT RUN_DIR [overrides]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import fake_policy_factory, tiny_calvin_cfg  # noqa: E402

from policy_models.training.trainer import train  # noqa: E402

if __name__ == "__main__":
    root, run_dir, *overrides = sys.argv[1:]
    res = train(tiny_calvin_cfg(Path(root), Path(run_dir), "training.device=cpu", *overrides), fake_policy_factory())
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    out = {"rank": rank, "step": res.step, "epoch": res.epoch, "val": res.val_history,
           "last": str(res.last_checkpoint)}
    Path(run_dir, f"result_{rank}.json").write_text(json.dumps(out))
