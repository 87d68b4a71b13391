"""Recipe values: the YAML read (UTF-8, keys given twice, YAML 1.1 spellings), overrides, and typed errors that name
the key and where its value was set."""

import re

import pytest
import yaml

from llmasr.config_io import ConfigError
from llmasr.recipe import load_recipe, save_recipe


def test_a_recipe_is_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """A Chinese prompt in a UTF-8 recipe (BOM or not) reads the same under any locale; a GBK-saved one is named."""
    import locale

    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "latin-1")  # a non-UTF-8 shell
    text = yaml.safe_dump({"model": {"prompt": {"task": "语音转写"}}}, allow_unicode=True)
    for name, data in (("plain.yaml", text.encode("utf-8")), ("bom.yaml", "\ufeff".encode("utf-8") + text.encode())):
        (tmp_path / name).write_bytes(data)
        assert load_recipe(tmp_path / name).model.prompt.task == "语音转写"
    (tmp_path / "gbk.yaml").write_bytes(text.encode("gbk"))
    with pytest.raises(ConfigError, match=r"gbk.yaml: not UTF-8 text .* save the recipe as UTF-8"):
        load_recipe(tmp_path / "gbk.yaml")


def test_bad_override_and_bad_type_name_their_key(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got 'many'"):
        load_recipe(data={"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        load_recipe(data={}, overrides=["train.epochs"])
    with pytest.raises(ConfigError, match=r"top level: unknown key\(s\) \['trian'\]"):
        load_recipe(data={"trian": {}})
    # a number as YAML read it is named int or float, not the loader's own _Int / _Float
    with pytest.raises(
        ConfigError, match=r"^train: expected a mapping for TrainConfig, got int 3 \(set by the override 'train=3'\)$"
    ):
        load_recipe(data={}, overrides=["train=3"])
    with pytest.raises(ConfigError, match=r"^data.train: expected a list, got float 1.5 "):
        load_recipe(data={}, overrides=["data.train=1.5"])


@pytest.mark.parametrize(
    "overrides, said",
    [(["train.epochs", "=", "3"], "the shell split 'train.epochs = 3' at its spaces: write train.epochs=3"),
     (["train.epochs", "=3"], "the shell split 'train.epochs =3' at its spaces: write train.epochs=3"),
     (["train.epochs=", "3"], "the shell split 'train.epochs= 3' at its spaces: write train.epochs=3"),
     (["model.prompt.task=Transcribe", "this"], "the shell split the value of 'model.prompt.task=Transcribe this' "
                                                "at its spaces: quote it, model.prompt.task='Transcribe this'")],
)  # fmt: skip
def test_an_override_the_shell_split_at_its_spaces_is_shown_whole(overrides, said):
    """`train.epochs = 3` (spaces around '=', as in YAML) was refused as "override 'train.epochs' is not of the form
    key.path=value", and an unquoted value with a space named only its second word."""
    with pytest.raises(ConfigError) as err:
        load_recipe(data={}, overrides=overrides)
    assert "is not of the form key.path=value" in str(err.value) and said in str(err.value)


def test_one_item_where_a_list_is_wanted_is_shown_as_a_list():
    """`data.train=data/train.jsonl` (the recipe headers write `data.train=[data/train.jsonl]`) was refused as
    "expected a list" without the form that fixes it."""
    said = r"^data.train: expected a list, got str 'a.jsonl'; a list of one is written \[a.jsonl\] \(set by the "
    with pytest.raises(ConfigError, match=said + r"override 'data.train=a.jsonl'\)$"):
        load_recipe(data={}, overrides=["data.train=a.jsonl"])
    # a weighted one, {path, weight}, had been refused without the form at all
    said = r"^data.train: expected a list, got dict .*; a list of one is written \[\{path: a.jsonl, weight: 2\}\] \(set"
    with pytest.raises(ConfigError, match=said):
        load_recipe(data={}, overrides=["data.train={path: a.jsonl, weight: 2}"])


def test_a_hash_in_an_override_is_part_of_its_value():
    """YAML reads ' #' as a comment: `train.output_dir=exp/run #2` had trained into exp/run, another run's folder.
    A value that reads as one string keeps its '#'; one that does not is refused."""
    r = load_recipe(data={}, overrides=["train.output_dir=exp/run #2", "model.prompt.task=Transcribe #verbatim"])
    assert r.train.output_dir.endswith("exp/run #2") and r.model.prompt.task == "Transcribe #verbatim"
    assert load_recipe(data={}, overrides=["model.prompt.task=#"]).model.prompt.task == "#"
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got '3 # three'"):
        load_recipe(data={}, overrides=["train.epochs=3 # three"])
    with pytest.raises(ConfigError, match=r"override 'data.train=\[a.jsonl\] # two': YAML reads ' #' as the start"):
        load_recipe(data={}, overrides=["data.train=[a.jsonl] # two"])


def test_an_override_text_with_a_colon_says_how_to_quote_it():
    """`model.prompt.task=Transcribe: the audio` is YAML's mapping {Transcribe: the audio}: the refusal named the key
    and the override, but not that quoting gives the text; the quoted form it suggests loads."""
    for value in ("Transcribe: the audio", "Transcribe:"):
        with pytest.raises(ConfigError) as err:
            load_recipe(data={}, overrides=[f"model.prompt.task={value}"])
        quoted = f"""model.prompt.task='"{value}"'"""
        assert str(err.value).endswith(f"a closing ':' as a mapping: quote the value, {quoted})"), str(err.value)
        assert load_recipe(data={}, overrides=[f'model.prompt.task="{value}"']).model.prompt.task == value
    with pytest.raises(ConfigError) as err:
        load_recipe(data={}, overrides=["train.epochs=a: b"])  # not a text field: no quoting would help
    assert "quote" not in str(err.value)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """Plain YAML keeps the last of two equal keys: the first optim section, and its learning rate, would be gone."""
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  epochs: 3\noptim:\n  branches:\n    llm: {lr: 1.0e-4}\noptim:\n  weight_decay: 0.1\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML: .*key 'optim' given twice in one mapping "
                                          r"\(line 3 and line 6\)"):  # fmt: skip
        load_recipe(path)
    path.write_text("data:\n  batching: {max_seconds: 300, num_buckets: 30, max_seconds: 100}\n")  # one line
    with pytest.raises(
        ConfigError, match=r"key 'max_seconds' given twice in one mapping \(line 2, columns 14 and 49\)"
    ):
        load_recipe(path)
    path.write_text("base: &b {epochs: 3}\ntrain:\n  <<: *b\n  epochs: 4\n")  # a merge key may be overridden
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 4
    from llmasr.config_io import load_yaml

    assert load_yaml(path)["train"] == {"epochs": 4}


def test_a_number_in_a_string_field_keeps_its_text_and_nan_is_no_number():
    """YAML reads 0755 as 493 and 1:30 as 90: a string field (a folder, a tag) takes the text as written."""
    for text in ("0755", "1:30", "1_000", "1e3", "007"):
        assert load_recipe(data={}, overrides=[f"train.output_dir={text}"]).train.output_dir.endswith(text)
    recipe = load_recipe(data={"train": {"epochs": 3}}, overrides=["optim.weight_decay=0.5", "train.grad_accum=2.0"])
    assert (type(recipe.train.epochs), type(recipe.optim.weight_decay), recipe.train.grad_accum) == (int, float, 2)
    assert type(recipe.train.grad_accum) is int
    for key, text in (("optim.weight_decay", "nan"), ("optim.weight_decay", ".nan"), ("train.grad_clip", "NaN")):
        with pytest.raises(ConfigError, match=f"{key}: expected a number, got"):
            load_recipe(data={}, overrides=[f"{key}={text}"])
    for key in ("optim.branches.llm.lr", "optim.weight_decay", "train.grad_clip"):
        with pytest.raises(ConfigError, match=f"{key}: must be .*finite"):
            load_recipe(data={}, overrides=[f"{key}=.inf"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batching.max_seconds=.inf", "data.batching.max_seconds: must be positive and finite"),
        ("train.peak_tflops=.inf", "train.peak_tflops: must be > 0 TFLOP/s and finite"),
        ("train.progress_every_s=.inf", "train.progress_every_s: must be >= 0 seconds and finite"),
    ],
)
def test_infinite_budgets_and_rates_are_refused(override, message):
    """YAML's .inf had passed: one batch of the whole corpus, an MFU of 0, no progress line ever."""
    with pytest.raises(ConfigError, match=message):
        load_recipe(data={}, overrides=[override])


def test_an_override_of_an_anchored_section_changes_that_place_only(tmp_path):
    """A YAML alias is the very mapping its anchor names: an override of the LLM's schedule had also changed the
    encoder's, which the recipe shares with it through `*sched`."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "optim:\n  branches:\n"
        "    llm: {lr: 1.0e-4, scheduler: &sched {type: warmup_cosine, warmup_steps: 500}}\n"
        "    encoder: {lr: 1.0e-5, scheduler: *sched}\n"
    )
    r = load_recipe(path, ["optim.branches.llm.scheduler.warmup_steps=10"])
    assert r.optim.branches["llm"].scheduler.warmup_steps == 10
    assert r.optim.branches["encoder"].scheduler.warmup_steps == 500


def test_yaml_1_1_spellings_that_change_a_value_are_refused(tmp_path):
    """None read as the text 'None' (a system prompt of that word); 010 as 8 and 12:30 as 750 (bases 8 and 60);
    yes/no/on/off as booleans, refused for a text field without saying why. Quoted, each is the text it says."""
    cases = {
        "model.prompt.system=None": "None is the text 'None' in YAML: write null",
        "train.seed=010": "train.seed: 010 reads as 8 in YAML .* write the number in decimal",
        "train.seed=12:30": "train.seed: 12:30 reads as 750 in YAML",
        "optim.branches.llm.lr=1:30": "optim.branches.llm.lr: 1:30 reads as 90 in YAML",
        "model.prompt.system=yes": r"model.prompt.system: expected a string, got True \(yes, no, on, off",
        # sections typed only when the model is built: the text they were written as is gone by then
        "model.encoder.conf.kernel_size=011": "model.encoder.conf.kernel_size: 011 reads as 9 in YAML",
        "model.prompt.template_kwargs={at: 12:30}": "model.prompt.template_kwargs.at: 12:30 reads as 750",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_recipe(data={}, overrides=[override])
    quoted = ["model.prompt.system='None'", "train.output_dir=0755", "train.seed=0", "model.prompt.task='yes'"]
    r = load_recipe(data={}, overrides=quoted)
    assert (r.model.prompt.system, r.train.output_dir, r.train.seed, r.model.prompt.task) == ("None", "0755", 0, "yes")
    from llmasr.config_io import dump_yaml, load_yaml

    dump_yaml(r, tmp_path / "saved.yaml")  # as RUN_DIR/recipe.yaml: the text None written quoted, read back as text
    assert load_yaml(tmp_path / "saved.yaml")["model"]["prompt"]["system"] == "None"
    (tmp_path / "f.yaml").write_text("model:\n  encoder:\n    frontend: {lfr_m: 07, n_mels: 80}\n")
    with pytest.raises(ConfigError, match="model.encoder.frontend.lfr_m: 07 reads as 7 in YAML"):
        load_recipe(tmp_path / "f.yaml")
    (tmp_path / "r.yaml").write_text("model:\n  prompt:\n    system: None\n")
    with pytest.raises(ConfigError, match=r"r.yaml: not valid YAML: None is the text 'None'"):
        load_recipe(tmp_path / "r.yaml")


def test_yaml_1_2_floats_are_numbers_and_a_quoted_number_is_text(tmp_path):
    """PyYAML (YAML 1.1) read 5e-4, 1.0e4 and -.5 as text, which a float field turned into a number: `lr: "5e-4"`
    passed as a number while `epochs: "2"` was refused, and `encoder.conf` (typed only when the model is built)
    kept the text '1e-4'. Unquoted, each is a number; quoted, a text, refused where a number is typed."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "model:\n  encoder:\n    conf: {dropout_rate: 1e-1, eps: 5E-4, shift: -.5, big: 1.0e4, name: '1e5'}\n"
        "optim:\n  weight_decay: 1E-3\n  branches:\n    llm: {lr: 5e-4}\n"
    )
    r = load_recipe(path, ["optim.branches.llm.lr=1e-4"])
    assert (r.optim.weight_decay, r.optim.branches["llm"].lr) == (1e-3, 1e-4)
    conf = r.model.encoder.conf
    assert conf == {"dropout_rate": 0.1, "eps": 5e-4, "shift": -0.5, "big": 1e4, "name": "1e5"}
    assert type(conf["name"]) is str
    for where, text in (("train", 'epochs: "2"'), ("optim", "weight_decay: '5e-4'"), ("train", 'seed: "0"')):
        path.write_text(f"model:\n  prompt: {{task: hi}}\n{where}:\n  {text}\n")
        key, number = text.split(": ")
        number = number.strip("'\"")
        with pytest.raises(ConfigError) as err:
            load_recipe(path)
        assert str(err.value) == (
            f"{where}.{key}: expected {'an integer' if key != 'weight_decay' else 'a number'}, got the text "
            f"'{number}': the quotes make it text; write the number without them, {key}: {number} ({path}, line 4)"
        )
    with pytest.raises(ConfigError) as err:
        load_recipe(data={}, overrides=["optim.branches.llm.lr='5e-4'"])
    assert str(err.value).endswith(
        "(set by the override \"optim.branches.llm.lr='5e-4'\"; write optim.branches.llm.lr=5e-4)"
    )
    path.write_text("optim:\n  scheduler: {type: tri_stage, phase_ratio: [0.3, '0.3', 0.4]}\n")
    with pytest.raises(ConfigError, match=r"optim.scheduler.phase_ratio\[1\]: .*without them, 0.3 \("):
        load_recipe(path)  # (a list item is written as itself)


def test_text_that_reads_as_a_number_stays_text_in_a_string_field(tmp_path):
    """A prompt, a folder or a file named 1e5 (a number in YAML 1.2) is the text as written, quoted or not, beside
    the recipe where it is a path there; RUN_DIR/recipe.yaml writes such text quoted, so it reads back as text."""
    (tmp_path / "1e3").mkdir()
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  llm: {path: 1e3}\n  prompt: {task: 1e5, system: '2.5e-3'}\ntrain:\n  output_dir: 1E4\n")
    r = load_recipe(path, ["model.encoder.conf.name='-1e3'"])
    assert (r.model.llm.path, r.model.prompt.task, r.model.prompt.system) == (str(tmp_path / "1e3"), "1e5", "2.5e-3")
    assert r.train.output_dir == "1E4" and r.model.encoder.conf == {"name": "-1e3"}
    save_recipe(r, tmp_path / "saved.yaml")
    again = load_recipe(tmp_path / "saved.yaml", saved=True)
    assert (again.model.prompt.task, again.model.encoder.conf["name"]) == ("1e5", "-1e3")


def test_an_error_says_where_its_value_was_set(tmp_path):
    """A bad value is named by its key, and by the recipe line or the override that set it (the same key could come
    from either, and a recipe may be long)."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "train:\n  seed: 0\n  epochs: many\ndata:\n  train:\n  - a.jsonl\n  - {path: b.jsonl, weight: -1}\n"
    )
    with pytest.raises(ConfigError, match=rf"^train.epochs: expected an integer, got 'many' \({path}, line 3\)$"):
        load_recipe(path)
    with pytest.raises(
        ConfigError, match=r"^train.epochs: expected an integer, got 'few' \(set by the override 'train.e"
    ):
        load_recipe(path, ["train.epochs=few"])
    with pytest.raises(
        ConfigError, match=rf"^data.train\[1\]: .* fits none of ManifestSpec \| str \({path}, line 7\):\n"
    ):
        load_recipe(path, ["train.epochs=2"])
    with pytest.raises(
        ConfigError, match=r"^optim.branches.enc: unknown branch;.*\(set by the override 'optim.branches.enc.lr=1'\)$"
    ):
        load_recipe(path, ["train.epochs=2", "data.train=[a.jsonl]", "optim.branches.enc.lr=1"])
    path.write_text("train:\n  seed: 0\n  bogus: 1\n")  # the file's (the key's own line), not the override's
    with pytest.raises(ConfigError, match=rf"^train: unknown key\(s\) \['bogus'\]; .* \({path}, line 3\)$"):
        load_recipe(path, ["train.epochs=2"])
    with pytest.raises(ConfigError, match=r"^train.best_mode: min ranks acc the wrong way round.*best_mode unset$"):
        load_recipe(data={"train": {"best_metric": "acc", "best_mode": "min"}})  # no file: no line to name


def test_a_saved_run_with_a_schedule_field_its_type_does_not_read_still_loads(tmp_path, caplog):
    """A new recipe refuses final_lr_scale on warmup_cosine (it changes nothing); a run saved before that refusal
    loads with the field dropped and a warning, on the same schedule, so that it still resumes and exports."""
    (tmp_path / "llm").mkdir()
    (tmp_path / "train.jsonl").write_text("")
    data = {
        "model": {"llm": {"path": str(tmp_path / "llm")}},
        "data": {"train": [str(tmp_path / "train.jsonl")]},
        "optim": {"scheduler": {"type": "warmup_cosine", "warmup_steps": 5, "final_lr_scale": 0.05,
                                "init_lr_scale": 0.01},  # its default, as every saved recipe writes it: no warning
                  "branches": {"llm": {"lr": 1e-4, "scheduler": {"type": "constant", "min_lr_ratio": 0.1}}}},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match="min_lr_ratio: only used by type warmup_cosine or warmup_linear, not constant"
    ):
        load_recipe(path)
    with caplog.at_level("WARNING"):
        r = load_recipe(path, saved=True)
    assert r.optim.scheduler.warmup_steps == 5 and r.optim.branches["llm"].scheduler.type == "constant"
    assert "optim.scheduler.final_lr_scale: only used by type tri_stage, not warmup_cosine; dropped" in caplog.text
    assert (
        "optim.branches.llm.scheduler.min_lr_ratio: only used by type warmup_cosine or warmup_linear, not constant; "
        "dropped" in caplog.text
    )
    assert "init_lr_scale" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # a run's own saved recipe, defaults written out, reads back without a word
        save_recipe(r, tmp_path / "saved.yaml")
        load_recipe(tmp_path / "saved.yaml", saved=True)
    assert "dropped" not in caplog.text


def test_a_run_an_older_llmasr_let_keep_true_phrases_past_list_size_still_reads(tmp_path, caplog):
    """That llmasr drew such lists (longer than list_size) and wrote the values into RUN_DIR/recipe.yaml; this one
    refuses them, and export and decode of the run (which draw no list) had been refused with them. The saved recipe
    reads true_phrases at list_size's maximum, with a warning, as the refusal leads a resumed recipe to set it."""
    (tmp_path / "train.jsonl").write_text("")
    hot = {"enable": True, "true_phrases": [1, 4], "list_size": [2, 3]}
    data = {"model": {"llm": {"path": str(tmp_path / "llm")}},
            "data": {"train": [str(tmp_path / "train.jsonl")], "hotwords": hot}}  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"true_phrases: up to 4 reference phrases a list, but data.hotwords"):
        load_recipe(path)
    with caplog.at_level("WARNING"):
        r = load_recipe(path, saved=True)
    assert r.data.hotwords.true_phrases == [1, 3] and r.data.hotwords.list_size == [2, 3]
    assert ("data.hotwords.true_phrases [1, 4] goes past list_size [2, 3], which an older llmasr let a run keep (its "
            "lists held up to 4 phrases): read as true_phrases [1, 3]") in caplog.text  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING"):  # a run this llmasr saved reads back without a word
        save_recipe(r, tmp_path / "saved.yaml")
        assert load_recipe(tmp_path / "saved.yaml", saved=True).data.hotwords.true_phrases == [1, 3]
    assert "true_phrases" not in caplog.text


