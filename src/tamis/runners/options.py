"""Turn `runner:` config plus extra command-line flags into a Beam runner and its options.

Locally tamis uses FnApiRunner directly: Beam's default DirectRunner first tries to download
a Prism binary, which fails offline. `runner.num_workers > 1` runs FnApiRunner with that
many worker processes (as Beam's multi_processing mode, through `tamis.runners.sdk_worker`).
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


def beam_option_names() -> set[str]:
    """Every --flag of the PipelineOptions classes Beam has loaded (runners' included)."""
    import argparse

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    parser = argparse.ArgumentParser(conflict_handler="resolve", add_help=False)
    for cls in set(subclasses(PipelineOptions)):
        try:
            cls._add_argparse_args(parser)
        except Exception:  # noqa: BLE001 (a third-party options class; its flags go unchecked)
            continue
    return {f for a in parser._actions for f in a.option_strings if f.startswith("--")}


def check_beam_flags(flags: list[str], own_flags: list[str]) -> None:
    """Flags tamis does not take go to Beam; one that neither knows is a typo: refused with
    the closest name (Beam itself would ignore it, e.g. a mistyped --strict)."""
    import difflib

    known = beam_option_names()
    for flag in flags:
        if not flag.startswith("--"):
            continue
        name = flag.split("=", 1)[0]
        if name in known:
            continue
        close = difflib.get_close_matches(name, [*own_flags, *sorted(known)], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"unknown flag {name} (not a tamis or Beam option){hint}")


def _flag(name: str, value: Any) -> list[str]:
    return [] if value is None else [f"--{name}={value}"]


def runner_flags(cfg: RunnerConfig, job_name: str | None = None) -> list[str]:
    """Beam command-line flags for the configured runner (before the user's own flags)."""
    if cfg.name == "local":
        # More than one worker: worker processes, started by make_runner's environment.
        return ["--direct_num_workers", str(cfg.num_workers)]
    if cfg.name == "dask":
        return []  # the runner object is make_runner's (dask_cluster.dask_runner)
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

        runner = FnApiRunner(default_environment=_worker_environment(cfg.num_workers))
    elif cfg.name == "dask":
        from tamis.runners.dask_cluster import dask_runner

        runner = dask_runner(cfg)
    return runner, options


def _worker_environment(num_workers: int):
    """Several workers: subprocesses running tamis's wrapper of Beam's harness (what
    ``--direct_running_mode multi_processing`` starts, quiet when interrupted); one: None,
    Beam's in-process worker."""
    if num_workers <= 1:
        return None
    import sys

    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    command = f"exec {sys.executable} -m tamis.runners.sdk_worker"
    return SubprocessSDKEnvironment.from_command_string(command_string=command)
