"""Recipe paths: relative to the recipe file (or kept, for keywords, inline templates and paths from the working
directory), a path with nothing there named with its key, and the recipes the docs name."""

import pytest
import yaml

from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe


def test_paths_resolve_against_the_recipe_and_overrides_apply(tmp_path):
    (tmp_path / "models" / "llm").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    (tmp_path / "models" / "am.mvn").write_text("")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    path = recipes / "r.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"llm": {"path": "../models/llm"}, "encoder": {"frontend": {"cmvn_file": "../models/am.mvn"}}},
        "data": {"train": ["../data/train.jsonl"]},
        "train": {"output_dir": "../exp/run", "grad_accum": 2},
    }))  # fmt: skip
    r = load_recipe(path, ["train.epochs=3", "optim.branches.llm.lr=2e-5"])
    assert r.model.llm.path == str(tmp_path / "models" / "llm")
    assert r.model.encoder.frontend["cmvn_file"] == str(tmp_path / "models" / "am.mvn")
    assert r.data.train[0].path == str(tmp_path / "data" / "train.jsonl")
    assert r.train.output_dir == str(tmp_path / "exp" / "run")
    assert r.train.epochs == 3 and r.optim.branches["llm"].lr == 2e-5


def test_every_path_field_resolves_against_the_recipe(tmp_path):
    files = {
        "enc/model_dir": None, "llm": None, "adaptor.pt": "", "ctc.pt": "", "tokens.json": "[]",
        "noise.jsonl": "", "chat.jinja": "{{ messages }}", "am.mvn": "", "train.jsonl": "", "train2.jsonl": "",
        "valid.jsonl": "", "vad/config.yaml": "",
    }  # fmt: skip
    for name, text in files.items():
        target = tmp_path / "assets" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir() if text is None else target.write_text(text)
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.parent.mkdir()
    a = "../assets/"
    recipe.write_text(yaml.safe_dump({
        "model": {
            "encoder": {"path": a + "enc/model_dir", "frontend": {"cmvn_file": a + "am.mvn"}},
            "llm": {"path": a + "llm"},
            "adaptor": {"init_from": a + "adaptor.pt"},
            "prompt": {"chat_template": a + "chat.jinja"},
            "ctc": {"weight": 0.3, "vocab": a + "tokens.json", "init_from": a + "ctc.pt"},
        },
        "data": {
            "train": [a + "train.jsonl", {"path": a + "train2.jsonl", "weight": 2.0}],
            "valid": [{"path": a + "valid.jsonl"}],
            "augment": {"noise": {"prob": 0.5, "manifest": a + "noise.jsonl"}},
        },
        "decode": {"vad": a + "vad"},
    }))  # fmt: skip
    r = load_recipe(recipe)
    assets = tmp_path / "assets"
    m = r.model
    assert m.encoder.path == str(assets / "enc/model_dir")
    assert m.encoder.frontend["cmvn_file"] == str(assets / "am.mvn")
    assert m.llm.path == str(assets / "llm")
    assert m.adaptor.init_from == str(assets / "adaptor.pt")
    assert m.prompt.chat_template == str(assets / "chat.jinja")
    assert (m.ctc.vocab, m.ctc.init_from) == (str(assets / "tokens.json"), str(assets / "ctc.pt"))
    assert [s.path for s in r.data.train] == [str(assets / "train.jsonl"), str(assets / "train2.jsonl")]
    assert r.data.valid[0].path == str(assets / "valid.jsonl")
    assert r.data.augment.noise.manifest == str(assets / "noise.jsonl")
    assert r.decode.vad == str(assets / "vad")


def test_a_checkpoint_train_resume_names_is_looked_for_beside_the_recipe(tmp_path, monkeypatch):
    """train.resume: a checkpoint folder written relative to the recipe, as every other path there (it had been
    looked for in the working directory only); a tag and the keywords stay as they are."""
    (tmp_path / "exp" / "run" / "checkpoints" / "update_00000001").mkdir(parents=True)
    (tmp_path / "recipes" / "latest").mkdir(parents=True)  # a folder named as the keyword
    recipe = tmp_path / "recipes" / "r.yaml"
    monkeypatch.chdir(tmp_path / "exp")
    for written, read in [
        ("../exp/run/checkpoints/update_00000001", str(tmp_path / "exp/run/checkpoints/update_00000001")),
        ("update_00000001", "update_00000001"),
        ("latest", "latest"),
        ("auto", "auto"),
    ]:
        recipe.write_text(yaml.safe_dump({"train": {"resume": written}}))
        assert load_recipe(recipe).train.resume == read


