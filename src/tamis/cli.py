"""`tamis <verb> CONFIG [--set key=value] [beam flags...]`.

Flags tamis does not know are passed on to Beam's PipelineOptions, so
``tamis embed job.yaml --runner=DataflowRunner --project=...`` works as in any Beam program.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tamis.config import Config, ConfigError, load_config

log = logging.getLogger("tamis")


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one ``tamis: error: ...`` line (exit 2) like every other error; the
    usage itself is one ``-h`` away (subcommand parsers inherit this class)."""

    def error(self, message: str):
        self.exit(2, f"tamis: error: {message} (see {self.prog} -h)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="tamis",
        description="Data curation and active learning at scale.",
        epilog="Unknown --flags are passed to Beam's PipelineOptions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def job_verb(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config", help="job YAML (see configs/)")
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set embedding.max_length=256 (repeatable)",
        )
        sub.add_argument(
            "--strict", action="store_true", help="fail on the first bad record (pool.strict)"
        )
        sub.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the outputs of a different job (another config or changed inputs)",
        )
        sub.add_argument(
            "--rerun",
            action="store_true",
            help="a recipe: run every stage again, even finished and unchanged ones",
        )
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        return sub

    job_verb("embed", "embed the pool with the configured encoder (Beam pipeline)")
    job_verb("select", "select a subset from finished embeddings with the configured selector")
    job_verb("run", "embed (skipping finished shards), then select when configured")

    scaling = verbs.add_parser(
        "scaling", help="data-filtering scaling laws: fit observations, plan the filter level"
    )
    scaling.add_argument("action", choices=["fit", "plan"], help="fit: fit.json; plan: plan.*")
    scaling.add_argument("config", help="YAML with a scaling section (see configs/)")
    scaling.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )  # fmt: skip

    data = verbs.add_parser("data", help="write a bundled example pool as JSONL")
    data.add_argument(
        "dataset", choices=["bbcnews", "bbcnews-judged", "humaneval"], help="which pool"
    )
    data.add_argument(
        "output",
        help="output .jsonl path (bbcnews) or directory (humaneval: STAT example; "
        "bbcnews-judged: qrels and provenance of a pooled judgement, the CET example)",
    )
    data.add_argument(
        "--embeddings",
        metavar="DIR",
        help="bbcnews-judged: the embedded BBC pool (its ids and the truncated-embedding "
        "retriever)",
    )
    data.add_argument("--judged-depth", type=int, default=10, help="bbcnews-judged: top-k judged")
    data.add_argument(
        "--queries",
        default="",
        metavar="TOPIC,...",
        help="hold out articles of these topics as target-task query files beside OUTPUT",
    )
    data.add_argument("--per-topic", type=int, default=5, help="queries per topic (default 5)")

    report = verbs.add_parser(
        "report",
        help="summarise a subset directory (or a recipe's funnel) and plot it as a PNG",
    )
    report.add_argument("directory", help="subset or recipe directory (from `tamis select`)")
    report.add_argument(
        "--png",
        metavar="PATH",
        help="plot path (default DIRECTORY/scores.png; a recipe: DIRECTORY/funnel.png)",
    )

    embeddings = verbs.add_parser(
        "embeddings", help="embeddings dirs: import vectors made elsewhere"
    )
    actions = embeddings.add_subparsers(dest="action", required=True, metavar="ACTION")
    imports = actions.add_parser(
        "import",
        help="vectors made elsewhere -> a finished embeddings dir every selector reads",
        description="SRC: Parquet (file, glob or dir) or JSONL with an id column and a list "
        "column; a .npy matrix with --ids; or a datasets save_to_disk dir. Checked: one "
        "dimension, unique non-null ids, no NaN/inf vectors.",
    )
    imports.add_argument("source", metavar="SRC")
    imports.add_argument("output", metavar="OUT", help="the embeddings dir to write")
    imports.add_argument("--id-column", default="id", help="the ids' column (default id)")
    imports.add_argument(
        "--vector-column", help="the vectors' column (default: the only list column)"
    )
    imports.add_argument("--ids", metavar="FILE", help=".npy: the ids, one per line (or id col)")
    imports.add_argument("--shard-size", type=int, default=5000, help="rows per part file")
    imports.add_argument("--overwrite", action="store_true", help="replace another dir's files")
    return parser


