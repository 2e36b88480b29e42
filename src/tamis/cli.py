"""`tamis <verb> CONFIG [--set key=value] [beam flags...]`.

Flags tamis does not know are passed on to Beam's PipelineOptions, so
``tamis embed job.yaml --runner=DataflowRunner --project=...`` works as in any Beam program.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from tamis.config import Config, ConfigError, load_config

log = logging.getLogger("tamis")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
            "--overwrite", action="store_true", help="replace outputs of a different job"
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
        "report", help="summarise a subset directory and plot its scores as a PNG"
    )
    report.add_argument("directory", help="subset directory (written by `tamis select`)")
    report.add_argument(
        "--png", metavar="PATH", help="histogram path (default DIRECTORY/scores.png)"
    )
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
    manifest = run_embed(config, beam_args, overwrite=args.overwrite, progress=not args.no_progress)
    if isinstance(manifest, dict) or manifest is None:
        _print_embed_summary(manifest, str(config.embedding.output))
    else:
        print("dry run: the job was built and validated; nothing was submitted")
    return 0


def _print_stream_summary(manifest: dict, output: str) -> None:
    c, info = manifest["counts"], manifest["info"]
    print(
        f"queried {c['queried']:,} of {c['items']:,} stream items "
        f"({100 * info['query_rate']:.2f}%, budget {100 * info['budget_fraction']:g}%) with "
        f"stream_al {info['strategy']} in {manifest['seconds']['wall']:.1f} s "
        f"({info['items_per_second']:,} items/s deciding)"
    )
    for key, k in c.get("per_stream_key", {}).items():
        print(f"  {key}: {k['queried']:,} of {k['items']:,}")
    print(f"  decisions: {os.path.join(output, 'decisions.parquet')}")
    print(f"  state (resume from it): {os.path.join(output, 'stream_state.json')}")


def _print_stat_summary(manifest: dict, output: str) -> None:
    c, info = manifest["counts"], manifest["info"]
    print(
        f"stat ({info['mode']}): {c['difficult']:,} of {c['questions']:,} questions difficult, "
        f"{c['missing_skill_pairs']:,} missing-skill mentions; {c['examples_with_weight']:,} "
        f"of {c['pool']:,} examples weighted, {c['selected']:,} in the subset"
    )
    missed = ", ".join(f"{skill} ({count})" for skill, count in info["most_missed"])
    print(f"  most missed skills: {missed}")
    if c["unknown_skills"]:
        unknown = ", ".join(f"{s} ({n})" for s, n in list(c["unknown_skills"].items())[:5])
        print(f"  missing skills no training example carries: {unknown}")
    print(f"  profile: {os.path.join(output, 'missing_skill_profile.parquet')}")


def _print_scaling_law_summary(manifest: dict, output: str) -> None:
    c, info = manifest["counts"], manifest["info"]
    print(
        f"scaling_law at {info['compute']:.3g} samples seen: top {info['top_m']} buckets "
        f"({', '.join(info['best_buckets'])}; predicted error "
        f"{info['predicted_error']:.4f}); {c['selected']:,} of {c['pool']:,} items kept"
    )


def _print_cet_summary(manifest: dict, output: str) -> None:
    c, info = manifest["counts"], manifest["info"]
    print(
        f"cet ({info['method']}): mined {c['candidates']:,} candidates for {c['queries']:,} "
        f"queries ({c['labelled_candidates']:,} labelled) in {info['seconds']['mine']:.1f} s, "
        f"estimated in {info['seconds']['estimate']:.1f} s"
    )
    print(
        f"  expected false negatives among the unlabelled: "
        f"{info['expected_false_negatives']:,.0f} of {c['unlabelled_candidates']:,}; "
        f"{c['excluded']:,} excluded, {c['kept_negatives']:,} hard negatives kept"
        + (
            f" ({c['queries_without_kept_negatives']:,} queries keep none)"
            if c["queries_without_kept_negatives"]
            else ""
        )
    )
    if "warning" in info:
        print(f"  note: {info['warning']}")
    print(f"  candidates: {os.path.join(output, 'candidates.parquet')}")
    print(f"  review queue: {os.path.join(output, 'review_queue.parquet')} ({c['review_queue']:,})")


def _print_select_summary(manifest: dict, output: str) -> None:
    printers = {
        "stream_al": _print_stream_summary,
        "stat": _print_stat_summary,
        "scaling_law": _print_scaling_law_summary,
        "cet": _print_cet_summary,
    }
    printers.get(manifest["selector"], _print_ranked_summary)(manifest, output)
    print(f"  subset: {os.path.join(output, 'subset.parquet')} (and subset.jsonl)")
    print(f"  manifest: {os.path.join(output, 'manifest.json')}")


def _print_ranked_summary(manifest: dict, output: str) -> None:
    c = manifest["counts"]
    print(
        f"selected {c['selected']:,} of {c['candidates']:,} candidates with "
        f"{manifest['selector']} in {manifest['seconds']['wall']:.1f} s"
        + (
            f" ({c['excluded_duplicates']:,} exact duplicates removed)"
            if c["excluded_duplicates"]
            else ""
        )
    )
    agreement = manifest.get("label_agreement", {})
    for task, picked in c.get("per_task", {}).items():
        line = f"  {task}: {picked:,} picks"
        if task in agreement:
            on = agreement[task]["on_label"]
            line += f", {on}/{picked} on topic ({100 * on / max(picked, 1):.0f}%)"
        print(line)
    info = manifest.get("info", {})
    if "coverage_radius_last" in info:

        def radius(value: float | None) -> str:  # None: infinite (no centers yet)
            return "inf" if value is None else f"{value:.4f}"

        print(
            f"  coverage radius ({info['metric']}): {radius(info['coverage_radius_first'])} "
            f"at the first pick, {radius(info['coverage_radius_last'])} at the last, "
            f"{radius(info['coverage_radius_after'])} after "
            f"({c.get('labeled', 0):,} labelled before)"
        )


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
    if config.selection is None:
        raise ConfigError("selection: required key missing")
    manifest = run_select(config, beam_args)
    _print_select_summary(manifest, str(config.selection.output))
    return 0


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tamis.selectors.base import make_selector

    config = _load(args)
    if config.selection is not None:  # a bad selector config fails before embedding
        make_selector(config.selection.selector, config.selection.params)
    status = _embed(args, beam_args)
    if status == 0 and config.selection is not None:
        status = _select(args, beam_args)
    return status


_BAD_RECORD = re.compile(r"BadRecordError: (.+)")


def _pipeline_error_message(err: BaseException) -> str | None:
    """Beam wraps worker exceptions; dig out the message of one of ours."""
    match = _BAD_RECORD.search(str(err))
    if match:
        return f"bad record (strict mode): {match.group(1).strip()}"
    return None


def main(argv: list[str] | None = None) -> int:
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
    unknown = [a for a in rest if not a.startswith("-")]
    if args.verb == "data":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.dataset == "humaneval":
            from tamis.data.humaneval import write_humaneval

            counts = write_humaneval(args.output)
            print(
                f"wrote {counts['pool']} HumanEval problems with skill tags and a made-up "
                f"evaluation of {counts['evaluation']} questions to {args.output}"
            )
            return 0
        if args.dataset == "bbcnews-judged":
            if not args.embeddings:
                parser.error("data bbcnews-judged needs --embeddings DIR (run tamis embed first)")
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
    if args.verb == "report":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from tamis.records import InputError
        from tamis.report import report

        try:
            text, png = report(args.directory, args.png)
        except InputError as err:
            print(f"tamis: error: {err}", file=sys.stderr)
            return 2
        print(text)
        print(f"  histogram: {png}")
        return 0
    if unknown:
        parser.error(f"unexpected arguments: {' '.join(unknown)} (Beam flags start with --)")
    from tamis.embeddings.encoder import ModelLoadError
    from tamis.pipelines.embed import OutputConflictError
    from tamis.records import BadRecordError, InputError

    handlers = {"embed": _embed, "select": _select, "run": _run, "scaling": _scaling}
    try:
        return handlers[args.verb](args, rest)
    except (ConfigError, InputError, ModelLoadError, OutputConflictError, BadRecordError) as err:
        print(f"tamis: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        message = _pipeline_error_message(err)
        if message is None:
            raise
        print(f"tamis: error: {message}", file=sys.stderr)
        return 2