def test_an_override_value_starting_with_an_anchor_is_refused(tmp_path):
    """YAML takes `&NAME` off a value as an anchor: `model.prompt.task=&x y` had set the task to "y"."""
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  prompt: {task: hi}\n")
    with pytest.raises(ConfigError, match=r"^override 'model.prompt.task=&x y': YAML reads &NAME as an anchor"):
        load_recipe(path, ["model.prompt.task=&x y"])
    assert load_recipe(path, ["model.prompt.task='&x y'"]).model.prompt.task == "&x y"
    assert load_recipe(path, ["model.prompt.task=a &x y"]).model.prompt.task == "a &x y"


def test_a_date_is_read_as_its_text(tmp_path):
    """YAML 1.1 reads 2026-01-02 as a date: train.output_dir=2026-01-02 had been refused as "expected a string, got
    datetime.date(2026, 1, 2)"."""
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  prompt: {task: 2026-01-02 12:00:00}\n")
    r = load_recipe(path, ["train.output_dir=2026-01-02"])
    assert r.train.output_dir == "2026-01-02" and r.model.prompt.task == "2026-01-02 12:00:00"
    with pytest.raises(ConfigError, match=r"^train.epochs: expected an integer, got '2026-01-02'"):
        load_recipe(path, ["train.epochs=2026-01-02"])


