"""The real Dataflow job, built offline with DataflowRunner --dry_run=True --no_auth."""

import pytest

from conftest import write_jsonl
from tamis.config import ConfigError, config_from_dict
from tamis.pipelines.embed import run_embed
from tamis.runners.options import accelerator_service_option

pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
pytest.importorskip("google.cloud.storage", reason="needs apache-beam[gcp] (the dataflow extra)")

RUNNER = {
    "name": "dataflow",
    "project": "tamis-test-project",
    "region": "us-central1",
    "temp_location": "gs://tamis-test-bucket/tmp",
    "machine_type": "n1-standard-8",
    "accelerator": "nvidia-tesla-t4:1",
    "max_num_workers": 8,
    "sdk_container_image": "us-docker.pkg.dev/tamis-test-project/tamis/worker:0.1",
}


def _config(pool, output="gs://tamis-test-bucket/emb", **runner):
    return config_from_dict(
        {
            "pool": {"path": str(pool)},
            "embedding": {"output": output, "dtype": "bfloat16", "device": "cuda"},
            "runner": {**RUNNER, **runner},
        }
    )


@pytest.mark.slow
def test_dry_run_builds_the_embed_job_with_gpu_options(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "text": "hello"}])
    result = run_embed(_config(pool), ["--dry_run=True", "--no_auth"])
    job = result.job
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for stage in [
        "ListInputs",
        "ReadAndValidate",
        "GroupShards",
        "EncodeAndWrite",
        "WriteManifest",
    ]:
        assert stage in names
    options = job.options.get_all_options()
    assert options["runner"] == "DataflowRunner"
    assert options["project"] == "tamis-test-project"
    assert options["region"] == "us-central1"
    assert options["machine_type"] == "n1-standard-8"
    assert options["max_num_workers"] == 8
    assert options["sdk_container_image"].endswith("worker:0.1")
    assert options["dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    ]
    # A dry run touches no output.
    assert not list(tmp_path.glob("*.json"))


def test_dataflow_refuses_local_paths_before_submitting(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "text": "hello"}])
    with pytest.raises(ConfigError, match="pool.path: Dataflow workers cannot read"):
        run_embed(_config(pool), ["--no_auth"])
    with pytest.raises(ConfigError, match="embedding.output: Dataflow workers"):
        run_embed(_config(pool, output=str(tmp_path / "out")), ["--no_auth"])


def test_accelerator_spec():
    assert accelerator_service_option("nvidia-l4") == (
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    )
    with pytest.raises(ConfigError, match="runner.accelerator"):
        accelerator_service_option("two gpus")
