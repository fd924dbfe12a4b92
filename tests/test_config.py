"""Every config composes; unknown keys and wrong types fail before any work starts."""
import pytest
from hydra.errors import ConfigCompositionException as HydraCompositionError

from hydra_helpers import compose_config, group_options

SECTIONS = compose_config([]).keys()


@pytest.mark.parametrize("group,option", [(g, o) for g, o in group_options() if g in SECTIONS])
def test_every_config_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg[group] is not None


def test_model_groups_have_expected_sizes():
    assert compose_config(["model=awd_lstm"]).model.hidden_size == 1150
    assert compose_config(["model=tiny"]).model.emb_size < compose_config(["model=small"]).model.emb_size


@pytest.mark.parametrize("override", ["model.bogus=1", "trainer.max_steps=abc", "data.batch_size=1.5", "nogroup=1"])
def test_bad_overrides_fail_at_composition(override):
    with pytest.raises(HydraCompositionError):
        compose_config([override])
