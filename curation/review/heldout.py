"""The pure pieces of `check`: split the pairs, measure held-out margins, compare with random.

Held-out measure (the DPO implicit reward of METHODS.md §2, against the base model):

    h(y)   = log π_θ(y|x) − log π_ref(y|x)     summed over response tokens
    margin = h(y_w) − h(y_l)                    accuracy = share of pairs with margin > 0

π_θ = base model + a LoRA adapter fine-tuned on the selection; π_ref = the base model (the
same weights with the adapter disabled). Before any fine-tune every margin is 0; a selection
that teaches the task raises chosen over rejected on pairs it never saw.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from curation.data.pairs import NEAR_IDENTICAL, similarity
from curation.engine.objectives import Batch, DPOObjective, collate
from curation.engine.projection import derive_seed

CI_LEVEL = 0.95


def split_pairs(subtasks: Sequence[str], share: float, seed: int = 0,
                prompts: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """(scoring, held-out) pair indices, split within each subtask by prompt.

    The unit is a prompt (``prompts``; default: every pair its own), so sets with several pairs
    per prompt (SHP) never put one prompt on both sides. A subtask with n >= 2 prompts holds
    out ``max(1, floor(share·n))`` of them but always keeps one for scoring; a subtask with one
    prompt keeps it for scoring. Seeded by ``(seed, subtask)``, so adding a subtask does not
    reshuffle the others.
    """
    if not 0 < share < 1:
        raise ValueError(f"held-out share must be in (0, 1), got {share}")
    keys = list(prompts) if prompts is not None else list(range(len(subtasks)))
    by_sub: dict[str, dict] = {}
    for i, (sub, key) in enumerate(zip(subtasks, keys)):
        by_sub.setdefault(sub, {}).setdefault(key, []).append(i)
    held: list[int] = []
    for sub, groups in by_sub.items():
        units = list(groups.values())
        if len(units) < 2:
            continue
        n_hold = min(len(units) - 1, max(1, math.floor(share * len(units))))
        order = np.random.default_rng(derive_seed("heldout", seed, sub)).permutation(len(units))
        held += [i for j in order[:n_hold] for i in units[j]]
    held_set = set(held)
    return [i for i in range(len(subtasks)) if i not in held_set], sorted(held)


@torch.no_grad()
def pair_margins(model, items: Sequence[Batch], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """``h(y_w) − h(y_l)`` of every pair item (`objectives.pair_item`) under a PEFT model."""
    objective = DPOObjective()
    was_training = model.training
    model.eval()
    try:
        out = [objective.margin(model, collate(items[lo:lo + batch_size], pad_id).to(next(model.parameters()).device))
               for lo in range(0, len(items), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


def _bootstrap(diff: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """Percentile CI of the mean of ``diff [seeds, pairs]``, resampling seeds and pairs."""
    rng = np.random.default_rng(seed)
    s, p = diff.shape
    means = np.empty(n)
    for b in range(n):
        rows = rng.integers(0, s, s)
        cols = rng.integers(0, p, p)
        means[b] = diff[np.ix_(rows, cols)].mean()
    lo, hi = np.quantile(means, [(1 - CI_LEVEL) / 2, 1 - (1 - CI_LEVEL) / 2])
    return float(lo), float(hi)


MIN_HELDOUT_PAIRS = 3  # below this no verdict is given: too few pairs to tell


def compare_with_random(selected: np.ndarray, random: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Held-out figures of the selection vs same-size random selections.

    ``selected`` and ``random`` are ``[seeds, heldout pairs]`` margins; seed ``s`` of both used
    the same fine-tune seed, so differences are paired. ``gain_vs_random`` is the accuracy gain
    and ``ci95`` its bootstrap 95% interval (over seeds and pairs); ``margin_gain`` and
    ``margin_ci95`` are the same for the mean margin.
    """
    selected, random = np.atleast_2d(selected), np.atleast_2d(random)
    if selected.shape != random.shape or selected.size == 0:
        raise ValueError(f"need matching non-empty margins, got {selected.shape} and {random.shape}")
    win_sel, win_rand = (selected > 0).astype(float), (random > 0).astype(float)
    return {"accuracy": float(win_sel.mean()), "margin": float(selected.mean()),
            "random_accuracy": float(win_rand.mean()), "random_margin": float(random.mean()),
            "gain_vs_random": float(win_sel.mean() - win_rand.mean()),
            "ci95": list(_bootstrap(win_sel - win_rand, n_boot, seed + 1)),
            "margin_gain": float(selected.mean() - random.mean()),
            "margin_ci95": list(_bootstrap(selected - random, n_boot, seed)),
            "per_seed_accuracy": win_sel.mean(axis=1).tolist(),
            "per_seed_random_accuracy": win_rand.mean(axis=1).tolist(),
            "seeds": int(selected.shape[0]), "pairs": int(selected.shape[1])}


