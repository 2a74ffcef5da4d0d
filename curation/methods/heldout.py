"""The pure pieces of `check`: split the pairs, measure held-out margins, compare with random.

Held-out measure: the DPO implicit reward of METHODS.md §2 against the base model, taken
**per response token** (length-robust):

    h(y)   = (log π_θ(y|x) − log π_ref(y|x)) / |y|     mean over the response's tokens
    margin = h(y_w) − h(y_l)                            accuracy = share of pairs with margin > 0

π_θ = base model + a LoRA adapter fine-tuned on the selection; π_ref = the base model (the
same weights with the adapter disabled). Why per token and not summed (the DPO loss's own
sum) nor against length-matched references: a summed margin grows with the answers' lengths,
so selections of short outputs, which move long answers least, looked best (issue 21: the
summed margin ranked ROSE > LESS > random > BM25, the reverse of their precision), and
length-matched references would need answers the curator's pairs do not have. The mean per
token needs nothing more than the pair and no longer rewards moving few tokens.

A selection is compared with several random selections of the same size (`compare_with_random`):
its gain must stand out from the spread between random draws, not from one draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from curation.data.pairs import NEAR_IDENTICAL, similarity

if TYPE_CHECKING:  # torch loads only to measure margins: `readiness` (the Preferences page) needs none
    from curation.engine.objectives import Batch

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
    from curation.engine.projection import derive_seed
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
        n_hold = held_out_count(len(units), share)
        order = np.random.default_rng(derive_seed("heldout", seed, sub)).permutation(len(units))
        held += [i for j in order[:n_hold] for i in units[j]]
    held_set = set(held)
    return [i for i in range(len(subtasks)) if i not in held_set], sorted(held)


def pair_margins(model, items: Sequence[Batch], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """Per-token ``h(y_w) − h(y_l)`` of every pair item (`objectives.pair_item`) under a PEFT model
    (the module docstring says why per token)."""
    import torch

    from curation.engine.objectives import DPOObjective, collate
    objective = DPOObjective(per_token=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [objective.margin(model, collate(items[lo:lo + batch_size], pad_id).to(next(model.parameters()).device))
                   for lo in range(0, len(items), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


MIN_PROMPTS_PER_SUBTASK = 2  # `split_pairs` holds one out only when one more stays for scoring
MIN_HELDOUT_PAIRS = 3  # below this no verdict is given: too few pairs to tell


def held_out_count(n_prompts: int, share: float) -> int:
    """How many of a subtask's ``n_prompts`` prompts `split_pairs` holds out (its rule, in one place)."""
    return 0 if n_prompts < MIN_PROMPTS_PER_SUBTASK else min(n_prompts - 1, max(1, math.floor(share * n_prompts)))


def readiness(subtasks: Sequence[str], share: float = 0.4, prompts: Sequence[str] | None = None) -> dict:
    """Whether a preference set has enough pairs for a verdict of `check` (and for `auto`), said
    before anything runs, from the split's own rules.

    Every subtask needs ``MIN_PROMPTS_PER_SUBTASK`` prompts (one held out, one kept for scoring;
    a subtask with one is never tested), and the whole split ``MIN_HELDOUT_PAIRS`` held-out
    prompts. ``more`` per subtask: the fewest new pairs (new prompts) that meet both, spent
    where one more held-out prompt costs least.
    """
    keys = list(prompts) if prompts is not None else list(range(len(subtasks)))
    units: dict[str, set] = {}
    for sub, key in zip(subtasks, keys):
        units.setdefault(sub, set()).add(key)
    n = {sub: len(u) for sub, u in units.items()}
    more = {sub: max(0, MIN_PROMPTS_PER_SUBTASK - k) for sub, k in n.items()}
    total = lambda: sum(held_out_count(n[s] + more[s], share) for s in n)  # noqa: E731
    while n and total() < MIN_HELDOUT_PAIRS:
        cost = {s: next(k for k in range(1, 10_000) if held_out_count(n[s] + more[s] + k, share)
                        > held_out_count(n[s] + more[s], share)) for s in n}
        cheapest = min(sorted(cost), key=cost.get)
        more[cheapest] += cost[cheapest]
    held = sum(held_out_count(k, share) for k in n.values())
    rows = [{"subtask": s, "pairs": sum(1 for x in subtasks if x == s), "prompts": n[s],
             "heldout": held_out_count(n[s], share), "more": more[s]} for s in sorted(n)]
    ready = held >= MIN_HELDOUT_PAIRS
    short = [r for r in rows if r["more"]]
    if not n:
        message = f"No pairs: add at least {MIN_HELDOUT_PAIRS} subtasks' worth ({MIN_PROMPTS_PER_SUBTASK} pairs each)."
    elif short:
        message = (f"{'Enough for a verdict' if ready else 'Too few pairs for a verdict'}: {held} pairs would be held "
                   f"out (at least {MIN_HELDOUT_PAIRS} needed, and {MIN_PROMPTS_PER_SUBTASK} pairs with different "
                   "prompts in every subtask so that one is tested); add "
                   + ", ".join(f"{r['more']} to '{r['subtask']}'" for r in short) + ".")
    else:
        message = f"Enough for a verdict: {held} pairs would be held out."
    return {"ready": ready, "heldout": held, "min_heldout": MIN_HELDOUT_PAIRS,
            "min_per_subtask": MIN_PROMPTS_PER_SUBTASK, "subtasks": rows, "message": message}


