"""Run the stage-1 trainer on the tiny models under torchrun (used by test_stage1_multiprocess.py):

    python -m torch.distributed.run --nproc_per_node 2 tests/stage1/ddp_stage1_script.py SVD CLIP DATA OUT [k=v ...]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import tiny_overrides  # noqa: E402

from video_models.training import Stage1Trainer  # noqa: E402
from vpp_core.config import load_config  # noqa: E402
from vpp_core.sharded_optimizer import ShardedAdamW, state_numel  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "video_conf" / "tiny.yaml"

if __name__ == "__main__":
    svd, clip, data, out, *pairs = sys.argv[1:]
    extra = dict(pair.split("=", 1) for pair in pairs)
    trainer = Stage1Trainer(load_config(TINY, tiny_overrides(Path(svd), Path(clip), Path(data), Path(out), **extra)))
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes  # (train() ends the group)
    result = trainer.train()
    optimizer = trainer.optimizer.optimizer  # inside accelerate's wrapper
    # a sharded optimizer's own .state is not what this rank holds
    local_numel = optimizer.local_state_numel() if isinstance(optimizer, ShardedAdamW) else state_numel(optimizer.state)
    record = {"rank": rank, "world": world, "global_step": result.global_step, "train_losses": result.train_losses,
              "val_losses": {str(k): v for k, v in result.val_losses.items()}, "run_dir": str(result.run_dir),
              "checkpoints": [str(c) for c in result.checkpoints], "sharded": isinstance(optimizer, ShardedAdamW),
              "optimizer_state_numel": local_numel,
              "parameters": sum(p.numel() for p in trainer.unet.parameters())}
    Path(out, f"result_{rank}.json").write_text(json.dumps(record))
