"""The Explore library: the scores frame, cutoffs, explanations and the UMAP map, checked
against an independent numpy computation on a small synthetic run (no model is run)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert, select, text

from curation.config import ScoreConfig, SelectConfig
from curation.data.imports import example_text
from curation.data.store import Decision, Example, Pool, PreferencePair, PreferenceSet, Run, Score, Store
from curation.engine.features import FeatureManifest, FeatureStore
from curation.engine.influence import ScoringInputs, score
from curation.methods.base import ScoreOutput
from curation.review import explore, maps
from curation.runs.execute import store_scores

LRS = [2e-4, 1e-4]
SUBTASKS = ["alpha"] * 3 + ["beta"] * 3  # 2 subtasks x 3 pairs
SOURCES = ["flan", "dolly", "oasst"]


@dataclass
class SyntheticRun:
    run_id: int
    pool: str
    example_ids: list[int]
    train: list[np.ndarray]  # per checkpoint, as stored
    val: list[np.ndarray]
    workdir: Path


def unit(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    x = rng.normal(size=(n, k))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _examples(store: Store, pool: str, n: int) -> list[int]:
    with store.session() as s:
        p = Pool(name=pool, n_examples=n)
        s.add(p)
        s.flush()
        rows = [dict(pool_id=p.id, uid=f"{pool}-{i}", content_hash=hashlib.sha256(f"{pool}{i}".encode()).hexdigest(),
                     source=SOURCES[i % 3], fmt="messages", line=i + 1,
                     messages=[{"role": "user", "content": f"question {i} <b>bold</b>"},
                               {"role": "assistant", "content": f"answer {i}"}],
                     original={}, n_turns=2, prompt_chars=20, response_chars=9, total_chars=29 + i % 50)
                for i in range(n)]
        s.execute(insert(Example), rows)
        ids = list(s.scalars(select(Example.id).where(Example.pool_id == p.id).order_by(Example.id)))
        if store.is_sqlite:  # the pool's text search, as the importer fills it
            s.execute(text("INSERT INTO example_fts(rowid, text) VALUES (:id, :text)"),
                      [{"id": i, "text": example_text(r["messages"])} for i, r in zip(ids, rows)])
        return ids


def _prefs(store: Store, name: str) -> int:
    with store.session() as s:
        ps = PreferenceSet(name=name)
        s.add(ps)
        s.flush()
        for j, sub in enumerate(SUBTASKS):
            s.add(PreferencePair(set_id=ps.id, position=j, prompt=f"pair prompt {j}: question {7 * j}", prompt_messages=[],
                                 chosen=f"good {j}", rejected=f"bad {j}", subtask=sub))
        return ps.id


def _write(fstore: FeatureStore, split: str, i: int, x: np.ndarray, ids: list[int], dtype: str,
           shard_size: int) -> None:
    m = FeatureManifest(model="tiny", tokenizer_hash="t", checkpoint=f"epoch_{i}",
                        projector={"type": "sjlt", "seed": 0, "k": x.shape[1]}, k=x.shape[1],
                        dtype=dtype, example_ids=ids, shard_size=shard_size)
    w = fstore.writer(split, i, m)
    for j, start, end in w.pending_shards():
        w.write_shard(j, x[start:end])


def build_synthetic_run(store: Store, workdir: Path, n: int = 60, k: int = 32, seed: int = 0,
                        shard_size: int = 16, dtype: str = "float32", pool: str = "synthetic",
                        percent: float = 10.0) -> SyntheticRun:
    """A done ROSE run over random unit features: 2 checkpoints, 2 subtasks x 3 pairs.
    Scores go through the library (influence.score, runs.store_scores) like a real run."""
    rng = np.random.default_rng(seed)
    ids = _examples(store, pool, n)
    prefs_id = _prefs(store, pool)
    cfg = ScoreConfig(select=SelectConfig(percent=percent))
    with store.session() as s:
        run = Run(pool_id=s.get(Example, ids[0]).pool_id, prefs_id=prefs_id, method="rose",
                  config=cfg.to_dict(), status="done", workdir=str(workdir), meta={})
        s.add(run)
        s.flush()
        run_id = run.id
    train = [unit(rng, n, k).astype(dtype) for _ in LRS]
    val = [unit(rng, len(SUBTASKS), k).astype(dtype) for _ in LRS]
    fstore = FeatureStore(workdir / "features")
    for i in range(len(LRS)):
        _write(fstore, "train", i, train[i], ids, dtype, shard_size)
        _write(fstore, "val", i, val[i], list(range(len(SUBTASKS))), dtype, shard_size)
    res = score(ScoringInputs([fstore.reader("train", i) for i in range(2)],
                              [fstore.reader("val", i) for i in range(2)], LRS, SUBTASKS))
    out = ScoreOutput(res.scores, res.subtasks, res.subtask_means, res.per_checkpoint, res.driver)
    n_sel = store_scores(store, run_id, ids, out, cfg)
    with store.session() as s:
        r = s.get(Run, run_id)
        r.n_selected, r.meta = n_sel, {"subtasks": res.subtasks, "checkpoint_lrs": LRS}
    return SyntheticRun(run_id, pool, ids, train, val, workdir)


def build_method_run(store: Store, base: SyntheticRun, method: str, ws) -> int:
    """A done run of ``method`` on the synthetic run's pool and pairs, with the files its
    explain() reads, built without a model: BM25, DSIR and random score for real (cheap);
    LESS and NICE reuse the ROSE features (NICE plus a sampled-responses record); RepSim gets
    random unit hidden states, RAISE a random schedule. Returns the run id."""
    import shutil

    from curation.engine.influence import aggregate, subtask_index
    from curation.methods import ScoreInputs, ValPair, get_method
    from curation.methods.base import output_from_means
    from curation.runs.jobs import Reporter

    if method == "rose":
        return base.run_id
    workdir = base.workdir.parent / f"{base.workdir.name}-{method}"
    cfg = ScoreConfig(select=SelectConfig(percent=10.0))
    with store.session() as s:
        rose = s.get(Run, base.run_id)
        run = Run(pool_id=rose.pool_id, prefs_id=rose.prefs_id, method=method, config=cfg.to_dict(), status="done",
                  workdir=str(workdir), meta={})
        s.add(run)
        s.flush()
        run_id = run.id
        pairs = [ValPair(p.prompt, p.prompt_messages, p.chosen, p.rejected, p.subtask)
                 for p in s.scalars(select(PreferencePair).where(PreferencePair.set_id == rose.prefs_id)
                                    .order_by(PreferencePair.position))]
        messages = {e.id: e.messages for e in s.scalars(select(Example).where(Example.id.in_(base.example_ids)))}
    ids, rng = base.example_ids, np.random.default_rng(7)
    index, subtasks = subtask_index([p.subtask for p in pairs])
    meta = {"subtasks": subtasks, "checkpoint_lrs": []}
    if method == "auto":  # an auto run whose winner is BM25: the winner's files and auto.json
        from curation.methods.auto import AUTO_FILE
        inputs = ScoreInputs(example_ids=ids, fetch=lambda some: [messages[i] for i in some], pairs=pairs, config=cfg,
                             workdir=workdir, workspace=ws, reporter=Reporter(None, None))
        out = get_method("bm25").score(inputs)
        (workdir / AUTO_FILE).write_text(json.dumps({"name": "bm25", "parts": {"bm25": "bm25"}, "alpha": None}))
    elif method in ("bm25", "dsir", "random"):
        inputs = ScoreInputs(example_ids=ids, fetch=lambda some: [messages[i] for i in some], pairs=pairs, config=cfg,
                             workdir=workdir, workspace=ws, reporter=Reporter(None, None))
        out = get_method(method).score(inputs)
    elif method == "fusion":  # of the ROSE run with itself: the files its explain() reads
        from curation.runs.execute import load_scores
        cfg.options = {"runs": [base.run_id, base.run_id], "weights": [1.0, 2.0]}
        inputs = ScoreInputs(example_ids=ids, fetch=lambda some: [messages[i] for i in some], pairs=pairs, config=cfg,
                             workdir=workdir, workspace=ws, reporter=Reporter(None, None),
                             scores_of=lambda other: load_scores(store, other))
        out = get_method(method).score(inputs)
    elif method in ("less", "nice", "contrast"):
        shutil.copytree(base.workdir / "features", workdir / "features")
        with store.session() as s:
            comps = {sc.example_id: sc for sc in s.scalars(select(Score).where(Score.run_id == base.run_id))}
        sc = [comps[i] for i in ids]
        means = np.array([[c.components["subtasks"][t] for t in subtasks] for c in sc], np.float32)
        out = output_from_means(means, subtasks, {})
        out.per_checkpoint = np.array([c.components["checkpoints"] for c in sc], np.float32)
        meta["checkpoint_lrs"] = LRS
        if method == "nice":
            record = {"checkpoint": "warmup/epoch_2", "reward": "number", "reward_doc": "final number matches.",
                      "config": {"variant": "sum", "samples": 2, "temperature": 1.0, "top_k": 50, "top_p": 0.95,
                                 "label_free": False},
                      "pairs": [{"pair": j, "subtask": p.subtask, "prompt": p.prompt, "responses": ["7", "8"],
                                 "rewards": [1.0, 0.0], "zero_vector": False} for j, p in enumerate(pairs)]}
            (workdir / "nice").mkdir(parents=True)
            (workdir / "nice" / "epoch_2.json").write_text(json.dumps(record))
    elif method == "repsim":
        T, V = unit(rng, len(ids), 16).astype(np.float32), unit(rng, len(pairs), 16).astype(np.float32)
        (workdir / "repsim").mkdir(parents=True)
        for name, x in (("train.npy", T), ("val.npy", V), ("example_ids.npy", np.asarray(ids, np.int64))):
            np.save(workdir / "repsim" / name, x)
        out = output_from_means(aggregate(T @ V.T, index, len(subtasks)), subtasks, {})
    elif method == "raise":
        from curation.methods.ppo.schedule import Schedule
        from curation.methods.ppo.state import StaticFeatures
        n, arr = len(ids), np.asarray(ids, np.int64)
        schedule = Schedule(arr, rng.choice(arr, (4, 3)), np.zeros((4, 3), np.int32), np.linspace(2, 1, 3),
                            np.array([0, 2]), np.array([0]), rng.random((1, n)).astype(np.float32))
        schedule.save(workdir / "raise")
        StaticFeatures(arr, rng.random((n, 4)) * 10, rng.random((n, 32)).astype(np.float32),
                       (np.arange(n) % 3).astype(np.int32)).save(workdir / "raise", {})
        out = ScoreOutput(schedule.scores().astype(np.float32))
    else:
        raise ValueError(f"build_method_run knows no method {method!r}: add it")
    n_sel = store_scores(store, run_id, ids, out, cfg)
    with store.session() as s:
        r = s.get(Run, run_id)
        r.n_selected, r.meta = n_sel, meta
    return run_id


def reference(run: SyntheticRun) -> dict:
    """Independent float64 computation of the run's scores and geometry."""
    norm = lambda x: x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    w = np.asarray(LRS) / sum(LRS)
    S = [norm(t) @ norm(v).T for t, v in zip(run.train, run.val)]
    C = sum(wi * Si for wi, Si in zip(w, S))
    cols = {name: np.array(SUBTASKS) == name for name in ("alpha", "beta")}
    means = np.stack([C[:, c].mean(1) for c in cols.values()], 1)
    driver = means.argmax(1)
    per_ckpt = np.stack([wi * np.stack([Si[:, c].mean(1) for c in cols.values()], 1)
                         [np.arange(len(C)), driver] for wi, Si in zip(w, S)], 1)
    scores = means.max(1)
    order = np.lexsort((np.array(run.example_ids), -scores))
    rank = np.empty(len(scores), int)
    rank[order] = np.arange(1, len(scores) + 1)
    last = norm(run.train[-1])
    return dict(C=C, S=S, means=means, driver=driver, per_ckpt=per_ckpt, scores=scores, rank=rank,
                neighbour_cos=last @ last.T)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.fixture