def _load(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.strict:
        overrides.append("pool.strict=true")
    return load_config(args.config, overrides)


def _print_embed_summary(manifest: dict | None, output: str) -> None:
    if manifest is None:
        print(f"embed job submitted; outputs will be in {output}")
        return
    c = manifest["counts"]
    model = manifest["model"]
    seconds = manifest["seconds"].get("wall", manifest["seconds"]["encode"])
    print(
        f"embedded {c['embedded']:,} of {c['records']:,} records "
        f"({c['rejected']:,} rejected, {c['blank_lines']:,} blank lines) in {seconds:.1f} s"
    )
    print(
        f"  tokens {c['tokens']:,} ({c['truncated']:,} truncated at "
        f"{model.get('max_length', '?')}); shards {c['shards']} "
        f"({c['shards_skipped']} already done)"
    )
    if c["rejected"]:
        reasons = ", ".join(f"{k} {v}" for k, v in c["rejected_by_reason"].items())
        print(f"  rejected: {reasons} -> {os.path.join(output, 'rejected.jsonl')}")
    if c["duplicate_ids"]:
        examples = ", ".join(manifest["duplicate_id_examples"][:5])
        print(f"  warning: {c['duplicate_ids']} ids occur more than once (e.g. {examples})")
    print(
        f"  embeddings: {output}/part-*.parquet (dim {model.get('dim', '?')}, "
        f"{model.get('model')}, {model.get('pooling', '')})"
    )
    print(f"  manifest: {os.path.join(output, 'manifest.json')}")


def _embed(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tamis.pipelines.embed import run_embed

    config = _load(args)
    manifest = run_embed(
        config,
        beam_args,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        require_records=True,
    )
    if isinstance(manifest, dict) or manifest is None:
        _print_embed_summary(manifest, str(config.embedding.output))
    else:
        print("dry run: the job was built and validated; nothing was submitted")
    return 0


def _print_stage(plan, manifest: dict, skipped: bool) -> None:
    """A finished stage: the selector's own summary lines, then where its files are."""
    if skipped:
        print(f"{plan.name}: unchanged since the last run, skipped ({plan.output})")
        return
    for line in plan.selector.summary(manifest, plan.output):
        print(line)
    print(f"  subset: {os.path.join(plan.output, 'subset.parquet')} (and subset.jsonl)")
    print(f"  manifest: {os.path.join(plan.output, 'manifest.json')}")


def _print_recipe_summary(manifest: dict, output: str) -> None:
    steps = manifest["funnel"]
    print(
        f"recipe: {manifest['pool']:,} pool items -> {manifest['final']['rows']:,} in the final "
        f"subset ({len(steps)} stages, {manifest['seconds']['wall']:.1f} s)"
    )
    for step in steps:
        note = " (skipped: unchanged)" if step["skipped"] else ""
        print(
            f"  {step['dir']}: {step['in']:,} -> {step['kept']:,} ({step['selector']}, "
            f"{step['kind']}){note}"
        )
    print(f"  subset: {os.path.join(output, 'subset.parquet')} (and subset.jsonl)")
    print(f"  manifest: {os.path.join(output, 'manifest.json')}")


def _scaling(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tamis.pipelines.scaling import run_fit, run_plan

    config = load_config(args.config, list(args.overrides))
    output = str(config.scaling.output if config.scaling else "")
    if args.action == "fit":
        fit = run_fit(config)
        print(f"fitted {len(fit['buckets'])} buckets ({fit['method']}): a={fit['a']:.4g}, "
              f"d={fit['d']:.4g}, loss {fit['loss']:.3g}")  # fmt: skip
        for name, b in sorted(fit["buckets"].items(), key=lambda kv: kv[1]["b"]):
            print(f"  {name}: b={b['b']:.4f} tau={b['tau']:.3g} rmse={b['rmse']:.3g}")
        print(f"  fit: {os.path.join(output, 'fit.json')}")
        return 0
    result = run_plan(config)
    for point in result["frontier"]:
        print(f"  {point['samples_seen']:.3g} samples seen: top {point['top_m']} "
              f"(predicted error {point['predicted_error']:.4f})")  # fmt: skip
    print(f"  plan: {os.path.join(output, 'plan.csv')} (and plan.json); plot: {result['png']}")
    return 0


def _select(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tamis.pipelines.select import run_select

    config = _load(args)
    if config.selection is None and config.recipe is None:
        raise ConfigError("selection: required key missing (or a recipe section)")
    manifest = run_select(
        config, beam_args, on_stage=_print_stage, overwrite=args.overwrite, rerun=args.rerun
    )
    if config.recipe is not None:
        _print_recipe_summary(manifest, str(config.recipe.output))
    return 0


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tamis.pipelines.select import check_select_outputs, plan_selection

    config = _load(args)
    selects = config.selection is not None or config.recipe is not None
    if selects:  # a bad stage config or another job's output fails before embedding
        plan_selection(config)
        check_select_outputs(config, args.overwrite)
    status = _embed(args, beam_args)
    if status == 0 and selects:
        status = _select(args, beam_args)
    return status


def _embeddings(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tamis.pipelines.import_vectors import import_embeddings

    if beam_args:
        raise ConfigError(f"embeddings import: unexpected arguments: {' '.join(beam_args)}")
    if args.shard_size < 1:
        raise ConfigError(f"--shard-size: must be >= 1, got {args.shard_size}")
    manifest = import_embeddings(
        args.source,
        args.output,
        id_column=args.id_column,
        vector_column=args.vector_column,
        ids=args.ids,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
    )
    model = manifest["model"]
    print(
        f"imported {manifest['counts']['embedded']:,} vectors of dimension {model['dim']} from "
        f"{args.source} ({'' if model.get('normalized') else 'not '}L2-normalised)"
    )
    print(f"  embeddings: {args.output}/part-*.parquet")
    print(f"  manifest: {os.path.join(args.output, 'manifest.json')}")
    return 0


def _data(args: argparse.Namespace, beam_args: list[str]) -> int:
    if args.dataset == "humaneval":
        from tamis.data.humaneval import write_humaneval

        counts = write_humaneval(args.output)
        print(
            f"wrote {counts['pool']} HumanEval problems with skill tags and a made-up "
            f"evaluation of {counts['evaluation']} questions to {args.output}"
        )
        return 0
    if args.dataset == "bbcnews-judged":
        from tamis.data.pooled_judgements import write_judged_pool

        stats = write_judged_pool(args.output, args.embeddings, args.judged_depth)
        print(
            f"wrote qrels.parquet ({stats['qrels']:,} judged relevant pairs) and "
            f"provenance.parquet (TF-IDF and truncated-embedding rankings) to {args.output}"
        )
        print(
            f"  {stats['judged_per_query']} judged per query, {stats['relevant_per_query']} "
            f"relevant: the rest of each topic is unlabelled (false negatives to find)"
        )
        return 0
    from tamis.data.bbcnews import query_path, write_bbcnews

    topics = [t for t in args.queries.split(",") if t]
    counts = write_bbcnews(args.output, topics, args.per_topic)
    print(f"wrote {counts['pool']:,} BBC News articles to {args.output}")
    for topic in topics:
        held_out = counts[f"queries_{topic}"]
        print(f"  {held_out} {topic} queries to {query_path(args.output, topic)}")
    return 0


def _report(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tamis.report import report

    text, png = report(args.directory, args.png)
    print(text)
    print(f"  plot: {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the verb started (e.g. while importing Beam)
        print("tamis: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("tamis").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        # Beam logs worker start-up chatter and every failing bundle's traceback; tamis
        # reports errors itself (and re-raises the ones it does not know).
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.verbose:
        os.environ["TAMIS_VERBOSE"] = "1"  # tamis.runners.sdk_worker: workers log too
    unknown = [a for a in rest if not a.startswith("-")]
    if args.verb in ("data", "report") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.verb == "scaling" and rest:  # Beam flags would be accepted and do nothing
        parser.error(
            f"unrecognized arguments: {' '.join(rest)} (tamis scaling runs no Beam pipeline, "
            "so it takes no Beam flags)"
        )
    if args.verb == "data" and args.dataset == "bbcnews-judged" and not args.embeddings:
        parser.error("data bbcnews-judged needs --embeddings DIR (run tamis embed first)")
    if unknown:
        parser.error(f"unexpected arguments: {' '.join(unknown)} (Beam flags start with --)")
    from tamis.embeddings.encoder import ModelLoadError
    from tamis.pipelines.embed import OutputConflictError
    from tamis.records import BadRecordError, InputError

    handlers = {
        "embed": _embed,
        "select": _select,
        "run": _run,
        "scaling": _scaling,
        "embeddings": _embeddings,
        "data": _data,
        "report": _report,
    }
    try:
        if rest:
            from tamis.runners.options import check_beam_flags

            check_beam_flags(rest, _own_flags(parser, args.verb))
        return handlers[args.verb](args, rest)
    except KeyboardInterrupt:
        print(f"tamis: interrupted; {_RESUME.get(args.verb, 'nothing was kept')}", file=sys.stderr)
        return 130
    except (ConfigError, InputError, ModelLoadError, OutputConflictError, BadRecordError) as err:
        print(f"tamis: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file that cannot be read or written: its name is in the message
        print(f"tamis: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if _interrupted(err):  # Beam re-raises a worker's KeyboardInterrupt as RuntimeError
            print(
                f"tamis: interrupted; {_RESUME.get(args.verb, 'nothing was kept')}", file=sys.stderr
            )
            return 130
        from tamis.pipelines.embed import pipeline_error

        ours = pipeline_error(err)  # Beam wraps worker exceptions: the tamis error inside
        if ours is not None:
            print(f"tamis: error: {ours}", file=sys.stderr)
            return 2
        if args.verbose:
            raise
        print(
            f"tamis: error: internal error ({type(err).__name__}: {_first_line(err)}); this is "
            "a bug in tamis: rerun with -v for the traceback and please report it",
            file=sys.stderr,
        )
        return 1


_RESUME = {
    "embed": "finished shards are kept, re-run to resume",
    "run": "finished shards and stages are kept, re-run to resume",
    "select": "finished recipe stages are kept, re-run to resume",
}


def _interrupted(err: BaseException | None) -> bool:
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, KeyboardInterrupt) or str(err).startswith("KeyboardInterrupt"):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def _own_flags(parser: argparse.ArgumentParser, verb: str) -> list[str]:
    """The --flags tamis itself takes for a verb (for "did you mean" on a typo)."""
    flags = [f for a in parser._actions for f in a.option_strings]
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        sub = action.choices.get(verb)
        if sub is not None:
            flags += [f for a in sub._actions for f in a.option_strings]
    return [f for f in flags if f.startswith("--")]