def test_paths_that_are_not_recipe_relative_are_kept(tmp_path):
    recipe = tmp_path / "r.yaml"
    absolute = tmp_path / "abs.pt"
    absolute.write_text("")
    recipe.write_text(yaml.safe_dump({
        "model": {"llm": {"path": "llm"}, "adaptor": {"init_from": str(absolute)}, "ctc": {"vocab": "llm"}},
        "train": {"output_dir": "exp/run"},
    }))  # fmt: skip
    r = load_recipe(recipe)
    # "llm" does not exist beside the recipe: left to the working directory; the CTC vocab keyword stays a keyword
    assert (r.model.llm.path, r.model.ctc.vocab) == ("llm", "llm")
    assert r.model.adaptor.init_from == str(absolute)
    assert r.train.output_dir == "exp/run"  # an output folder is recipe-relative only when written ./x or ../x


def test_keywords_stay_keywords_beside_a_folder_of_their_name(tmp_path):
    """`ctc.vocab: llm` and `hotwords.distractors: corpus` are words: a recipe beside folders named llm/ and corpus/
    (a common layout) must not turn them into those folders' paths."""
    (tmp_path / "llm").mkdir()
    (tmp_path / "corpus").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"llm": {"path": "llm"}, "ctc": {"weight": 0.3, "vocab": "llm"}},
        "data": {"hotwords": {"enable": True, "distractors": "corpus"}},
    }))  # fmt: skip
    r = load_recipe(recipe)
    assert r.model.llm.path == str(tmp_path / "llm")  # the LLM folder's path resolves as before
    assert (r.model.ctc.vocab, r.data.hotwords.distractors) == ("llm", "corpus")


def test_a_path_with_nothing_there_names_its_key_and_where_it_was_looked_for(tmp_path, monkeypatch):
    """A recipe without model.llm.path had been checked as the LLM directory ".", and a missing directory was named
    without its key or the places a relative path is looked for."""
    from llmasr.models.funasr_dir import read_funasr_config
    from llmasr.models.llm import check_llm_dir

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"model.llm.path: not set; the LLM directory .* is required"):
        check_llm_dir("")
    where = rf"\(a relative path is looked for beside the recipe, then in the working directory {tmp_path}\)"
    with pytest.raises(ConfigError, match=r"model.llm.path: LLM directory not found: \.\./models/qwen " + where):
        check_llm_dir("../models/qwen")
    with pytest.raises(ConfigError, match=r"model.encoder.path: FunASR model directory not found: enc " + where):
        read_funasr_config("enc")


def test_an_inline_chat_template_is_text_not_a_path(tmp_path):
    """model.prompt.chat_template takes a file or the template itself: a real template (hundreds of characters
    without a slash) had failed loading with "File name too long" while being looked for beside the recipe."""
    template = "{%- for message in messages %}" + "{{- message['content'] }}" * 20 + "{%- endfor %}"
    assert len(template) > 255 and "/" not in template
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"prompt": {"chat_template": template}}}))
    assert load_recipe(path).model.prompt.chat_template == template


def test_paths_from_the_working_directory_are_kept_absolute(tmp_path, monkeypatch):
    """`model.llm.path=models/llm` on the command line: RUN_DIR/recipe.yaml had kept it relative, so an export
    started from another folder said the base model had changed. A run saved that way still resumes unchanged."""
    from llmasr.config_io import dump_yaml
    from llmasr.train import resume_recipe as rr

    (tmp_path / "models" / "llm").mkdir(parents=True)
    (tmp_path / "train.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    overrides = ["model.llm.path=models/llm", "data.train=[train.jsonl]", "train.output_dir=exp/run"]
    r = load_recipe(data={}, overrides=overrides)
    assert r.model.llm.path == str(tmp_path / "models" / "llm")
    assert r.data.train[0].path == str(tmp_path / "train.jsonl")
    assert r.train.output_dir == "exp/run"  # an output stays as written
    run = tmp_path / "exp" / "run"
    (run / "checkpoints").mkdir(parents=True)
    old = load_recipe(data={}, overrides=overrides[2:])  # saved by an llmasr that kept them relative
    old.model.llm.path, old.data.train = "models/llm", ["train.jsonl"]
    dump_yaml(old, run / "recipe.yaml")
    assert rr.check_resume_recipe(r, run / "checkpoints") == []


def test_a_path_under_the_home_folder_is_read_there(tmp_path, monkeypatch):
    """`~/...` in a recipe or an override is the home folder, as the manifests' audio paths and export's --output
    read it: train.output_dir=~/exp/run had made a folder named ~ in the working directory, and an input path under
    ~ was looked for beside the recipe."""
    home = tmp_path / "home"
    (home / "models" / "llm").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"llm": {"path": "~/models/llm"}}}))
    r = load_recipe(path, ["train.output_dir=~/exp/run"])
    assert r.model.llm.path == str(home / "models" / "llm")
    assert r.train.output_dir == str(home / "exp" / "run")


