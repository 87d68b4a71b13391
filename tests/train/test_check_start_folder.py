"""llmasr.train.check.check, the library behind `llmasr check`, called from Python as the command calls it."""

import pytest

from llmasr.config_io import ConfigError
from llmasr.train.check import check


def test_the_check_compares_the_recipe_with_the_folder_it_starts_from(nano_start, tmp_path):
    """A frontend other than that of the folder the recipe starts from is refused, naming the key, both values and
    the folder's llmasr_model.yaml; one the recipe allows (model.differs_from_start) is a warning of the report."""
    out, nano_recipe = nano_start
    other = "model.encoder.frontend.lfr_n=7"  # the folder's is 6
    with pytest.raises(ConfigError) as err:
        check(nano_recipe(tmp_path / "run", other), "zero0", world_size=1, out=tmp_path / "plots")
    assert str(err.value).startswith("model.encoder.frontend.lfr_n: the recipe differs from the model it starts from")
    assert f"  model.encoder.frontend.lfr_n: the recipe has 7, {out / 'llmasr_model.yaml'} has 6" in str(err.value)
    allowed = nano_recipe(tmp_path / "run", other, "model.differs_from_start=[model.encoder.frontend.lfr_n]")
    report = check(allowed, "zero0", world_size=1, out=tmp_path / "plots")
    assert f"  warning: model.encoder.frontend.lfr_n: 7 here, 6 in {out / 'llmasr_model.yaml'}, the model" in report
