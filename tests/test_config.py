from pathlib import Path

import pytest

from tamis.config import ConfigError, apply_overrides, config_from_dict, load_config

VALID = {
    "pool": {"path": "data/pool.jsonl"},
    "embedding": {"output": "out/emb", "max_length": 256},
}


def test_valid_config_gets_typed_defaults():
    config = config_from_dict(VALID)
    assert config.pool.path == "data/pool.jsonl"
    assert config.pool.template == "plain"
    assert config.embedding.max_length == 256
    assert config.embedding.pooling == "weighted_mean"
    assert config.embedding.normalize is True
    assert config.runner.name == "local"
    assert config.to_dict()["embedding"]["output"] == "out/emb"


def _error(data) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return str(info.value)


def test_unknown_key_names_its_path_and_suggests():
    message = _error({**VALID, "embedding": {"output": "x", "max_lenght": 3}})
    assert message.startswith("embedding.max_lenght: unknown key")
    assert "did you mean 'max_length'" in message


def test_unknown_section():
    assert _error({**VALID, "pooling": {}}).startswith("pooling: unknown key")


def test_wrong_type_names_the_key():
    message = _error({**VALID, "embedding": {"max_length": "long"}})
    assert message.startswith("embedding.max_length: expected int")
    assert _error({**VALID, "embedding": {"normalize": "yes"}}).startswith(
        "embedding.normalize: expected bool"
    )
    assert _error({**VALID, "embedding": {"pooling": "max"}}).startswith(
        "embedding.pooling: expected one of 'weighted_mean'"
    )
    assert _error({**VALID, "runner": {"beam_args": [1]}}).startswith("runner.beam_args[0]")


def test_missing_required_key():
    assert _error({"pool": {"text_field": "t"}}) == "pool.path: required key missing"
    assert _error({**VALID, "queries": {"tech": {}}}).startswith("queries.tech: give exactly one")
    # Whether a stage needs a budget is the selector's to say: checked before any work.
    from tamis.pipelines.select import plan_selection

    config = config_from_dict({**VALID, "selection": {"selector": "rds", "output": "out/s"}})
    with pytest.raises(ConfigError, match=r"^selection.budget: required key missing$"):
        plan_selection(config)


def test_value_checks():
    assert _error({**VALID, "embedding": {"max_length": 0}}).startswith("embedding.max_length")
    assert _error({**VALID, "index": {"nprobe": 0}}) == "index.nprobe: must be >= 1, got 0"
    assert _error({**VALID, "index": {"device": "tpu"}}).startswith("index.device: expected")
    dataflow = {**VALID, "runner": {"name": "dataflow", "project": "p", "region": "r"}}
    assert _error(dataflow) == "runner.temp_location: required when runner.name is 'dataflow'"


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("pool: {path: a.jsonl}\nembedding: {output: out}\n")
    config = load_config(
        path,
        [
            "embedding.max_length=64",
            "embedding.normalize=false",
            "runner.num_workers=2",
            "pool.path=[a.jsonl, b.jsonl]",
        ],
    )
    assert config.embedding.max_length == 64
    assert config.embedding.normalize is False
    assert config.runner.num_workers == 2
    assert config.pool.path == ["a.jsonl", "b.jsonl"]


def test_override_errors_name_the_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("pool: {path: a.jsonl}\n")
    with pytest.raises(ConfigError, match=r"^embedding.max_length: expected int"):
        load_config(path, ["embedding.max_length=abc"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(path, ["embedding.max_length"])
    with pytest.raises(ConfigError, match="pool.path: cannot set 'pool.path.x'"):
        apply_overrides({"pool": {"path": "a"}}, ["pool.path.x=1"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_quickstart_config_is_valid():
    config = load_config(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    assert config.embedding.model == "default"
    assert config.embedding.output


def test_every_example_config_is_valid():
    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/*.yaml")))
def test_shipped_example_configs_load_and_their_stages_validate(path):
    from tamis.pipelines.select import plan_selection

    config = load_config(str(path))
    if config.selection is not None or config.recipe is not None:
        plan_selection(config)  # selectors, parameters and budget forms


def test_overrides_step_into_lists_and_refuse_bad_yaml():
    from tamis.config import apply_overrides

    data = {"recipe": {"stages": [{"selector": "a"}, {"selector": "b", "params": {}}]}}
    apply_overrides(data, ["recipe.stages[1].params.k=3", "recipe.stages[0].budget=10%"])
    assert data["recipe"]["stages"] == [
        {"selector": "a", "budget": "10%"},
        {"selector": "b", "params": {"k": 3}},
    ]
    for bad, message in (
        ("recipe.stages[5].x=1", r"^recipe.stages\[5\]: cannot set .*no such list item$"),
        ("recipe.stages.x=1", r"^recipe.stages: cannot set 'recipe.stages.x', not a mapping$"),
        ("x=[unclosed", r"^--set 'x=\[unclosed': the value is not valid YAML \(expected"),
        ("recipe..a=1", r"bad key '' in 'recipe..a'"),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            apply_overrides(data, [bad])
        assert "\n" not in str(info.value)


def test_make_output_dir_names_the_key_and_the_file_in_the_way(tmp_path):
    from tamis.config import make_output_dir

    make_output_dir(str(tmp_path / "a" / "b"), "embedding.output")
    assert (tmp_path / "a" / "b").is_dir()
    make_output_dir(str(tmp_path / "a" / "b"), "embedding.output")  # exists: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=rf"^embedding.output: {tmp_path / 'file'} is a file"):
        make_output_dir(str(tmp_path / "file"), "embedding.output")
    under = tmp_path / "file" / "sub" / "dir"
    with pytest.raises(
        ConfigError,
        match=rf"^output: cannot create the directory {under}: {tmp_path / 'file'} is a file",
    ):
        make_output_dir(str(under), "output")
    make_output_dir("gs://bucket/out", "embedding.output")  # remote: left to the caller