def run(store, tmp_path) -> SyntheticRun:
    return build_synthetic_run(store, tmp_path / "run")


def decide(store: Store, run: SyntheticRun, example_id: int, action: str, reason: str = "") -> None:
    with store.session() as s:
        pool_id = s.get(Example, example_id).pool_id
        s.add(Decision(pool_id=pool_id, example_id=example_id, action=action, reason=reason, batch="t"))


# ---------------------------------------------------------------------------- frame and cutoffs


def test_frame_has_every_score_in_rank_order(store, run):
    ref = reference(run)
    df = explore.run_scores_frame(store, run.run_id)
    assert len(df) == 60 and df["rank"].tolist() == list(range(1, 61))
    assert df["score"].dtype == np.float32 and df["rank"].dtype == np.int32
    assert str(df["source"].dtype) == "category" and str(df["override"].dtype) == "category"
    pos = {e: i for i, e in enumerate(run.example_ids)}
    rows = [pos[e] for e in df["example_id"]]
    np.testing.assert_allclose(df["score"], ref["scores"][rows], atol=1e-6)
    assert df["subtask"].tolist() == [["alpha", "beta"][d] for d in ref["driver"][rows]]
    assert df["selected"].sum() == 6 and df["selected"].head(6).all()
    assert df["override"].isna().all() and set(df["state"]) == {"selected", "not selected"}


