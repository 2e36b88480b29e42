"""Typed job configuration: YAML -> dataclasses, `--set` overrides, validation with key paths.

Every problem is reported before any work starts, as a `ConfigError` whose message begins
with the dotted path of the offending key (``embedding.max_length: expected int, got 'abc'``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key path."""


@dataclass
class PoolConfig:
    """The pool of examples: where it is and how a record becomes text."""

    path: str | list[str]
    text_field: str = "text"
    messages_field: str = "messages"
    id_field: str = "id"
    # plain: "role: content" lines; tulu: the Tulu chat format of the RDS+ reference;
    # chat: the tokenizer's own chat template.
    template: Literal["plain", "tulu", "chat"] = "plain"
    format: Literal["auto", "jsonl", "parquet", "hf"] = "auto"
    # First bad record raises an error naming it instead of going to rejected.jsonl.
    strict: bool = False


@dataclass
class EmbeddingConfig:
    model: str = "default"
    pooling: Literal["weighted_mean", "mean", "last_token", "cls"] = "weighted_mean"
    layer: int = -1
    normalize: bool = True
    max_length: int = 512
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Length-sorted batches are capped by padded tokens and by examples. None = by device:
    # 2048 on CPU (measured fastest for MiniLM on 2 cores), 32768 on CUDA.
    max_tokens_per_batch: int | None = None
    max_batch_size: int = 128
    # Records per output shard (the unit of resumption).
    shard_size: int = 5000
    # Serve one model copy to all worker processes of a machine (large models).
    share_model_across_processes: bool = False
    # A hub id is only fetched when this is true; by default everything runs offline.
    allow_download: bool = False
    trust_remote_code: bool = False
    output: str | None = None


@dataclass
class QuerySource:
    """One target task: example records embedded like the pool, or embeddings made earlier."""

    path: str | None = None
    embeddings: str | None = None


@dataclass
class IndexConfig:
    """The FAISS index that selectors search (cet mines its candidates with it)."""

    factory: str = "Flat"  # any FAISS factory string: "Flat" (exact), "IVF4096,Flat", "HNSW32"
    device: Literal["auto", "cpu", "gpu"] = "auto"  # GPU when FAISS sees one
    nprobe: int | None = None  # IVF lists visited per query
    ef_search: int | None = None  # HNSW search beam
    train_size: int = 100_000  # vectors sampled to train IVF / PQ indexes
    batch_size: int = 4096  # queries per search call


@dataclass
class SelectionConfig:
    selector: str
    # A count, a fraction or "N%" (required by select stages; filter and weight stages keep
    # all that pass without one; cet keeps params.negatives_per_query per query).
    budget: int | float | str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    join_records: bool = False
    seed: int = 0
    # Drop exact duplicates (same rendered text) before selecting; the first one is kept.
    deduplicate: bool = False
    # A pool column holding a label to compare with task names (demos and evaluation):
    # the summary then says how many of each task's picks carry that task's label.
    label_field: str | None = None
    # Run on Beam workers (selectors that have a Beam form); always so on non-local runners.
    distributed: bool = False
    output: str | None = None
    # An earlier subset dir: only its ids are candidates and their weights carry on (this
    # stage's weights multiply them), as in a recipe.
    candidates: str | None = None


@dataclass
class RecipeStageConfig:
    """One stage of a recipe: the selection keys, without output (the recipe names it)."""

    selector: str
    name: str | None = None  # default: the selector's name; names must be unique
    budget: int | float | str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    join_records: bool = False  # the stage's own subset dir; the final subset is joined
    seed: int = 0
    deduplicate: bool = False
    label_field: str | None = None
    distributed: bool = False


@dataclass
class RecipeConfig:
    """Stages chained over one pool: stage k's candidates are the ids stage k-1 kept."""

    stages: list[RecipeStageConfig]
    output: str | None = None  # NN-name/ per stage, the final subset and the funnel
    join_records: bool = True  # the final subset carries the pool records' fields


