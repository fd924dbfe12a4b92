#!/usr/bin/env python
"""Train the static LM (`stage=lm`, default) or the meta-learner (`stage=meta`).

    python scripts/train.py model=small data.dir=../shared/data/wikitext-2
    python scripts/train.py stage=meta meta.lm_checkpoint=runs/lm/.../checkpoints/best.pt ...
"""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dynlm.config import register_configs
from dynlm.train import train

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