def test_latest_decision_wins_and_clear_means_none(store, run):
    a, b, c = run.example_ids[:3]
    decide(store, run, a, "pin")
    decide(store, run, b, "pin")
    decide(store, run, b, "exclude")
    decide(store, run, c, "exclude")
    decide(store, run, c, "clear")
    df = explore.run_scores_frame(store, run.run_id).set_index("example_id")
    assert df.loc[a, "override"] == "pin" and df.loc[a, "state"] == "pinned"
    assert df.loc[b, "override"] == "exclude" and df.loc[b, "state"] == "excluded"
    assert df.loc[[c], "override"].isna().all()


def test_cutoff_counts_follow_the_selection_rule(store, run):
    df = explore.run_scores_frame(store, run.run_id)
    cut = explore.cutoff_for(df, percent=10)
    assert (cut.budget, cut.n_kept, cut.n_auto) == (6, 6, 6)
    assert cut.kept.tolist() == [True] * 6 + [False] * 54
    assert cut.score == pytest.approx(float(df["score"].iloc[5]))
    assert explore.cutoff_for(df, n=11).n_kept == 11
    assert explore.cutoff_for(df, percent=100).n_kept == 60
    top, low = int(df["example_id"].iloc[0]), int(df["example_id"].iloc[40])
    decide(store, run, top, "exclude")
    decide(store, run, low, "pin")
    df = explore.run_scores_frame(store, run.run_id)
    cut = explore.cutoff_for(df, percent=10)
    kept = set(df["example_id"][cut.kept])
    assert (cut.n_kept, cut.n_pinned, cut.n_excluded, cut.n_auto) == (6, 1, 1, 5)
    assert low in kept and top not in kept
    assert kept - {low} == set(df["example_id"].iloc[1:6])


def test_summaries_count_every_example(store, run):
    df = explore.run_scores_frame(store, run.run_id)
    cut = explore.cutoff_for(df, percent=20)
    by_source = explore.summary_by(df, "source", cut.kept)
    assert by_source["examples"].sum() == 60 and by_source["kept"].sum() == 12
    assert set(by_source["source"]) == set(SOURCES)
    by_sub = explore.summary_by(df, "subtask")
    assert by_sub["kept"].sum() == 6
    for _, row in by_sub.iterrows():
        assert row["examples"] == (df["subtask"] == row["subtask"]).sum()


def test_checkpoint_breakdown_averages_the_selected(store, run):
    ref = reference(run)
    sel = np.argsort(ref["rank"])[:6]
    out = explore.checkpoint_breakdown(store, run.run_id)
    np.testing.assert_allclose(out["mean_contribution"], ref["per_ckpt"][sel].mean(0), atol=1e-5)
    np.testing.assert_allclose(out["weight"], np.asarray(LRS) / sum(LRS))
    assert out["share"].sum() == pytest.approx(1.0)


