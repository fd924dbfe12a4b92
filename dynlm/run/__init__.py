"""Run infrastructure shared by both training stages and evaluation: checkpoints, the one path from a checkpoint
to objects, the gradient-statistics cache, logging, dashboards, set-up and the run scaffold."""