def verdict(h: dict) -> tuple[str, str]:
    """(label, sentence): better / worse / no better than random, or too few pairs to tell.

    "better" needs the margin gain's whole interval above 0 *and* no loss of accuracy (margins
    are summed log-probs, so one long pair can carry the mean); "worse" the mirror image.
    """
    lo, hi = h["margin_ci95"]
    what = (f"on {h['pairs']} held-out pairs over {h['seeds']} fine-tune seeds, the selection's preference "
            f"accuracy is {h['accuracy']:.0%} vs {h['random_accuracy']:.0%} for random selections of the same "
            f"size; its mean margin gain is {h['margin_gain']:+.3g} (95% CI {lo:+.3g} to {hi:+.3g})")
    if h["pairs"] < MIN_HELDOUT_PAIRS:
        return "too few pairs", (f"Too few held-out pairs to tell ({h['pairs']}; add pairs so that at least "
                                 f"{MIN_HELDOUT_PAIRS} can be held out): {what}.")
    if lo > 0 and h["gain_vs_random"] >= 0:
        return "better than random", f"Better than random: {what}."
    if hi < 0 and h["gain_vs_random"] <= 0:
        return "worse than random", f"Worse than random: {what}."
    return "no better than random", f"No better than random: {what}; the margin interval includes 0 or the accuracy disagrees."


def label_contrast(pairs: Sequence[dict], threshold: float = NEAR_IDENTICAL) -> dict:
    """How many pairs contrast two near-identical answers (a number, a label).

    ROSE's direction is ``∇log π(y_w) − ∇log π(y_l)`` of one prompt: what the two answers share
    (the task) cancels. With near-identical answers ROSE looks for that detail, not the task
    (`bench diagnose`: on T0 such pairs cost ROSE most of its precision; replacing the
    rejected by an off-task answer brought it level with LESS).
    """
    ratios = [similarity(p["chosen"], p["rejected"]) for p in pairs]  # length-guarded (`pairs`)
    near = [i for i, r in enumerate(ratios) if r >= threshold]
    out = {"pairs": len(pairs), "near_identical": len(near), "positions": near,
           "mean_similarity": float(np.mean(ratios)) if ratios else 0.0}
    if pairs and len(near) * 2 >= len(pairs):
        out["warning"] = (f"{len(near)} of {len(pairs)} pairs have a chosen and a rejected answer that differ only "
                          f"in a detail (similarity >= {threshold:.0%}). ROSE then scores examples by that contrast "
                          "(a number, a label), not by the task: compare with LESS or BM25 (`check` reports the "
                          "agreement), or write rejected answers that are worse in the way the task cares about.")
    return out


def pair_items(pairs: Sequence[dict], tokenizer, max_length: int) -> list[Batch]:
    """Pair dicts (prompt, chosen, rejected, subtask; ``prompt_messages`` optional) as ROSE items."""
    from curation.methods.base import ValPair
    from curation.methods.rose import Rose
    vals = [ValPair(p["prompt"], p.get("prompt_messages") or [{"role": "user", "content": p["prompt"]}],
                    p["chosen"], p["rejected"], p["subtask"]) for p in pairs]
    return Rose().val_items(vals, tokenizer, max_length)


def tuned_margins(model, tokenizer, examples: Sequence, train_cfg, items: Sequence[Batch], work_dir) -> tuple:
    """Fine-tune a fresh LoRA on ``examples``, then the held-out margins under it.

    Returns (margins, the bare base model again: the adapter is unloaded)."""
    from peft import PeftModel

    from curation.engine.model import pad_token_id
    from curation.engine.warmup import finetune
    adapter = finetune(model, tokenizer, list(examples), train_cfg, work_dir)
    tuned = PeftModel.from_pretrained(model, str(adapter))
    try:
        margins = pair_margins(tuned, items, pad_token_id(tokenizer))
    finally:
        model = tuned.unload()
    return margins, model