# ---------------------------------------------------------------------------- explanations


@pytest.mark.parametrize("position", [0, 17, 59])
def test_explain_matches_numpy(store, run, position):
    ref = reference(run)
    eid = run.example_ids[position]
    exp = explore.explain(store, run.run_id, eid, n_pairs=4, n_neighbours=5)
    assert exp.score == pytest.approx(ref["scores"][position], abs=1e-6)
    assert exp.rank == ref["rank"][position] and exp.n_total == 60
    assert exp.percentile == pytest.approx(100 * (60 - exp.rank) / 60)
    assert exp.subtask_means == pytest.approx(dict(zip(("alpha", "beta"), ref["means"][position])), abs=1e-6)
    assert exp.driver == ["alpha", "beta"][ref["driver"][position]]
    contrib = [c.contribution for c in exp.checkpoints]
    np.testing.assert_allclose(contrib, ref["per_ckpt"][position], atol=1e-6)
    assert sum(contrib) == pytest.approx(exp.score, abs=1e-5)
    assert [c.weight for c in exp.checkpoints] == pytest.approx(np.asarray(LRS) / sum(LRS))
    order = np.lexsort((np.arange(6), -ref["C"][position]))[:4]
    assert [p.val_row for p in exp.val_pairs] == order.tolist()
    np.testing.assert_allclose([p.value for p in exp.val_pairs], ref["C"][position][order], atol=1e-6)
    np.testing.assert_allclose(exp.val_pairs[0].per_checkpoint,
                               [S[position, order[0]] for S in ref["S"]], atol=1e-6)
    assert exp.val_pairs[0].prompt == f"pair prompt {order[0]}: question {7 * order[0]}"
    assert exp.val_pairs[0].subtask == SUBTASKS[order[0]]
    assert exp.messages[0]["content"] == f"question {position} <b>bold</b>"


def test_neighbours_are_exact_and_exclude_self(store, run):
    ref = reference(run)
    for position in (0, 31):
        eid = run.example_ids[position]
        cos = ref["neighbour_cos"][position].copy()
        cos[position] = -np.inf
        order = np.lexsort((np.array(run.example_ids), -cos))[:5]
        exp = explore.explain(store, run.run_id, eid, n_pairs=0, n_neighbours=5)
        assert [nb.example_id for nb in exp.neighbours] == [run.example_ids[j] for j in order]
        np.testing.assert_allclose([nb.cosine for nb in exp.neighbours], cos[order], atol=1e-6)
        assert eid not in [nb.example_id for nb in exp.neighbours]
        assert exp.neighbours[0].rank == ref["rank"][order[0]]


def test_neighbours_do_not_depend_on_shard_size(store, tmp_path):
    a = build_synthetic_run(store, tmp_path / "a", shard_size=7, pool="a")
    b = build_synthetic_run(store, tmp_path / "b", shard_size=60, pool="b")
    ra = FeatureStore(a.workdir / "features").reader("train", 1)
    rb = FeatureStore(b.workdir / "features").reader("train", 1)
    na = [c for _, c in explore.nearest_neighbours(ra, 5, 8)]
    nb = [c for _, c in explore.nearest_neighbours(rb, 5, 8)]
    np.testing.assert_allclose(na, nb, atol=1e-6)


def test_explain_says_why(store, run):
    df = explore.run_scores_frame(store, run.run_id)
    top, low = int(df["example_id"].iloc[0]), int(df["example_id"].iloc[-1])
    exp = explore.explain(store, run.run_id, top, n_pairs=0, n_neighbours=0)
    assert exp.status == "selected" and "within the top 10%" in exp.why
    assert explore.explain(store, run.run_id, low, 0, 0).status == "not selected"
    decide(store, run, low, "pin", "rare skill")
    exp = explore.explain(store, run.run_id, low, 0, 0)
    assert exp.status == "pinned" and exp.override == "pin" and "rare skill" in exp.why


def test_explain_unknown_example_is_a_user_error(store, run):
    from curation.errors import CurationError
    with pytest.raises(CurationError):
        explore.explain(store, run.run_id, 10**9)


def test_explain_without_features_notes_it(store, run):
    import shutil
    shutil.rmtree(run.workdir / "features")
    exp = explore.explain(store, run.run_id, run.example_ids[0])
    assert exp.val_pairs == [] and exp.neighbours == [] and exp.notes


# ---------------------------------------------------------------------------- every method's evidence

# What each registered method's inspector must show beyond the common parts: its evidence
# titles (from its explain()). A method missing here fails the test: say what it shows.
EVIDENCE = {"rose": [], "less": [], "nice": ["Sampled responses (last checkpoint)", "Reward"],
            "bm25": ["best-matching validation pair", "matching terms"],
            "dsir": ["target subtask", "n-grams by contribution"], "random": [],
            "raise": ["State features", "Selection history", "Steps that train on it"],
            "repsim": ["most similar validation pairs"], "contrast": [], "fusion": ["Ranks in the input runs"],
            "auto": ["best-matching validation pair", "matching terms"]}  # auto: its winner's (BM25 here)