def _interval(sel_rows: np.ndarray, rand_rows: np.ndarray, per_pair: np.ndarray) -> tuple[list[float], float]:
    """(95% interval of ``mean(sel) − mean(rand)``, the random draws' standard deviation).

    The selection is judged against the spread between random draws (a prediction interval,
    Student t with K−1 degrees of freedom): under "no different" the selection is one more
    draw, so its distance from the draws' mean has variance ``sd²·(1 + 1/K)``. The pair-level
    variance of the per-pair differences is added, so a few pairs cannot carry a verdict.
    """
    k = len(rand_rows)
    sd = float(np.std(rand_rows, ddof=1))
    pair_var = float(np.var(per_pair, ddof=1)) / len(per_pair) if len(per_pair) > 1 else 0.0
    from scipy import stats  # ~1.5 s to import: only a check or auto pays it

    half = float(stats.t.ppf((1 + CI_LEVEL) / 2, k - 1)) * math.sqrt(sd * sd * (1 + 1 / k) + pair_var)
    gain = float(sel_rows.mean() - rand_rows.mean())
    return [gain - half, gain + half], sd


def compare_with_random(selected: np.ndarray, random: np.ndarray) -> dict:
    """Held-out figures of the selection vs K random selections of the same size.

    ``selected`` is ``[seeds, heldout pairs]`` per-token margins (one fine-tune per seed),
    ``random`` ``[K draws, heldout pairs]`` (draw k: its own random selection, fine-tune seed k),
    K >= 2. ``gain_vs_random`` / ``ci95``: accuracy gain over the draws' mean and its interval;
    ``margin_gain`` / ``margin_ci95`` the same for the mean margin (`_interval`: the spread
    between random draws, not one draw, sets the width).
    """
    selected, random = np.atleast_2d(selected), np.atleast_2d(random)
    if selected.size == 0 or random.ndim != 2 or random.shape[1] != selected.shape[1] or len(random) < 2:
        raise ValueError(f"need [seeds, pairs] and [draws >= 2, pairs] margins, got {selected.shape} and {random.shape}")
    win_sel, win_rand = (selected > 0).astype(float), (random > 0).astype(float)
    ci, acc_sd = _interval(win_sel.mean(axis=1), win_rand.mean(axis=1), win_sel.mean(0) - win_rand.mean(0))
    margin_ci, margin_sd = _interval(selected.mean(axis=1), random.mean(axis=1), selected.mean(0) - random.mean(0))
    return {"accuracy": float(win_sel.mean()), "margin": float(selected.mean()),
            "random_accuracy": float(win_rand.mean()), "random_margin": float(random.mean()),
            "gain_vs_random": float(win_sel.mean() - win_rand.mean()), "ci95": ci,
            "margin_gain": float(selected.mean() - random.mean()), "margin_ci95": margin_ci,
            "random_spread": {"accuracy_sd": acc_sd, "margin_sd": margin_sd},
            "per_seed_accuracy": win_sel.mean(axis=1).tolist(),
            "per_draw_random_accuracy": win_rand.mean(axis=1).tolist(),
            "margin_unit": "mean log-prob ratio per response token",
            "seeds": int(selected.shape[0]), "random_draws": int(random.shape[0]), "pairs": int(selected.shape[1])}


