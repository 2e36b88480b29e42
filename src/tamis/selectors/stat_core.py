"""STAT-Sel (He et al. 2025, Algorithm 1) as array functions: difficult questions, the
Missing-Skill-Profile, the expected draw weights and the sampled training set.

Skills are integer codes 0..S-1; a training pool's skills are a CSR pair (``offsets``,
``codes``): example i carries ``codes[offsets[i]:offsets[i + 1]]``. Nothing loops over
examples in Python, so millions of examples take seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TAU1 = 0.85
TAU2 = 0.7


def is_difficult(rewards: Sequence[float], tau1: float = TAU1, tau2: float = TAU2) -> bool:
    """A question is difficult when its last step reward r_t <= tau1, or the mean reward
    <= tau1, or any earlier step's reward <= tau2. No rewards, or a NaN or infinite one, is
    a ValueError: such a question is neither difficult nor easy (evaluation files are
    checked for it where they are read)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or len(r) == 0:
        raise ValueError(f"rewards must be a non-empty list of numbers, got {rewards!r}")
    if not np.isfinite(r).all():
        raise ValueError(f"rewards must be finite, got {r.tolist()!r}")
    return bool(r[-1] <= tau1 or r.mean() <= tau1 or (r[:-1] <= tau2).any())


@dataclass(frozen=True)
class SkillMap:
    """Skill -> training examples, as CSR: examples of skill s are
    ``examples[starts[s]:starts[s + 1]]`` (each example once per skill it carries)."""

    starts: np.ndarray  # (S + 1,) int64
    examples: np.ndarray  # int64 example positions

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.starts)


def skill_map(offsets: np.ndarray, codes: np.ndarray, n_skills: int) -> SkillMap:
    """Invert the examples' skill lists (a skill listed twice on one example counts once)."""
    n_examples = len(offsets) - 1
    example = np.repeat(np.arange(n_examples, dtype=np.int64), np.diff(offsets))
    # One int64 key per (skill, example) pair, sorted (by skill, then example), repeats
    # dropped. A sort and a neighbour test: np.unique's hash path (numpy >= 2.3) takes ~20 s
    # on 15M nearly distinct keys, the sort 0.2 s.
    keys = codes.astype(np.int64) * max(n_examples, 1) + example
    keys.sort()
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
    skill, examples = np.divmod(keys, max(n_examples, 1))
    starts = np.zeros(n_skills + 1, dtype=np.int64)
    np.cumsum(np.bincount(skill, minlength=n_skills), out=starts[1:])
    return SkillMap(starts, examples)


def missing_skill_counts(missing_codes: np.ndarray, n_skills: int) -> np.ndarray:
    """c_s: how many difficult questions miss skill s (codes of all difficult questions'
    missing skills, each question listing a skill once)."""
    return np.bincount(missing_codes.astype(np.int64), minlength=n_skills)


def expected_draws(counts: np.ndarray, skills: SkillMap, k: int, n_examples: int) -> np.ndarray:
    """E[draws of example p] = sum over its skills s of c_s k / |Skill-Map(s)|."""
    sizes = skills.sizes
    per_skill = np.divide(counts * float(k), sizes, out=np.zeros(len(sizes)), where=sizes > 0)
    skill_of = np.repeat(np.arange(len(sizes)), sizes)
    return np.bincount(skills.examples, weights=per_skill[skill_of], minlength=n_examples)


def stat_weights(
    counts: np.ndarray, skills: SkillMap, k: int, n_examples: int, mix_uniform: float = 0.0
) -> np.ndarray:
    """Per-example weights summing to 1: the expected draws, normalised, mixed with a
    uniform share `mix_uniform` so the other skills are not forgotten."""
    if not 0 <= mix_uniform <= 1:
        raise ValueError(f"mix_uniform must be in [0, 1], got {mix_uniform}")
    draws = expected_draws(counts, skills, k, n_examples)
    total = draws.sum()
    targeted = draws / total if total > 0 else np.zeros(n_examples)
    if total == 0 and mix_uniform == 0:
        raise ValueError("no difficult question misses a skill any training example has")
    return (1 - mix_uniform) * targeted + mix_uniform / n_examples


def stat_sample(
    missing_codes: np.ndarray,
    skills: SkillMap,
    k: int,
    target: int,
    seed: int = 0,
) -> np.ndarray:
    """The paper's two steps: for each (difficult question, missing skill) pair draw k
    examples of that skill, repeats allowed; then draw `target` entries from that list
    (without replacement while it is long enough, else with). Returns example positions.

    Pairs whose skill no training example carries add nothing.
    """
    rng = np.random.default_rng(seed)
    sizes = skills.sizes
    pairs = missing_codes.astype(np.int64)
    pairs = pairs[sizes[pairs] > 0]
    skill_of_draw = np.repeat(pairs, k)
    if len(skill_of_draw) == 0:
        raise ValueError("no difficult question misses a skill any training example has")
    within = (rng.random(len(skill_of_draw)) * sizes[skill_of_draw]).astype(np.int64)
    appended = skills.examples[skills.starts[skill_of_draw] + within]
    replace = target > len(appended)
    return appended[rng.choice(len(appended), size=target, replace=replace)]