def test_every_registered_method_declares_its_labels():
    from curation.methods import REGISTRY
    from curation.methods.base import Method
    from curation.methods.gradient import GradientMethod
    assert set(REGISTRY) == set(EVIDENCE)
    for name, cls in REGISTRY.items():
        labels = cls.labels
        assert labels is not Method.labels and labels.name and labels.score, name
        assert labels.gradient == issubclass(cls, GradientMethod), name
        assert ("gradient" in (labels.subtask_title or "")) == labels.gradient, name
    assert REGISTRY["bm25"].labels.subtask_title == "Mean BM25 score per subtask"
    assert REGISTRY["rose"].labels.subtask_title == "Mean gradient cosine per subtask"
    assert REGISTRY["random"].labels.subtask_title is None and "random" in REGISTRY["random"].labels.score


@pytest.mark.parametrize("method", sorted(EVIDENCE))
def test_inspector_shows_each_methods_own_evidence(store, run, method, tmp_path):
    from curation.methods import get_method
    from curation.workspace import Workspace
    run_id = build_method_run(store, run, method, Workspace.from_env(tmp_path / "ws").ensure())
    df = explore.run_scores_frame(store, run_id)
    exp = explore.explain(store, run_id, int(df["example_id"].iloc[0]))
    labels = explore.effective_labels(store, run_id)  # the method's own; an auto run's: its winner's (BM25)
    assert labels == get_method("bm25" if method == "auto" else method).labels
    assert exp.labels == labels
    assert list(exp.evidence) == EVIDENCE[method]
    assert exp.reasons[0] == f"{labels.name} score: {labels.score}."
    assert bool(exp.neighbours) == labels.gradient and bool(exp.checkpoints) == labels.gradient
    assert bool(exp.val_pairs) == bool(labels.per_pair)
    if labels.per_subtask:
        assert any(labels.per_subtask in r and "Driven mostly by subtask" in r for r in exp.reasons)
        assert explore.subtask_frame(exp).columns.tolist() == ["subtask", labels.per_subtask, "driver"]
    else:  # a fusion says which input run ranked it where (`Method.reason`)
        assert len(exp.reasons) == 1 + (method == "fusion")
    if labels.per_pair:  # the last shared sentence (auto adds "Auto chose ..." after it)
        pid = {p.val_row: p.pair_id for p in exp.val_pairs}
        said = exp.reasons[-1 - (method == "auto")]
        assert f"pair id {pid[exp.val_pairs[0].val_row]}" in said and labels.per_pair in said
    text = " ".join(exp.reasons)
    assert ("cosine" in text) == (method in ("rose", "less", "nice", "repsim", "contrast"))  # BM25 is never a cosine
    assert not exp.notes


def test_bm25_pairs_are_ranked_by_their_bm25_score(store, run, tmp_path):
    from curation.methods import get_method
    from curation.workspace import Workspace
    run_id = build_method_run(store, run, "bm25", Workspace.from_env(tmp_path / "ws").ensure())
    df = explore.run_scores_frame(store, run_id)
    eid = int(df["example_id"].iloc[0])
    exp = explore.explain(store, run_id, eid, n_pairs=6)
    terms = exp.evidence["matching terms"]
    assert exp.val_pairs[0].value == pytest.approx(sum(t["contribution"] for t in terms), rel=1e-3)
    assert [p.value for p in exp.val_pairs] == sorted((p.value for p in exp.val_pairs), reverse=True)
    means = {t: np.mean([p.value for p in exp.val_pairs if p.subtask == t]) for t in ("alpha", "beta")}
    assert exp.subtask_means == pytest.approx(means, rel=1e-4)  # the pairs average to the subtask means
    assert get_method("bm25").pair_scores(run.workdir, eid, exp.messages, []) is None  # no index there


# ---------------------------------------------------------------------------- "why", in words


def hand_made(means: dict, parts: list[float], score: float | None = None, method: str = "rose",
              pairs: list | None = None) -> explore.Explanation:
    exp = explore.Explanation(
        run_id=1, example_id=1, uid="u", source="s", score=max(means.values()) if score is None else score,
        rank=1, n_total=10, percentile=90.0, selected=True, override=None, status="selected", why="",
        driver=max(means, key=means.get) if means else None, subtask_means=means,
        checkpoints=[explore.CheckpointPart(f"ckpt {i + 1}", None, None, c) for i, c in enumerate(parts)],
        val_pairs=pairs or [], neighbours=[], messages=[], labels=explore.method_labels(method))
    exp.reasons = explore.reasons_for(exp)
    return exp


def test_reasons_name_the_subtask_the_checkpoint_and_the_pair():
    pair = explore.AlignedPair(2, 17, "arith", 0.61234, (0.5, 0.7), "p", "c", "r", False)
    exp = hand_made({"arith": 0.42134, "logic": 0.120987, "code": -0.3}, [0.05, 0.11, 0.26134], pairs=[pair])
    assert exp.reasons[1:] == [
        "Driven mostly by subtask 'arith' (mean gradient cosine 0.42, 0.30 above 'logic').",
        "Checkpoint 3 of 3 gives 62% of the score (0.26 of 0.42).",
        "Its most aligned pair is pair id 17 (subtask 'arith', gradient cosine 0.61)."]
    assert explore.pair_heading(pair, exp.labels) == "pair id 17 · subtask arith · gradient cosine 0.61"
    one = hand_made({"arith": 0.2}, [0.2])
    assert one.reasons[1:] == ["Scored on its only subtask 'arith' (mean gradient cosine 0.20)."]
    tied = hand_made({"a": 0.5, "b": 0.5}, [0.3, -0.1, 0.3], score=0.5)
    assert "'a' (mean gradient cosine 0.50, tied with 'b')" in tied.reasons[1]
    assert tied.reasons[2] == "Checkpoint 1 of 3 contributes the most: 0.30 of 0.50."
    dsir = hand_made({"a": -63.31, "b": -63.47}, [], score=-59.22, method="dsir")
    assert dsir.reasons[1] == ("Driven mostly by subtask 'a' (log importance weight -63.3, 0.16 above 'b'). "
                               "The score, -59.2, adds 4.09 of seeded resampling noise.")
    rand = hand_made({}, [], score=0.3, method="random")
    assert rand.reasons == [f"Random score: {explore.method_labels('random').score}."] and "random" in rand.reasons[0]


