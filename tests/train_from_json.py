"""``python tests/train_from_json.py CONFIG.json``: ``train(TrainConfig.from_dict(...))``.

The tests' training subprocess (a killed and resumed run, torchrun) built from a TrainConfig,
so that no command line has to be kept in step with the smoke settings.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from elastic_lab.config import TrainConfig
from elastic_lab.train import train

if __name__ == "__main__":
    train(TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text())))
    if dist.is_initialized():
        dist.destroy_process_group()
