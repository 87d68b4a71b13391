"""One name for a manifest among several: training's `valid[NAME]` and the OUTPUT/NAME/ folder of `llmasr decode`."""

from llmasr.data.manifest_names import set_names


def test_set_names():
    assert set_names(["/d/dev_clean.jsonl", "/d/dev_other.jsonl.gz"]) == ["dev_clean", "dev_other"]
    assert set_names(["/d/clean/dev.jsonl", "/d/other/dev.jsonl", "/e/x.jsonl"]) == ["clean/dev", "other/dev", "x"]
    assert set_names(["/a/in/dev.jsonl", "/b/in/dev.jsonl"]) == ["a/in/dev", "b/in/dev"]
    assert set_names(["/d/my dev.jsonl", "/d/dev.v2.jsonl"]) == ["my_dev", "dev.v2"]  # log lines split on spaces
    assert set_names(["/d/dev.jsonl", "/d/dev.jsonl.gz"]) == ["dev#0", "dev#1"]  # data.valid's places
    # folders grow a name only while they tell it apart from another path's: not /home/.../dev#0 for a decode folder
    tied = ["/d/a/dev.jsonl", "/d/a/dev.jsonl.gz", "/d/b/dev.jsonl", "/d/x.jsonl"]
    assert set_names(tied) == ["a/dev#0", "a/dev#1", "b/dev", "x"]
    assert set_names(["/d/dev.list", "/d/test.scp.gz"]) == ["dev", "test"]  # every manifest extension goes


def test_a_name_is_a_folder_path_under_the_output():
    """out_dirs nests a name's folders under OUTPUT: no part of one is empty, . or .., whatever the paths."""
    names = set_names(["/d/./a/../dev.jsonl", "d//dev.jsonl", "../dev.jsonl", "/.jsonl", "/x/.jsonl"])
    assert len(set(names)) == len(names)
    assert all(p not in ("", ".", "..") for name in names for p in name.split("/")), names