def test_numbers_are_rounded_for_people():
    assert [explore.people(x) for x in (0.123456789, 3.14159, 12.3456, 1234.5, 0.0012345, 0, -0.42, None,
                                        float("nan"))] == \
        ["0.12", "3.14", "12.3", "1,234", "0.0012", "0", "-0.42", "–", "–"]
    assert explore.excerpt("a  b\n c" + "x" * 100, 10) == "a b cxxxx…" and explore.excerpt("short", 10) == "short"


def test_neighbours_and_tables_carry_text_not_only_ids(store, run):
    exp = explore.explain(store, run.run_id, run.example_ids[3])
    nb = exp.neighbours[0]
    position = run.example_ids.index(nb.example_id)
    assert nb.prompt == f"question {position} <b>bold</b>" and nb.response == f"answer {position}"
    table = explore.neighbour_frame(exp)
    assert table.columns.tolist() == ["rank", "score", "cosine", "uid", "source", "prompt", "response"]
    assert (table["cosine"] == table["cosine"].round(3)).all()
    ck = explore.checkpoint_frame(exp)
    assert ck["checkpoint"].tolist() == [1, 2] and ck["share"].str.endswith("%").all()
    assert all(p.pair_id is not None and p.number == f"pair id {p.pair_id}" for p in exp.val_pairs)


def test_find_examples_by_id_uid_and_text(store, run):
    df = explore.run_scores_frame(store, run.run_id)
    rank_of = dict(zip(df["example_id"], df["rank"]))
    eid = run.example_ids[17]
    by_id = explore.find_examples(store, run.run_id, df, str(eid))
    assert by_id.table["example_id"].iloc[0] == eid and by_id.table["match"].iloc[0] == "id"
    assert by_id.ranks[0] == rank_of[eid]
    by_uid = explore.find_examples(store, run.run_id, df, "synthetic-17")
    assert by_uid.n_matches == 1 and by_uid.table["match"].tolist() == ["uid"]
    part = explore.find_examples(store, run.run_id, df, "SYNTHETIC-1")
    assert part.n_matches == 11 and part.table["uid"].iloc[0] == "synthetic-1"  # exact uid first
    assert part.ranks[1:] == sorted(part.ranks[1:])  # then best-ranked first
    words = explore.find_examples(store, run.run_id, df, "question 17")
    assert words.n_matches == 1 and words.table["match"].tolist() == ["text"]
    assert words.table["prompt"].iloc[0] == "question 17 <b>bold</b>"
    assert explore.find_examples(store, run.run_id, df, "no such words").n_matches == 0
    assert explore.find_examples(store, run.run_id, df, "   ").n_matches == 0
    assert len(explore.find_examples(store, run.run_id, df, "answer", limit=5).table) == 5


def test_step_rank_stays_inside_the_run(store, run):
    assert [explore.step_rank(r, d, 60) for r, d in ((1, -1), (1, 1), (60, 1), (30, -1), (99, 0))] == [1, 2, 60, 29, 60]
    df = explore.run_scores_frame(store, run.run_id)
    assert explore.rank_of(df, int(df["example_id"].iloc[7])) == 8 and explore.rank_of(df, 10**9) is None


def test_selection_preview_says_what_pin_and_exclude_would_change(store, run):
    df = explore.run_scores_frame(store, run.run_id)
    top = df["example_id"].tolist()
    decide(store, run, top[1], "exclude")
    decide(store, run, top[40], "pin")
    df = explore.run_scores_frame(store, run.run_id)
    cut = explore.cutoff_for(df, percent=10)
    ids = top[:4] + top[40:50]
    preview = explore.selection_preview(store, df, ids, cut.kept, limit=5)
    assert (preview.n, preview.n_pinned, preview.n_excluded) == (14, 1, 1)
    kept = set(df["example_id"][cut.kept])
    assert preview.n_kept == len(kept & set(ids)) == 4  # ranks 1, 3, 4 and the pin
    assert preview.table["example_id"].tolist() == [top[0], top[1], top[2], top[3], top[40]]
    assert preview.table["kept"].tolist() == [True, False, True, True, True]
    assert preview.table["state"].tolist()[:2] == ["selected", "excluded"]
    assert preview.table["prompt"].iloc[0].startswith("question ")
    assert preview.summary.startswith("14 examples in the map selection: 4 kept now, 1 pinned, 1 excluded.")
    assert "Pin would keep the 10 not kept now" in preview.summary and "best-ranked 5" in preview.summary


def test_map_hover_and_pair_markers_are_escaped_text(store, run):
    df = explore.run_scores_frame(store, run.run_id)
    eid = int(df["example_id"].iloc[0])
    hover = explore.map_hover(store, df, [eid])[0]
    position = run.example_ids.index(eid)
    assert hover == (f"rank 1 · score {explore.people(float(df['score'].iloc[0]))} · {SOURCES[position % 3]}"
                     f"<br>question {position} &lt;b&gt;bold&lt;/b&gt;")
    labels, pair_hover = explore.pair_markers(store, run.run_id)
    assert labels == SUBTASKS and pair_hover[0].startswith("pair id ") and "subtask alpha<br>pair prompt 0" in pair_hover[0]