@dataclass
class RunnerConfig:
    name: Literal["local", "dask", "dataflow", "flink", "spark"] = "local"
    num_workers: int = 1
    # Dask: the scheduler of a running dask.distributed cluster ("tcp://host:8786"); without
    # it a LocalCluster of num_workers processes is started for the job and closed after.
    dask_address: str | None = None
    # Dataflow
    project: str | None = None
    region: str | None = None
    temp_location: str | None = None
    staging_location: str | None = None
    machine_type: str | None = None
    max_num_workers: int | None = None
    # e.g. "nvidia-tesla-t4:1" -> worker_accelerator service option with driver install
    accelerator: str | None = None
    sdk_container_image: str | None = None
    requirements_file: str | None = None
    setup_file: str | None = None
    job_name: str | None = None
    # Flink / Spark
    master: str | None = None
    # Any further Beam flags, e.g. ["--experiments=use_runner_v2"].
    beam_args: list[str] = field(default_factory=list)


@dataclass
class ScalingFitConfig:
    """Fix the shared scale a and/or floor d of the scaling law (else they are fitted)."""

    a: float | None = None
    d: float | None = None


@dataclass
class ScalingConfig:
    """`tamis scaling fit|plan`: observations of small runs -> fit.json -> a filtering plan."""

    observations: str | None = None  # CSV/Parquet/JSONL: bucket, samples_seen, error|accuracy
    pool_size: int | float | str | None = None  # samples per bucket ("12.8M") without a column
    fit: ScalingFitConfig = field(default_factory=ScalingFitConfig)
    compute: list[int | float | str] = field(default_factory=list)  # budgets: 32M, 1.28B
    z: float = 1e5
    output: str | None = None  # fit.json, plan.csv, plan.json, plan.png


