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


def test_check_and_train_start_up_load_the_llm_tokenizer_once(nano_start, tmp_path, monkeypatch):
    """A recipe starting from a converted folder, its LLM read from a copy elsewhere: the comparison of its chat
    template with the folder's, the data plan and the model build had each loaded the tokenizer (three loads of
    `llmasr check` and of a train start-up); now one, shared by the three."""
    import shutil

    from transformers import AutoTokenizer

    from llmasr.train.trainer import train

    out, nano_recipe = nano_start
    llm = shutil.copytree(out / "llm", tmp_path / "elsewhere" / "llm")
    loads, real = [], AutoTokenizer.from_pretrained.__func__

    def counted(cls, path, *args, **kwargs):
        loads.append(path)
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(counted))
    keys = [f"model.llm.path={llm}", "model.differs_from_start=[model.prompt.chat_template]"]
    report = check(nano_recipe(tmp_path / "run", *keys), "zero0", world_size=1, out=tmp_path / "plots")
    assert "warning: model.prompt.chat_template: None, so " in report  # the comparison read the tokenizer's template
    assert loads == [str(llm)]
    loads.clear()
    assert [h["update"] for h in train(nano_recipe(tmp_path / "run", *keys), "zero0")["history"]] == [1]
    assert loads == [str(llm)]