# ---------------------------------------------------------------------------- the map


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory) -> Path:
    """300 clustered train points and 6 val points, features only (no database)."""
    root = tmp_path_factory.mktemp("mapped")
    rng = np.random.default_rng(1)
    centres = unit(rng, 4, 48)
    train = unit(rng, 300, 48) * 0.4 + centres[np.arange(300) % 4]
    val = unit(rng, 6, 48) * 0.4 + centres[np.arange(6) % 4]
    fstore = FeatureStore(root / "features")
    for i in range(2):
        _write(fstore, "train", i, train, list(range(100, 400)), "float16", 64)
        _write(fstore, "val", i, val, list(range(6)), "float16", 64)
    return root


def test_map_shapes_and_determinism(feature_dir, tmp_path):
    maps.compute_map(feature_dir, seed=3)
    first = maps.load_map(feature_dir)
    assert first.xy.shape == (300, 2) and first.xy.dtype == np.float32
    assert first.val_xy.shape == (6, 2) and np.isfinite(first.val_xy).all()
    assert first.example_ids.tolist() == list(range(100, 400)) and first.fitted.all()
    assert first.meta["seed"] == 3 and first.meta["n"] == 300 and first.meta["checkpoint"] == 1
    assert maps.map_status(feature_dir)["state"] == "done"
    maps.compute_map(feature_dir, seed=3)
    np.testing.assert_array_equal(maps.load_map(feature_dir).xy, first.xy)


def test_map_samples_then_transforms(feature_dir):
    maps.compute_map(feature_dir, seed=0, max_points=120)
    m = maps.load_map(feature_dir)
    assert m.fitted.sum() == 120 and m.meta["n_fit"] == 120
    assert m.xy.shape == (300, 2) and np.isfinite(m.xy).all() and np.isfinite(m.val_xy).all()
    # the clusters survive: a transformed point lands nearer its cluster than the others do
    cluster = (m.example_ids - 100) % 4
    centre = np.stack([m.xy[m.fitted & (cluster == c)].mean(0) for c in range(4)])
    nearest = np.linalg.norm(m.xy[~m.fitted, None] - centre[None], axis=2).argmin(1)
    assert (nearest == cluster[~m.fitted]).mean() > 0.9


def test_selection_geometry():
    xy = np.array([[0, 0], [1, 1], [2, 2], [5, 5], [1, 4]], np.float32)
    data = maps.MapData(xy, np.arange(10, 15), np.empty((0, 2), np.float32), np.ones(5, bool), {})
    box = {"box": [{"x": [1.5, 0.5], "y": [0.5, 4.5]}], "lasso": [], "points": []}
    assert maps.ids_in_selection(data, box).tolist() == [11, 14]
    tri = {"lasso": [{"x": [-1, 3, 3], "y": [-1, -1, 3]}], "points": [{"customdata": [13]}]}
    assert maps.ids_in_selection(data, tri).tolist() == [10, 11, 12, 13]
    rng = np.random.default_rng(0)
    pts = rng.uniform(-2, 2, size=(500, 2))
    square = maps.inside_polygon(pts, [-1, 1, 1, -1], [-1, -1, 1, 1], chunk=64)
    assert (square == (np.abs(pts) < 1).all(1)).all()


def test_status_reports_a_dead_job_as_failed(tmp_path):
    assert maps.map_status(tmp_path)["state"] == "missing"
    (tmp_path / "map").mkdir()
    (tmp_path / "map" / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 7}))
    status = maps.map_status(tmp_path)
    assert status["state"] == "failed" and "ended" in status["error"]