def verdict(h: dict) -> tuple[str, str]:
    """(label, sentence): better / worse / no better than random, or too few pairs to tell.

    "better" needs the margin gain's whole interval above 0 *and* no loss of accuracy;
    "worse" the mirror image; anything else is "no better than random" (no different).
    """
    lo, hi = h["margin_ci95"]
    what = (f"on {h['pairs']} held-out pairs over {h['seeds']} fine-tune seeds, the selection's preference "
            f"accuracy is {h['accuracy']:.0%} vs {h['random_accuracy']:.0%} for {h['random_draws']} random selections "
            f"of the same size; its mean per-token margin gain is {h['margin_gain']:+.3g} (95% interval over the "
            f"spread between random draws {lo:+.3g} to {hi:+.3g})")
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


@dataclass
class TuneConfig:
    """The held-out split and the short fine-tune that `check` and `auto` judge selections by
    (defaults: the tiny model's; lr scaled per model)."""

    heldout_share: float = 0.4  # of each subtask's prompts (`held_out_count`)
    split_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)  # fine-tune seeds of the judged selection
    random_draws: int = 5  # random selections (draw k: fine-tune seed k); their spread sets the interval
    epochs: int = 3
    min_steps: int = 40  # small selections still get this many optimizer steps
    max_steps: int = 400  # and big ones at most about this many (whole epochs, at least one)
    lr: float | None = None  # default: 3x the model's warmup lr (3e-3 on the tiny model)
    batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32


def finetune_epochs(cfg: TuneConfig, n: int) -> int:
    """Epochs of a check's fine-tune on ``n`` examples: at least ``epochs`` and ``min_steps``, at
    most ``max_steps`` (but one whole epoch)."""
    per_epoch = -(-max(n, 1) // cfg.batch_size)
    wanted = max(cfg.epochs, -(-cfg.min_steps // per_epoch))
    return max(1, min(wanted, cfg.max_steps // per_epoch))


class Tuner:
    """Fine-tunes fresh LoRA adapters on selections and measures the held-out pairs' margins.

    ``score_cfg``: the run's ScoreConfig (its model); ``fetch``: messages of example ids;
    ``work``: a folder of this process's own (adapters; removed by `close`)."""

    def __init__(self, score_cfg, home, heldout: Sequence[dict], cfg: TuneConfig, fetch, work):
        from curation.engine.models import load_model
        from curation.engine.warmup import ALL_LINEAR, WarmupConfig

        self.model, self.tok = load_model(score_cfg.model, home)
        lr = cfg.lr or 3 * score_cfg.warmup.lr
        self.train_cfg = lambda epochs, seed: WarmupConfig(
            percent=100.0, epochs=epochs, lr=lr, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
            target_modules=ALL_LINEAR, batch_size=cfg.batch_size, max_length=score_cfg.model.max_length, seed=seed)
        self.items = pair_items(heldout, self.tok, score_cfg.model.max_length)
        self.work = work
        self.cfg, self.fetch, self.tuned = cfg, fetch, 0

    def epochs_for(self, n: int) -> int:
        return finetune_epochs(self.cfg, n)

    def margins(self, example_ids: Sequence[int], seed: int) -> np.ndarray:
        examples = self.fetch([int(i) for i in example_ids])
        self.tuned += 1
        margins, self.model = tuned_margins(self.model, self.tok, examples,
                                            self.train_cfg(self.epochs_for(len(examples)), seed), self.items,
                                            self.work / f"tune{self.tuned}-seed{seed}")
        return margins

    def random_margins(self, ids: np.ndarray, n: int, key, note=lambda k: None) -> np.ndarray:
        """``[draws, pairs]`` margins of ``random_draws`` random selections of ``n`` (draw k: seeded by
        ``key`` and k, fine-tune seed k): the spread a selection must stand out from."""
        from curation.engine.projection import derive_seed
        out = []
        for k in range(self.cfg.random_draws):
            note(k)
            rng = np.random.default_rng(derive_seed("check-random", key, k))
            out.append(self.margins(rng.choice(ids, size=n, replace=False).tolist(), k))
        return np.array(out)

    def close(self) -> None:
        import shutil
        shutil.rmtree(self.work, ignore_errors=True)