def test_an_unknown_section_says_where_it_was_set(tmp_path):
    """A misspelt section (`trian:`) is named by the recipe's line or the override, as a misspelt key inside a
    section is (the error had named neither the file nor the override)."""
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 2\n\ntrian:\n  seed: 0\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith("top level: unknown key(s) ['trian']; did you mean 'train'?")
    assert str(err.value).endswith(f"({path}, line 4)")
    path.write_text("train:\n  epochs: 2\n")
    with pytest.raises(
        ConfigError, match=r"^top level: unknown key\(s\) \['trian'\];.* \(set by the override 'trian.seed=0'\)$"
    ):
        load_recipe(path, ["train.epochs=3", "trian.seed=0"])


def test_an_override_names_a_list_item_as_errors_name_it(tmp_path):
    """`data.train[1].weight=5`, the key an error names, had been refused as an unknown key 'train[1]' of data (and
    `data.train.1.weight`, OmegaConf's spelling, as "data.train is a value"): a list item could not be set."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "data:\n  train:\n    - {path: a.jsonl}\n    - {path: b.jsonl, weight: 2}\noptim:\n  betas: [0.9, 0.999]\n"
    )
    for key in ("data.train[1].weight", "data.train.1.weight"):
        r = load_recipe(path, [f"{key}=5", "optim.betas[1]=0.98"])
        assert [(m.path, m.weight) for m in r.data.train] == [("a.jsonl", 1.0), ("b.jsonl", 5.0)]
        assert r.optim.betas == [0.9, 0.98]
        with pytest.raises(ConfigError, match=rf"^data.train\[1\]: .* \(set by the override '{re.escape(key)}=-1'\):"):
            load_recipe(path, [f"{key}=-1"])
    for override, message in [
        ("data.train[2].weight=1", r"data.train\[2\] is past the end of a list of 2"),
        ("data.train.weight=1", r"data.train is a list: name an item, data.train\[0\].weight"),
        ("data.valid[0]=a.jsonl", r"data.valid is no list here: set the whole list \(data.valid=\[...\]\)"),
        ("optim.betas[0].x=1", r"optim.betas\[0\] is a value, not a section"),
        ("train..epochs=3", r"'train..epochs' is no key"),
    ]:
        with pytest.raises(ConfigError, match=rf"^override '{re.escape(override)}': {message}"):
            load_recipe(path, [override])


def test_an_unknown_key_suggests_the_nearest_known_one(tmp_path):
    """A typo's nearest known key is named first (it had only been somewhere in the list of every known key), and
    where the typo was written still follows the key; a key near nothing gets no suggestion."""
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochz: 3\n  grad_acum: 2\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith(
        "train: unknown key(s) ['epochz', 'grad_acum']; did you mean 'epochs', 'grad_accum'?"
    )
    assert str(err.value).endswith(f"({path}, line 2)")  # the first unknown key's own line
    with pytest.raises(ConfigError) as err:
        load_recipe(data={}, overrides=["decode.zzzz=1"])
    assert "did you mean" not in str(err.value) and "(set by the override 'decode.zzzz=1')" in str(err.value)


def test_a_yaml_error_names_the_recipe_at_its_mark_and_a_tab_is_explained(tmp_path):
    """PyYAML's marks had said `in "<unicode string>", line 3` (the file was named only before them), and a tab
    indent (an editor's) was told only that '\\t' cannot start any token."""
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 2\n\tgrad_accum: 1\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "<unicode string>" not in message and f'in "{path}", line 3, column 1' in message
    assert message.endswith("YAML indents with spaces only: replace the tab at that line with spaces")
    path.write_text("train:\n  grad_accum: [1\n  epochs: 2\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert f'in "{path}", line 2, column 15' in str(err.value) and "tab" not in str(err.value)


def test_an_empty_section_is_named_as_empty(tmp_path):
    """`prompt:` with nothing under it was refused as "expected a mapping for PromptConfig, got NoneType None": a
    Python class the recipe never names."""
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  llm: {path: llm}\n  prompt:\ntrain:\n  epochs: 1\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value) == f"model.prompt: empty section: give its keys or remove it ({path}, line 3)"
    path.write_text("model:\n  llm: {path: llm}\ntrain:\n  epochs: 1\n")
    assert load_recipe(path).model.prompt.task  # removed: its defaults


def test_a_saved_recipe_reads_its_numbers_as_the_recipe_does(tmp_path):
    """RUN_DIR/recipe.yaml was read with plain YAML 1.1 on resume while the recipe reads YAML 1.2's floats: a
    free-form `model.encoder.conf` value written 1e-1 (as an earlier llmasr saved it: text) was text on one side and
    a number on the other, and the resume was refused for a key nobody changed."""
    from llmasr.recipe import load_recipe
    from llmasr.train import resume_recipe as rr

    text = "model:\n  encoder:\n    conf: {dropout_rate: 1e-1}\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text, encoding="utf-8")
    r = load_recipe(recipe)
    assert r.model.encoder.conf["dropout_rate"] == 0.1
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text(text, encoding="utf-8")
    assert rr.check_resume_recipe(r, run / "checkpoints") == []


def test_a_misspelled_branch_is_located_at_its_own_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  branches:\n    llm: {lr: 1.0e-4}\n    encodr: {lr: 1.0e-5}\n")
    with pytest.raises(ConfigError, match=rf"^optim.branches.encodr: unknown branch; .*'llm'\] \({path}, line 4\)$"):
        load_recipe(path)


def test_a_recipe_dict_built_in_python_takes_pathlib_paths(tmp_path):
    """A notebook's `{"data": {"train": [Path(...)]}}` had been refused: "expected a string, got PosixPath"."""
    recipe = load_recipe(
        data={
            "data": {"train": [tmp_path / "a.jsonl", {"path": tmp_path / "b.jsonl"}]},
            "train": {"output_dir": tmp_path},
        }
    )
    assert [spec.path for spec in recipe.data.train] == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert recipe.train.output_dir == str(tmp_path)
