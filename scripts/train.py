#!/usr/bin/env python
"""Train the static LM (`stage=lm`, default) or the meta-learner (`stage=meta`).

    python scripts/train.py model=small data.dir=../shared/data/wikitext-2
    python scripts/train.py +experiment=small_adam_lm data.dir=../shared/data/wikitext-2   (a recipe: conf/experiment/)
    python scripts/train.py stage=meta rule=cheap meta.lm_checkpoint=runs/lm/.../checkpoints/best.pt ...
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dynlm.config import Config, register_configs
from dynlm.dynamic.rules import GROUP, rule_names, rule_spec
from dynlm.run.cli import check_config, check_overrides, register_help, user_errors
from dynlm.train import train

register_configs()
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # config_path below

register_help(Config, __doc__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with user_errors():
        check_config(cfg, Config)
        train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    with user_errors():
        check_overrides(sys.argv[1:], Config, CONF_DIR, {GROUP: {n: rule_spec(n).config for n in rule_names()}})
    main()