def test_every_recipe_the_docs_name_exists():
    """The README's and docstrings' examples name shipped recipes and DeepSpeed files; one had named a recipe that
    does not exist (recipes/paraformer_qwen2.5-1.5b.yaml)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    texts = [root / "README.md", *sorted((root / "llmasr").rglob("*.py")), *sorted((root / "recipes").glob("*.yaml"))]
    named = {
        (path.name, name)
        for path in texts
        for name in re.findall(r"\b(?:recipes/[\w.\-]+\.yaml|ds_configs/[\w.\-]+\.json)", path.read_text("utf-8"))
    }
    assert named and not sorted((where, name) for where, name in named if not (root / name).is_file())


def test_a_path_missing_beside_its_modelscope_spelling_names_that_spelling(tmp_path, monkeypatch, tiny_llm_dir):
    """A ModelScope download writes a name's dots as ___ (models/Qwen2___5-1___5B-Instruct); a recipe's
    ../models/Qwen2.5-1.5B-Instruct had been told only "not found". The spelling is named, never read in its place."""
    import shutil

    from llmasr.models.funasr_dir import read_funasr_config
    from llmasr.models.llm import check_llm_dir

    hub = tmp_path / ".cache" / "modelscope" / "hub"  # a dot above the missing name stays a dot
    spelled = hub / "Qwen" / "Qwen2___5-1___5B-Instruct"
    shutil.copytree(tiny_llm_dir, spelled)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "r.yaml").write_text(
        yaml.safe_dump({"model": {"llm": {"path": "../.cache/modelscope/hub/Qwen/Qwen2.5-1.5B-Instruct"}}})
    )
    monkeypatch.chdir(tmp_path / ".cache")  # not the recipe's folder: the recipe-relative spelling is the one named
    r = load_recipe(recipes / "r.yaml")
    hint = rf"\. {spelled} is there, the same path with a name's dots written ___ .*: set model.llm.path to that path$"
    with pytest.raises(
        ConfigError, match=rf"^model.llm.path: LLM directory not found: {hub}/Qwen/Qwen2.5-1.5B-Instruct{hint}"
    ):
        check_llm_dir(r.model.llm.path)
    monkeypatch.chdir(hub)  # relative to the working directory; and ___ written where the folder has dots
    with pytest.raises(
        ConfigError, match=r"not found: Qwen/Qwen2.5-1.5B-Instruct \(.*\)\. Qwen/Qwen2___5-1___5B-Instruct is there"
    ):
        check_llm_dir("Qwen/Qwen2.5-1.5B-Instruct")
    (hub / "iic" / "paraformer-v2.0").mkdir(parents=True)  # the ___ of a ModelScope path copied, the folder dotted
    with pytest.raises(
        ConfigError,
        match=r"not found: iic/paraformer-v2___0 \(.*\)\. iic/paraformer-v2.0 is there, the "
        r"same path with ___ written as dots: set model.encoder.path to that path$",
    ):
        read_funasr_config("iic/paraformer-v2___0")
    with pytest.raises(
        ConfigError, match=r"not found: Qwen/Qwen3\.5 \(.*directory .*\)$"
    ):  # no spelling there: no hint
        check_llm_dir("Qwen/Qwen3.5")


def test_a_relative_path_naming_two_files_is_refused(tmp_path, monkeypatch):
    """A recipe in conf/ naming data/train.jsonl, with conf/data/train.jsonl (a stale 5-line copy) and the working
    directory's data/train.jsonl both there: the copy beside the recipe had been read without a word, while the
    same recipe's data/dev.jsonl, found only in the working directory, was read there. Written ./x it is the
    recipe's, and a path both places resolve to one file (started from the recipe's own folder) is no conflict."""
    conf, data = tmp_path / "conf", tmp_path / "data"
    (conf / "data").mkdir(parents=True)
    data.mkdir()
    for folder in (conf / "data", data):
        (folder / "train.jsonl").write_text(f"{folder}\n")
    (data / "dev.jsonl").write_text("")
    recipe = conf / "r.yaml"
    recipe.write_text("data:\n  train:\n    - {path: data/train.jsonl, weight: 2}\n  valid: [data/dev.jsonl]\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    assert str(err.value) == (
        f"data.train[0].path: data/train.jsonl names two different files, {conf}/data/train.jsonl beside the recipe "
        f"and {data}/train.jsonl in the working directory; a recipe's relative path is read beside the recipe first, "
        "so the run would read the first: write ./data/train.jsonl for it, or the absolute path of the other "
        f"({recipe}, line 3)"
    )
    recipe.write_text("data:\n  train: [./data/train.jsonl]\n  valid: [data/dev.jsonl]\n")
    r = load_recipe(recipe)
    assert (r.data.train[0].path, r.data.valid[0].path) == (str(conf / "data" / "train.jsonl"), str(data / "dev.jsonl"))
    monkeypatch.chdir(conf)
    recipe.write_text("data:\n  train: [data/train.jsonl]\n")
    assert load_recipe(recipe).data.train[0].path == str(conf / "data" / "train.jsonl")