def test_launch_map_runs_in_the_background(store, run, monkeypatch):
    monkeypatch.setenv("CURATION_HOME", str(run.workdir.parent / "ws"))
    monkeypatch.setenv("CURATION_DB_URL", store.url)
    pid = maps.launch_map(store, run.run_id)
    assert pid > 0 and maps.map_status(run.workdir)["state"] in ("queued", "running", "done")
    deadline = time.time() + 180
    while maps.map_status(run.workdir)["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
    status = maps.map_status(run.workdir)
    assert status["state"] == "done", (status, (run.workdir / "map" / "map.log").read_text())
    assert maps.load_map(run.workdir).xy.shape == (60, 2)


def scatter_traces(fig) -> list:
    """The example traces (the stars are the last trace)."""
    return [t for t in fig.data[:-1] if t.type == "scattergl"]


def test_map_figure_draws_a_seeded_sample_with_ids():
    import pandas as pd
    rng = np.random.default_rng(0)
    data = maps.MapData(rng.normal(size=(500, 2)).astype(np.float32), np.arange(1000, 1500),
                        np.zeros((3, 2), np.float32), np.ones(500, bool), {})
    states = pd.Categorical(rng.choice(["pinned", "selected", "not selected"], 500),
                            categories=["pinned", "excluded", "selected", "not selected"])
    fig = maps.map_figure(data, states, ["a", "b", "c"], max_drawn=200)
    drawn = np.concatenate([t.customdata for t in scatter_traces(fig)])
    assert len(drawn) == 200 and set(drawn) <= set(range(1000, 1500))
    assert fig.data[0].type == "heatmap" and np.nansum(np.expm1(fig.data[0].z)) == pytest.approx(500)
    assert fig.data[-1].name == "validation pairs" and list(fig.data[-1].text) == ["a", "b", "c"]
    again = maps.map_figure(data, states, [], max_drawn=200)
    assert np.array_equal(np.concatenate([t.customdata for t in scatter_traces(again)]), drawn)
    scored = maps.map_figure(data, np.linspace(0, 1, 500, dtype=np.float32), [], max_drawn=1000)
    assert [t.type for t in scored.data] == ["scattergl", "scattergl"] and len(scored.data[0].marker.color) == 500


def test_map_contrast_labels_and_legend():
    """Selected points saturated over light-grey unselected ones (drawn first, underneath); the
    pairs' stars carry their subtask as text, escaped; the legend sits above the plot, clear
    of the colour bar on the right."""
    import pandas as pd
    data = maps.MapData(np.arange(8, dtype=np.float32).reshape(4, 2), np.arange(4), np.zeros((2, 2), np.float32),
                        np.ones(4, bool), {})
    states = pd.Categorical(["selected", "not selected", "pinned", "not selected"],
                            categories=["pinned", "excluded", "selected", "not selected"])
    fig = maps.map_figure(data, states, ["arith", "<b>x</b>"], val_hover=["pair id 1", "pair id 2"])
    names = [t.name for t in scatter_traces(fig)]
    assert names[0] == "not selected" and set(names) == {"not selected", "selected", "pinned", "excluded"}
    colour = {t.name: t.marker.color for t in scatter_traces(fig)}
    assert colour["not selected"] == maps.STATE_COLOURS["not selected"] == "#d4d4d4"
    assert colour["selected"] == "#2166ac" and colour["pinned"] != colour["excluded"]
    stars = fig.data[-1]
    assert stars.mode == "markers+text" and list(stars.text) == ["arith", "&lt;b&gt;x&lt;/b&gt;"]
    assert list(stars.hovertext) == ["pair id 1", "pair id 2"]
    scored = maps.map_figure(data, np.arange(4, dtype=np.float32), [])
    assert scored.layout.legend.orientation == "h" and scored.layout.legend.y > 1
    assert scored.data[0].marker.showscale and scored.data[0].marker.colorbar.title.text == "score"


def test_drawn_rows_keep_the_selection_and_every_cell():
    rng = np.random.default_rng(3)
    xy = np.concatenate([rng.normal(size=(20_000, 2)), [[40.0, 40.0], [-40.0, 40.0]]]).astype(np.float32)
    keep = np.zeros(len(xy), bool)
    keep[rng.choice(20_000, 300, replace=False)] = True
    rows = maps.drawn_rows(xy, cap=2000, keep=keep, seed=0, grid=16)
    assert len(rows) == 2000 and np.all(np.diff(rows) > 0)
    assert set(np.flatnonzero(keep)) <= set(rows)  # every selected point is drawn
    assert {20_000, 20_001} <= set(rows)  # the lone outliers' cells are drawn too
    assert np.array_equal(rows, maps.drawn_rows(xy, cap=2000, keep=keep, seed=0, grid=16))
    assert not np.array_equal(rows, maps.drawn_rows(xy, cap=2000, keep=keep, seed=1, grid=16))
    many = np.ones(len(xy), bool)
    many[:5000] = False  # 17k "kept": they get half, the unselected the other half
    rows = maps.drawn_rows(xy, cap=2000, keep=many, seed=0)
    assert len(rows) == 2000 and (~many[rows]).sum() == 1000
    assert len(maps.drawn_rows(xy[:100], cap=2000)) == 100


def test_a_million_point_map_draws_the_cap_and_selects_every_point():
    """A 1M-point map: at most `DRAW_CAP` points reach the browser (plus a fixed-size density
    layer), the selected ones all among them, and a box over a region returns every example
    inside it, drawn or not."""
    import pandas as pd
    n = 1_000_000
    rng = np.random.default_rng(0)
    data = maps.MapData(rng.normal(size=(n, 2)).astype(np.float32), np.arange(n, dtype=np.int64) + 10,
                        rng.normal(size=(6, 2)).astype(np.float32), np.zeros(n, bool), {})
    keep = np.zeros(n, bool)
    keep[rng.choice(n, 5000, replace=False)] = True
    states = pd.Categorical(np.where(keep, "selected", "not selected"), categories=explore.STATES)
    rows = maps.drawn_rows(data.xy, maps.DRAW_CAP, keep)
    fig = maps.map_figure(data, states, ["a"] * 6, rows=rows)
    drawn = np.concatenate([t.customdata for t in scatter_traces(fig)])
    assert len(drawn) == maps.DRAW_CAP == len(rows) and len(np.unique(drawn)) == len(drawn)
    assert set(data.example_ids[keep]) <= set(drawn)
    heat = fig.data[0]
    assert heat.type == "heatmap" and np.asarray(heat.z).size == maps.DENSITY_BINS ** 2
    box = {"box": [{"x": [0.0, 0.5], "y": [0.0, 0.5]}], "lasso": [], "points": []}
    inside = ((data.xy[:, 0] >= 0) & (data.xy[:, 0] <= 0.5) & (data.xy[:, 1] >= 0) & (data.xy[:, 1] <= 0.5))
    picked = maps.ids_in_selection(data, box)
    assert np.array_equal(picked, data.example_ids[inside])
    assert len(np.setdiff1d(picked, drawn)) > len(picked) / 2  # mostly ones the browser never got
