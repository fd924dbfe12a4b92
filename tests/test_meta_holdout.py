"""Held-out meta-training text (`data.meta_holdout_articles=N`): the last N train articles never reach stage 1,
stage 2 reads exactly them, and N=0 changes nothing."""
import hashlib

import pytest
import torch
from omegaconf import OmegaConf

import dynlm.run.from_checkpoint as from_checkpoint_module
from dynlm.config import ConfigValueError, DataConfig
from dynlm.data import HELDOUT, DataError, load_corpus
from dynlm.eval.inputs import load_inputs
from dynlm.eval.methods import ensure_grad_stats
from dynlm.run.checkpoint import CheckpointError, load_checkpoint
from dynlm.run.from_checkpoint import holdout_articles
from dynlm.run.scaffold import run
from dynlm.train import train
from dynlm.train.lm_trainer import LMTask
from dynlm.train.meta_trainer import MetaTask, meta_split
from eval_helpers import compose_eval, make_checkpoint, one_thread  # noqa: F401 (one_thread: a fixture)
from hydra_helpers import compose_config, meta_overrides, tiny_lm_overrides

N = 4  # of the toy corpus's 12 train articles
GRAM = 16  # held-out text is looked for as runs of this many tokens (random toy words: no run repeats by chance)


def full_train(data_dir):
    return load_corpus(DataConfig(dir=str(data_dir)), splits=("train",)).splits["train"]


def grams(ids: torch.Tensor) -> set:
    return {tuple(w) for w in ids.unfold(0, GRAM, 1).tolist()} if ids.numel() >= GRAM else set()


def run_task(cfg, run_dir, task_class):
    """Train through the real scaffold and keep the task it built (what the run read)."""
    tasks = []
    run(cfg, run_dir, lambda *args: tasks.append(task_class(*args)) or tasks[-1])
    return tasks[0]


@pytest.fixture
def measured(monkeypatch):
    """The token ids every gradient-statistics measurement reads."""
    seen, real = [], from_checkpoint_module.measure_grad_stats

    def spy(model, names, ids, *args, **kwargs):
        seen.append(ids.clone())
        return real(model, names, ids, *args, **kwargs)

    monkeypatch.setattr(from_checkpoint_module, "measure_grad_stats", spy)
    return seen


