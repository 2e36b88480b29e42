"""Turn `runner:` config plus extra command-line flags into a Beam runner and its options.

Locally tamis uses FnApiRunner directly: Beam's default DirectRunner first tries to download
a Prism binary, which fails offline. `runner.num_workers > 1` runs FnApiRunner with that
many worker processes (multi_processing).
"""

from __future__ import annotations

import re
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from tamis.config import ConfigError, RunnerConfig

# "nvidia-tesla-t4:1" or "nvidia-l4" (count 1)
_ACCELERATOR = re.compile(r"^(?P<type>[a-z0-9-]+)(?::(?P<count>\d+))?$")


def accelerator_service_option(accelerator: str) -> str:
    """Dataflow's worker_accelerator service option for a GPU spec like 'nvidia-l4:1'."""
    match = _ACCELERATOR.match(accelerator)
    if not match:
        raise ConfigError(
            f"runner.accelerator: expected TYPE[:COUNT] like 'nvidia-tesla-t4:1', got "
            f"{accelerator!r}"
        )
    count = int(match["count"] or 1)
    return f"worker_accelerator=type:{match['type']};count:{count};install-nvidia-driver"


def _flag(name: str, value: Any) -> list[str]:
    return [] if value is None else [f"--{name}={value}"]


def runner_flags(cfg: RunnerConfig, job_name: str | None = None) -> list[str]:
    """Beam command-line flags for the configured runner (before the user's own flags)."""
    if cfg.name == "local":
        flags = ["--direct_num_workers", str(cfg.num_workers)]
        mode = "multi_processing" if cfg.num_workers > 1 else "in_memory"
        flags += ["--direct_running_mode", mode]
        return flags
    if cfg.name == "dataflow":
        flags = ["--runner=DataflowRunner"]
        flags += _flag("project", cfg.project)
        flags += _flag("region", cfg.region)
        flags += _flag("temp_location", cfg.temp_location)
        flags += _flag("staging_location", cfg.staging_location)
        flags += _flag("machine_type", cfg.machine_type)
        flags += _flag("max_num_workers", cfg.max_num_workers)
        flags += _flag("num_workers", cfg.num_workers if cfg.num_workers > 1 else None)
        flags += _flag("sdk_container_image", cfg.sdk_container_image)
        flags += _flag("requirements_file", cfg.requirements_file)
        flags += _flag("setup_file", cfg.setup_file)
        flags += _flag("job_name", cfg.job_name or job_name)
        if cfg.accelerator:
            flags += ["--dataflow_service_options", accelerator_service_option(cfg.accelerator)]
        return flags
    if cfg.name == "flink":
        return [
            "--runner=FlinkRunner",
            *_flag("flink_master", cfg.master),
            *_flag("parallelism", cfg.num_workers),
        ]
    if cfg.name == "spark":
        return ["--runner=SparkRunner", *_flag("spark_master_url", cfg.master)]
    raise ConfigError(f"runner.name: unknown runner {cfg.name!r}")


def make_runner(cfg: RunnerConfig, beam_args: list[str] | None = None, job_name: str | None = None):
    """Return (runner or None, PipelineOptions). None lets Beam pick the runner from --runner."""
    flags = runner_flags(cfg, job_name) + list(cfg.beam_args) + list(beam_args or [])
    options = PipelineOptions(flags)
    runner = None
    if cfg.name == "local" and not any(f.startswith("--runner") for f in flags):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        runner = FnApiRunner()
    return runner, options
