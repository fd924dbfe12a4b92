"""The medium-term memory: dynamic (fast) weights per stream, rewritten segment by segment by an update rule
(Krause's dynamic evaluation or the learned meta-learner) while an article is read."""