@dataclass
class Config:
    pool: PoolConfig | None = None
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    queries: dict[str, QuerySource] = field(default_factory=dict)
    index: IndexConfig = field(default_factory=IndexConfig)
    selection: SelectionConfig | None = None
    recipe: RecipeConfig | None = None
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    scaling: ScalingConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (dataclasses built)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, path)
            except ConfigError as err:
                errors.append(err)
        # A nested dataclass error is more useful than "expected X or null".
        nested = [e for e in errors if not str(e).startswith(f"{path}: expected")]
        if nested:
            raise nested[0]
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, value_tp = typing.get_args(tp)
        return {str(k): _convert(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected str, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {path}")


def build_dataclass(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and missing required ones."""
    where = path or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(fields)
            raise ConfigError(f"{_join(path, key)}: unknown key{hint}; known keys: {known}")
    kwargs = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key_path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: required key missing")
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


_KEY_STEP = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")


def _override_path(dotted: str, item: str) -> list[str | int]:
    """`recipe.stages[1].params.k` -> ["recipe", "stages", 1, "params", "k"]."""
    path: list[str | int] = []
    for part in dotted.strip().split("."):
        match = _KEY_STEP.match(part)
        if not match:
            raise ConfigError(f"--set {item!r}: bad key {part!r} in {dotted!r}")
        path.append(match[1])
        path += [int(i) for i in re.findall(r"\[(\d+)\]", match[2])]
    return path


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's text spans lines)."""
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=v` overrides (v parsed as YAML) to a raw config mapping; `a.b[i].c`
    steps into the i-th item of a list (e.g. a recipe's stages)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        dotted, raw = item.split("=", 1)
        path = _override_path(dotted, item)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML ({yaml_problem(err)})"
            ) from None
        node: Any = data
        for depth, key in enumerate(path[:-1]):
            where = _path_text(path[: depth + 1])
            if isinstance(key, int):
                if not isinstance(node, list) or not -len(node) <= key < len(node):
                    raise ConfigError(f"{where}: cannot set {dotted!r}, no such list item")
                child = node[key]
            else:
                child = node.get(key)
                if child is None:
                    child = node[key] = {}
            if not isinstance(child, dict | list):
                raise ConfigError(f"{where}: cannot set {dotted!r}, {where} is not a mapping")
            node = child
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not -len(node) <= last < len(node):
                raise ConfigError(f"{_path_text(path)}: cannot set {dotted!r}, no such list item")
        elif not isinstance(node, dict):
            raise ConfigError(f"{_path_text(path[:-1])}: cannot set {dotted!r}, not a mapping")
        node[last] = value
    return data


def _path_text(path: list[str | int]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a config file; raise ConfigError naming the bad key."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {yaml_problem(err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    apply_overrides(data, overrides or [])
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> Config:
    config = build_dataclass(Config, data, "")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks that go beyond types."""
    emb = config.embedding
    for key in ("max_length", "max_tokens_per_batch", "max_batch_size", "shard_size"):
        value = getattr(emb, key)
        if value is not None and value < 1:
            raise ConfigError(f"embedding.{key}: must be >= 1, got {value}")
    for key in ("nprobe", "ef_search", "train_size", "batch_size"):
        value = getattr(config.index, key)
        if value is not None and value < 1:
            raise ConfigError(f"index.{key}: must be >= 1, got {value}")
    if config.runner.num_workers < 1:
        raise ConfigError(f"runner.num_workers: must be >= 1, got {config.runner.num_workers}")
    if config.pool is not None and not config.pool.path:
        raise ConfigError("pool.path: must name at least one file, glob or directory")
    if config.selection is not None and config.recipe is not None:
        raise ConfigError("recipe: give either selection (one stage) or recipe (stages), not both")
    if config.recipe is not None:
        if not config.recipe.stages:
            raise ConfigError("recipe.stages: name at least one stage")
        names = [stage.name or stage.selector for stage in config.recipe.stages]
        for i, name in enumerate(names):
            if not name or any(c in name for c in "/\\:") or name.startswith("."):
                raise ConfigError(f"recipe.stages[{i}].name: {name!r} is not a directory name")
            if name in names[:i]:
                raise ConfigError(
                    f"recipe.stages[{i}].name: {name!r} is used twice (stages need unique names)"
                )
    for name, source in config.queries.items():
        if (source.path is None) == (source.embeddings is None):
            raise ConfigError(f"queries.{name}: give exactly one of 'path' or 'embeddings'")
    if config.runner.name == "dataflow":
        for key in ("project", "region", "temp_location"):
            if not getattr(config.runner, key):
                raise ConfigError(f"runner.{key}: required when runner.name is 'dataflow'")


def require(value: Any, key: str) -> Any:
    """Return `value`, or raise a ConfigError saying the verb needs `key`."""
    if value is None:
        raise ConfigError(f"{key}: required key missing")
    return value


def make_output_dir(path: str, key: str, create: bool = True) -> None:
    """Create the local output directory `path` (and its parents) for writing, or raise a
    ConfigError naming `key` when that cannot be: a file in the way (the path itself or one
    of its parents), or no permission. Remote paths (``gs://...``) are left to the caller:
    object stores have no directories to make. `create=False`: check only (nothing made)."""
    if "://" in path:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{key}: {path} is a file, not a directory")
    if not create:  # only check: the nearest existing ancestor must be a directory
        ancestor = next((p for p in [target, *target.parents] if p.exists()), None)
        if ancestor is not None and not ancestor.is_dir():
            raise ConfigError(f"{key}: cannot create the directory {path}: {ancestor} is a file")
        return
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(
            (p for p in [target, *target.parents] if p.exists() and not p.is_dir()), None
        )
        where = f"{blocker} is a file" if blocker is not None else "a file is in the way"
        raise ConfigError(f"{key}: cannot create the directory {path}: {where}") from None
    except OSError as err:
        raise ConfigError(
            f"{key}: cannot create the directory {path}: {err.strerror or err}"
        ) from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot write in the directory {path}: permission denied")
