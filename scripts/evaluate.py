#!/usr/bin/env python
"""Evaluate a checkpoint on a split with static, dynamic-evaluation and meta-learned reading.

    python scripts/evaluate.py checkpoint=runs/meta/.../checkpoints/best.pt split=test
    python scripts/evaluate.py checkpoint=PATH split=valid methods=[static,dyneval] eval.max_articles=5

Writes results.json, per_article.csv, token_losses.npz, PNG plots and HTML pages into the run folder
(runs/eval/<date>_<time> unless hydra.run.dir= is given). Every key: `python scripts/evaluate.py --cfg job`.
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dynlm.eval.config import EvalRunConfig, register_eval_configs
from dynlm.eval.evaluate import evaluate
from dynlm.run.cli import check_config, check_overrides, register_help, user_errors

register_eval_configs()
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # config_path below

register_help(EvalRunConfig, __doc__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        check_config(cfg, EvalRunConfig)
        evaluate(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    with user_errors():
        check_overrides(sys.argv[1:], EvalRunConfig, CONF_DIR)
    main()
