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
    job_verb("run", "embed, then select (selection runs once the select stage is configured)")

    data = verbs.add_parser("data", help="write a bundled example pool as JSONL")
    data.add_argument("dataset", choices=["bbcnews"], help="which pool")
    data.add_argument("output", help="output .jsonl path")
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


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    config = _load(args)
    if config.selection is not None:  # refused before any work starts
        raise ConfigError(
            "selection: the select stage is not available in this version of tamis; "
            "remove the selection section to embed only"
        )
    return _embed(args, beam_args)


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
        from tamis.data.bbcnews import write_bbcnews

        n = write_bbcnews(args.output)
        print(f"wrote {n:,} BBC News articles to {args.output}")
        return 0
    if unknown:
        parser.error(f"unexpected arguments: {' '.join(unknown)} (Beam flags start with --)")
    from tamis.embeddings.encoder import ModelLoadError
    from tamis.pipelines.embed import OutputConflictError
    from tamis.records import BadRecordError, InputError

    handlers = {"embed": _embed, "run": _run}
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