@pytest.fixture(scope="module")
def stage1(toy_data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lm-holdout")
    cfg = compose_config(tiny_lm_overrides(toy_data_dir, **{"data.meta_holdout_articles": N}))
    task = run_task(cfg, run_dir, LMTask)
    return task, run_dir / "checkpoints" / "best.pt"


def test_held_out_articles_never_reach_stage_1(toy_data_dir, stage1):
    task, ckpt_path = stage1
    full, train = full_train(toy_data_dir), task.corpus.splits["train"]
    cut = full.num_articles - N
    # what stage 1 trained on: its streams are the columns of its train split, which stops before the cut
    assert torch.equal(task.streams.t().reshape(-1), train.ids[: task.streams.numel()])
    assert train.titles == full.titles[:cut] and train.num_tokens == int(full.article_starts[cut])
    read = set().union(*(grams(column) for column in task.streams.t()))
    for a in range(cut, full.num_articles):
        assert not grams(full.article(a)) & read, f"held-out article {a} ({full.titles[a]}) reached stage 1"
    # the two parts are the original train split, article for article
    held = load_corpus(task.cfg.data, splits=(HELDOUT,)).splits[HELDOUT]
    assert train.titles + held.titles == full.titles
    for a in range(full.num_articles):
        part = train.article(a) if a < cut else held.article(a - cut)
        assert torch.equal(part, full.article(a)), a
    assert train.num_words + held.num_words == full.num_words
    # the checkpoint says what stage 1 read: the cut, and the sha256 of the text on each side of it
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["config"]["data"]["meta_holdout_articles"] == N
    file_sha = hashlib.sha256((toy_data_dir / "train.txt").read_bytes()).hexdigest()
    assert ckpt["data_checksums"]["train"] == task.corpus.checksums["train"] != file_sha
    assert ckpt["data_checksums"][HELDOUT] not in (file_sha, ckpt["data_checksums"]["train"])
    # the vocabulary is the whole train split's: ids do not depend on the cut
    assert task.corpus.tokenizer.state_dict() == load_corpus(DataConfig(dir=str(toy_data_dir)), ("valid",)
                                                             ).tokenizer.state_dict()


def test_stage_2_reads_exactly_the_held_out_articles(toy_data_dir, stage1, tmp_path, measured):
    task1, ckpt_path = stage1
    sizes = {"meta.batch_size": 2, "meta.seg_len": 4, "meta.window": 2, "meta.gradstat_tokens": 200,
             "meta.gradstat_streams": 4, "meta.valid_max_tokens": 100, "trainer.max_steps": 2,
             "trainer.eval_interval": 2}
    cfg = compose_config(meta_overrides(toy_data_dir, ckpt_path, **sizes))
    assert cfg.meta.split is None and cfg.data.meta_holdout_articles == 0  # nothing said: the checkpoint decides
    task = run_task(cfg, tmp_path / "meta", MetaTask)
    full = full_train(toy_data_dir)
    held = task.corpus.splits[HELDOUT]
    assert task.cfg.meta.split == HELDOUT and task.cfg.data.meta_holdout_articles == N
    assert task.streams.split is held
    assert torch.equal(held.ids, full.ids[int(full.article_starts[full.num_articles - N]):])
    assert sorted(a for s in task.streams.global_stream_articles for a in s) == list(range(N))
    # the gradient statistics are measured on what stage 1 trained on, not on the held-out articles
    assert len(measured) == 1 and torch.equal(measured[0], task1.corpus.splits["train"].ids)
    last = load_checkpoint(tmp_path / "meta" / "checkpoints" / "last.pt")
    assert last["progress"]["step"] == 2
    assert last["config"]["data"]["meta_holdout_articles"] == N and last["config"]["meta"]["split"] == HELDOUT
    # another number of held-out articles than stage 1's fails before any work
    with pytest.raises(CheckpointError, match=f"meta_holdout_articles=2 but checkpoint .* was trained with {N}"):
        train(compose_config(meta_overrides(toy_data_dir, ckpt_path, **sizes, **{"data.meta_holdout_articles": 2})),
              tmp_path / "other")
    assert not (tmp_path / "other" / "checkpoints").exists()


def test_too_many_held_out_articles_fail_before_any_work(toy_data_dir, tmp_path):
    run_dir = tmp_path / "lm"
    with pytest.raises(DataError, match=r"data.meta_holdout_articles=12 but .*train.txt has 12 articles.* 0 and 11"):
        train(compose_config(tiny_lm_overrides(toy_data_dir, **{"data.meta_holdout_articles": 12})), run_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
    with pytest.raises(ConfigValueError, match="data.meta_holdout_articles=-1 is out of range"):
        train(compose_config(tiny_lm_overrides(toy_data_dir, **{"data.meta_holdout_articles": -1})), run_dir)


def test_no_held_out_articles_change_nothing(toy_data_dir):
    before = OmegaConf.create({k: v for k, v in OmegaConf.to_container(OmegaConf.structured(DataConfig(
        dir=str(toy_data_dir)))).items() if k != "meta_holdout_articles"})  # a data config from before the key
    old, new = load_corpus(before), load_corpus(DataConfig(dir=str(toy_data_dir), meta_holdout_articles=0))
    files = {s: hashlib.sha256((toy_data_dir / f"{s}.txt").read_bytes()).hexdigest() for s in old.splits}
    assert old.checksums == new.checksums == files  # the file sha256: grad-statistics cache keys are unchanged
    for s in old.splits:
        assert torch.equal(old.splits[s].ids, new.splits[s].ids) and old.splits[s].titles == new.splits[s].titles
    assert meta_split(None, 0, None) == "train"
    with pytest.raises(DataError, match=f"the {HELDOUT} split needs held-out articles"):
        load_corpus(DataConfig(dir=str(toy_data_dir)), splits=(HELDOUT,))
    with pytest.raises(ConfigValueError, match=f"meta.split={HELDOUT} but the stage-1 checkpoint kept no articles"):
        meta_split(HELDOUT, 0, None)
    with pytest.raises(ConfigValueError, match="meta.split='valid': use train or heldout"):
        meta_split("valid", N, None)


def test_a_run_from_a_checkpoint_keeps_its_cut():
    ckpt = {"config": {"data": {"meta_holdout_articles": N}}}
    assert holdout_articles(0, ckpt, "x.pt") == holdout_articles(N, ckpt, "x.pt") == N
    assert holdout_articles(0, {"config": {"data": {}}}, "old.pt") == 0  # written before the key: none held out
    with pytest.raises(CheckpointError, match=f"meta_holdout_articles=3 but checkpoint x.pt was trained with {N}"):
        holdout_articles(3, ckpt, "x.pt")
    # a resumed stage 2 reads the split it began with, even where the default would now pick another
    assert meta_split(None, N, {"config": {"meta": {"split": "train"}}}) == "train"
    assert meta_split(None, N, None) == HELDOUT


def test_a_resumed_stage_1_keeps_its_cut_unless_told_another(toy_data_dir, tmp_path):
    over = tiny_lm_overrides(toy_data_dir, **{"data.meta_holdout_articles": N, "trainer.stop_after_steps": 6})
    train(compose_config(over), tmp_path / "lm")
    resume = tiny_lm_overrides(toy_data_dir, **{"trainer.resume": "true"})  # N not restated: the checkpoint's
    task = run_task(compose_config(resume), tmp_path / "lm", LMTask)
    assert task.cfg.data.meta_holdout_articles == N
    assert task.corpus.splits["train"].num_articles == full_train(toy_data_dir).num_articles - N
    with pytest.raises(CheckpointError, match=f"meta_holdout_articles=2 but checkpoint .* was trained with {N}"):
        train(compose_config(resume + ["data.meta_holdout_articles=2"]), tmp_path / "lm")


def test_dyneval_of_a_stage_1_checkpoint_measures_on_the_train_split_stage_1_read(toy_data_dir, tmp_path, measured):
    path = make_checkpoint(toy_data_dir, tmp_path / "lm.pt", overrides=[f"data.meta_holdout_articles={N}"])
    ckpt = load_checkpoint(path)
    over = [f"checkpoint={path}", "split=valid", "methods=[static,dyneval]", "eval.device=cpu"]
    inp = load_inputs(compose_eval(over))
    train = inp.corpus.splits["train"]
    assert train.num_articles == full_train(toy_data_dir).num_articles - N
    assert inp.corpus.checksums["train"] == ckpt["data_checksums"]["train"]
    ensure_grad_stats(inp, tokens=200, streams=4, use_cache=False)
    assert len(measured) == 1 and torch.equal(measured[0], train.ids)
    with pytest.raises(CheckpointError, match=f"meta_holdout_articles=2 but checkpoint .* was trained with {N}"):
        load_inputs(compose_eval(over + ["data.meta_holdout_articles=2"]))
