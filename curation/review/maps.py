"""A 2-D map of a run's gradient features: PCA to 50 dims, then UMAP (run in the background).

Which features: the train features of the *last* warmup checkpoint. One checkpoint keeps the
input at k dims (not k x n_ckpt); the last adapter is the one closest to the model that will
be fine-tuned, and its Adam moments are the most settled. It is the space the inspector's
nearest neighbours use, so the map and the neighbour list agree. (The score itself weighs
every checkpoint; a map of ``concat(sqrt(w_i) T_i)`` would reproduce its geometry exactly, at
n_ckpt times the cost.)

How: rows are L2-normalised (cosine geometry), PCA is fitted on a seeded sample of at most
`PCA_FIT_ROWS` rows, every row is projected shard by shard (memory: n x 50 float32). UMAP
is fitted on a seeded sample of at most ``max_points`` rows and every other row is placed
with ``transform``; the validation pairs' vectors (val split, same checkpoint) are placed the
same way, so they show which neighbourhood of the pool each pair pulls towards.

Nearest neighbours are exact (sklearn, brute force over BLAS) and handed to UMAP as a sparse
precomputed distance graph. Why: umap's own small-data path calls a Python distance per
pair (20 s for 3000 points) and its NN-descent path compiles for about a minute on 2 cores;
this way the 3000-example demo maps in seconds. The cost is O(n_fit x n) distance
evaluations: minutes at 200k fitted points.

Drawing (`map_figure`): a browser gets at most `DRAW_CAP` points (Streamlit's page dies near
280k): every selected, pinned and excluded one plus a seeded sample of the rest stratified over
the layout (`drawn_rows`), over a grey density layer of all points. Selections are resolved
server-side against every point (`ids_in_selection`), so a lasso covers the undrawn ones too.

On disk (``workdir/map/``): ``map.npz`` (xy float32 [n, 2], example_ids int64, val_xy float32,
fitted bool) and ``map.json`` (seed, n, method, timings), each written atomically, plus
``status.json`` (queued | running | done | failed, error, pid) for the background job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from curation.engine.features import FeatureReader, FeatureStore, atomic_write
from curation.engine.influence import normalise_rows
from curation.errors import CurationError
from curation.workspace import Workspace

MAP_DIR, ARRAYS, META, STATUS, LOG = "map", "map.npz", "map.json", "status.json", "map.log"
PCA_DIMS = 50
PCA_FIT_ROWS = 20_000  # enough for 50 components; bounds the PCA input to 20k x k floats
N_NEIGHBOURS = 15
N_EPOCHS = 200  # umap's default for n > 10k; enough for a browsing map, half the small-n default
MIN_POINTS = 5


@dataclass
class MapData:
    """A computed map: what `compute_map` saves and `load_map` returns."""

    xy: np.ndarray  # [n, 2] float32, one row per train example
    example_ids: np.ndarray  # [n] int64
    val_xy: np.ndarray  # [n_val, 2] float32, the validation pairs in feature-row order
    fitted: np.ndarray  # [n] bool: fitted by UMAP (True) or placed by transform (False)
    meta: dict[str, Any]


def map_dir(workdir: Path) -> Path:
    """Where a run's map and its job status live."""
    return Path(workdir) / MAP_DIR


def sample_rows(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded sample of ``min(n, max_points)`` rows (all when n fits)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


# ---------------------------------------------------------------------------- computing


def last_checkpoint(fstore: FeatureStore) -> int:
    """Index of the last complete train checkpoint; raises when there is none."""
    i = 0
    while fstore.exists("train", i):
        i += 1
    if i == 0:
        raise CurationError(f"no complete train features under {fstore.root}")
    return i - 1


def gather_rows(reader: FeatureReader, rows: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows ``rows`` (sorted) of a split, read shard by shard."""
    out = np.empty((len(rows), reader.k), np.float32)
    for start, end, block in reader.iter_shards():
        lo, hi = np.searchsorted(rows, [start, end])
        if hi > lo:
            out[lo:hi] = block[rows[lo:hi] - start]
    return normalise_rows(out)


def _fit_pca(reader: FeatureReader, seed: int):
    """PCA on a seeded sample of normalised rows (randomised SVD: 50 of k=8192 components)."""
    from sklearn.decomposition import PCA

    x = gather_rows(reader, sample_rows(reader.n, PCA_FIT_ROWS, seed))
    dims = min(PCA_DIMS, len(x), reader.k)
    return PCA(n_components=dims, svd_solver="randomized" if dims < min(x.shape) else "full",
               random_state=seed).fit(x)


def _project(reader: FeatureReader, pca) -> np.ndarray:
    """Every train row through the PCA, shard by shard: [n, dims] float32."""
    out = np.empty((reader.n, pca.n_components_), np.float32)
    for start, end, block in reader.iter_shards():
        out[start:end] = pca.transform(normalise_rows(block))
    return out


def _knn_graph(nn, query: np.ndarray, n_fit: int, symmetric: bool) -> sp.csr_matrix:
    """Sparse [len(query), n_fit] distances to the nearest fitted rows, as UMAP's precomputed
    metric wants them: the fit graph symmetric with an exact-zero diagonal."""
    dist, idx = nn.kneighbors(query)
    dist = dist.astype(np.float32)
    n, k = idx.shape
    rows = np.repeat(np.arange(n), k)
    if not symmetric:
        return sp.csr_matrix((dist.ravel(), (rows, idx.ravel())), shape=(n, n_fit))
    dist[idx == rows.reshape(n, k)] = 0.0  # self-distance, exactly
    r, c = np.concatenate([rows, idx.ravel()]), np.concatenate([idx.ravel(), rows])
    _, first = np.unique(r.astype(np.int64) * n_fit + c, return_index=True)
    v = np.concatenate([dist.ravel(), dist.ravel()])
    return sp.coo_matrix((v[first], (r[first], c[first])), shape=(n, n_fit)).tocsr()


def _umap(P: np.ndarray, fit_rows: np.ndarray, extra: list[np.ndarray], seed: int,
          timings: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """UMAP of ``P[fit_rows]``; the other rows of P and every array of ``extra`` transformed."""
    import umap
    from sklearn.neighbors import NearestNeighbors

    fit = P[fit_rows]
    k = min(N_NEIGHBOURS, len(fit) - 1)
    t = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(fit)
    graph = _knn_graph(nn, fit, len(fit), symmetric=True)
    timings["knn_s"] = time.perf_counter() - t
    init = fit[:, :2] * (10.0 / max(float(np.abs(fit[:, :2]).max()), 1e-12))  # umap's pca init
    reducer = umap.UMAP(n_neighbors=k, metric="precomputed", init=init, n_epochs=N_EPOCHS,
                        random_state=seed, transform_seed=seed, low_memory=True)
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": wanted, seeded
        warnings.simplefilter("ignore", UserWarning)
        t = time.perf_counter()
        xy = np.empty((len(P), 2), np.float32)
        xy[fit_rows] = reducer.fit_transform(graph)
        timings["umap_fit_s"] = time.perf_counter() - t
        t = time.perf_counter()
        rest = np.setdiff1d(np.arange(len(P)), fit_rows)
        placed = [_transform(reducer, nn, q, len(fit)) for q in [P[rest], *extra]]
        timings["transform_s"] = time.perf_counter() - t
    xy[rest] = placed[0]
    return xy, placed[1:]


def _transform(reducer, nn, query: np.ndarray, n_fit: int) -> np.ndarray:
    if not len(query):
        return np.empty((0, 2), np.float32)
    return reducer.transform(_knn_graph(nn, query, n_fit, symmetric=False)).astype(np.float32)


def compute_map(workdir: Path, seed: int = 0, max_points: int = 200_000) -> Path:
    """Compute and save the map of a run's features; returns ``workdir/map``.

    Deterministic for a seed (UMAP runs single-threaded when seeded).
    """
    t0 = time.perf_counter()
    fstore = FeatureStore(Path(workdir) / "features")
    ckpt = last_checkpoint(fstore)
    reader = fstore.reader("train", ckpt)
    if reader.n < MIN_POINTS:
        raise CurationError(f"a map needs at least {MIN_POINTS} examples, the run has {reader.n}")
    timings: dict[str, float] = {}
    pca = _fit_pca(reader, seed)
    P = _project(reader, pca)
    timings["pca_s"] = time.perf_counter() - t0
    val = ([pca.transform(normalise_rows(fstore.reader("val", ckpt).load_all()))]
           if fstore.exists("val", ckpt) else [np.empty((0, P.shape[1]), np.float32)])
    fit_rows = sample_rows(reader.n, max_points, seed)
    xy, (val_xy,) = _umap(P, fit_rows, val, seed, timings)
    fitted = np.zeros(reader.n, bool)
    fitted[fit_rows] = True
    timings["total_s"] = time.perf_counter() - t0
    meta = {"seed": seed, "n": reader.n, "n_fit": len(fit_rows), "n_val": len(val_xy),
            "max_points": max_points, "checkpoint": ckpt, "features": reader.manifest.fingerprint(),
            "method": f"pca{pca.n_components_}+umap(n_neighbors={min(N_NEIGHBOURS, len(fit_rows) - 1)}"
                      f", n_epochs={N_EPOCHS}, exact knn)",
            "timings": {k: round(v, 3) for k, v in timings.items()}}
    return save_map(workdir, MapData(xy, np.asarray(reader.example_ids, np.int64),
                                     val_xy.astype(np.float32), fitted, meta))


def reuse_map(base_workdir: Path, workdir: Path) -> Path | None:
    """Give a re-scored run its base run's map when both read the same train features.

    The pool's layout depends only on the train features, so it is copied as is (the page
    colours it by the new scores); the validation pairs changed, and the saved map keeps no
    reducer to place them with, so each pair is drawn at its most aligned pool example (the
    highest cosine at the map's checkpoint; the meta says so). None when there is no map to
    reuse or the features differ.
    """
    base = load_map(base_workdir)
    fstore = FeatureStore(Path(workdir) / "features")
    if base is None or not fstore.exists("train", base.meta["checkpoint"]):
        return None
    ckpt = base.meta["checkpoint"]
    reader = fstore.reader("train", ckpt)
    if reader.manifest.fingerprint() != base.meta.get("features"):
        return None
    val = normalise_rows(fstore.reader("val", ckpt).load_all()) if fstore.exists("val", ckpt) else None
    val_xy = np.empty((0, 2), np.float32)
    if val is not None and len(val):
        best, where = np.full(len(val), -np.inf, np.float32), np.zeros(len(val), np.int64)
        for start, _, block in reader.iter_shards():
            cos = normalise_rows(block) @ val.T  # [rows, n_val]
            top = cos.argmax(axis=0)
            better = cos[top, np.arange(len(val))] > best
            best[better], where[better] = cos[top, np.arange(len(val))][better], start + top[better]
        val_xy = base.xy[where].astype(np.float32)
    meta = {**base.meta, "n_val": len(val_xy), "reused_from": str(base_workdir),
            "val_placement": "each validation pair at its most aligned pool example"}
    return save_map(workdir, MapData(base.xy, base.example_ids, val_xy, base.fitted, meta))


# ---------------------------------------------------------------------------- selections


def inside_polygon(xy: np.ndarray, px, py, chunk: int = 1 << 22) -> np.ndarray:
    """Even-odd rule: which points of ``xy`` lie inside the polygon (vectorised ray casting,
    in chunks of points so that points x vertices stays under ``chunk`` cells)."""
    x0, y0 = np.asarray(px, np.float64), np.asarray(py, np.float64)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    step = max(1, chunk // len(x0))
    out = np.empty(len(xy), bool)
    for s in range(0, len(xy), step):
        x, y = xy[s:s + step, 0:1], xy[s:s + step, 1:2]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        out[s:s + step] = ((crosses & (x < at)).sum(axis=1) % 2) == 1
    return out


def ids_in_selection(data: MapData, selection: dict) -> np.ndarray:
    """Example ids a plotly box/lasso selection covers, in map coordinates, over *every* point
    (also those not drawn when the map shows a sample); plus points picked by click (their
    ``customdata`` is the example id). Sorted, unique."""
    hit = np.zeros(len(data.xy), bool)
    for box in selection.get("box") or []:
        (xa, xb), (ya, yb) = sorted(box["x"][:2]), sorted(box["y"][:2])
        hit |= ((data.xy[:, 0] >= xa) & (data.xy[:, 0] <= xb)
                & (data.xy[:, 1] >= ya) & (data.xy[:, 1] <= yb))
    for lasso in selection.get("lasso") or []:
        if len(lasso["x"]) >= 3:
            hit |= inside_polygon(data.xy, lasso["x"], lasso["y"])
    clicked = [int(np.ravel(p["customdata"])[0]) for p in selection.get("points") or []
               if p.get("customdata") is not None]
    return np.union1d(data.example_ids[hit], np.asarray(clicked, np.int64))


DRAW_CAP = 50_000  # points a browser gets; above it a stratified sample over a density layer
GRID = 64  # cells per axis of the stratified sample
DENSITY_BINS = 160
STATE_COLOURS = {"pinned": "#1a9850", "excluded": "#d73027", "selected": "#2166ac", "not selected": "#d4d4d4"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
MUTED = {"not selected"}  # drawn small, light and underneath: the selection stands out


def drawn_rows(xy: np.ndarray, cap: int = DRAW_CAP, keep: np.ndarray | None = None, seed: int = 0,
               grid: int = GRID) -> np.ndarray:
    """Sorted rows of the map to draw: all when they fit, else every ``keep`` row (selected,
    pinned, excluded) plus a seeded sample of the rest stratified over a ``grid`` x ``grid``
    layout, each cell in proportion to its points and every non-empty cell at least once
    (sparse outliers stay visible). ``keep`` rows take at most half of ``cap`` when the rest
    needs the other half (a seeded sample of them), so the unselected never vanish."""
    n = len(xy)
    if n <= cap:
        return np.arange(n)
    keep = np.zeros(n, bool) if keep is None else np.asarray(keep, bool)
    must, rest = np.flatnonzero(keep), np.flatnonzero(~keep)
    n_must = max(cap - len(rest), min(len(must), cap // 2))
    must = must[sample_rows(len(must), n_must, seed)]
    chosen = rest[_stratified(xy[rest], cap - n_must, seed, grid)] if cap > n_must else rest[:0]
    return np.sort(np.concatenate([must, chosen]))


def _stratified(xy: np.ndarray, k: int, seed: int, grid: int) -> np.ndarray:
    """``k`` row indices of ``xy``: in a seeded random order within each grid cell, the rows
    with the smallest position / cell size (proportional allocation, first of each cell first)."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1)
    ij = np.clip(((xy - lo) / span * grid).astype(np.int64), 0, grid - 1)
    cell = ij[:, 0] * grid + ij[:, 1]
    order = np.random.default_rng(seed).permutation(len(xy))  # random order within cells
    by_cell = order[np.argsort(cell[order], kind="stable")]
    sizes = np.bincount(cell, minlength=grid * grid)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.empty(len(xy), np.int64)
    pos[by_cell] = np.arange(len(xy)) - np.repeat(starts, sizes)
    key = pos / sizes[cell]
    tie = np.empty(len(xy), np.int64)
    tie[order] = np.arange(len(xy))
    return np.lexsort((tie, key))[:k]


def density_trace(xy: np.ndarray, bins: int = DENSITY_BINS):
    """A grey heatmap of every point's density (log counts, empty cells transparent): what the
    sample leaves out still shows, and a box or lasso over it still covers every point."""
    import plotly.graph_objects as go

    counts, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins)
    z = np.where(counts > 0, np.log1p(counts), np.nan).T.astype(np.float32)
    return go.Heatmap(z=z, x=((xe[:-1] + xe[1:]) / 2).astype(np.float32), y=((ye[:-1] + ye[1:]) / 2).astype(np.float32),
                      colorscale=[[0, "#f2f2f2"], [1, "#8c8c8c"]], showscale=False, hoverinfo="skip",
                      name=f"density of all {len(xy):,} points", showlegend=True, opacity=0.8)


def _category_colours(categories) -> dict[str, str]:
    names = [str(c) for c in categories]
    if set(names) <= set(STATE_COLOURS):
        return {c: STATE_COLOURS[c] for c in names}
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(names)}


def map_figure(data: MapData, values, val_labels: list[str], max_drawn: int = DRAW_CAP, seed: int = 0,
               rows: np.ndarray | None = None, hover: list[str] | None = None,
               val_hover: list[str] | None = None):
    """Plotly figure of the map: examples coloured by ``values`` (one per row of ``data``:
    numbers give a colour scale, a pandas Categorical one trace per category, unselected ones
    light grey underneath), the validation pairs as stars labelled with their subtask.

    ``rows`` are the rows to draw (default: `drawn_rows` with ``max_drawn``), ``hover`` their
    hover texts. When not every point is drawn, a density layer of all of them lies beneath.
    Float32 coordinates and int32 example ids (``customdata``) travel as binary arrays.
    """
    import html

    import plotly.graph_objects as go

    rows = drawn_rows(data.xy, max_drawn, seed=seed) if rows is None else np.asarray(rows)
    xy, ids, values = data.xy[rows], data.example_ids[rows].astype(np.int32), values[rows]
    hover = np.asarray(hover if hover is not None else [f"example {i}" for i in ids], dtype=object)
    traces = [density_trace(data.xy)] if len(rows) < len(data.xy) else []
    template = "%{hovertext}<extra>%{fullData.name}</extra>"
    if hasattr(values, "categories"):
        colours = _category_colours(values.categories)
        for name in sorted(reversed(colours), key=lambda c: c not in MUTED):  # muted first, pins last: on top
            at = np.asarray(values == name)
            muted = name in MUTED
            traces.append(go.Scattergl(x=xy[at, 0], y=xy[at, 1], mode="markers", name=name, customdata=ids[at],
                                       hovertext=hover[at], hovertemplate=template,
                                       marker=dict(size=3 if muted else 5, color=colours[name],
                                                   opacity=0.5 if muted else 0.95)))
    else:
        traces.append(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name="examples", customdata=ids,
                                   hovertext=hover, hovertemplate=template,
                                   marker=dict(size=4, color=np.asarray(values, np.float32), colorscale="Viridis",
                                               showscale=True, colorbar=dict(title="score", x=1.0, len=0.8))))
    labels = [html.escape(str(v), quote=False) for v in val_labels[: len(data.val_xy)]]
    # WebGL too: plotly draws SVG traces beneath the WebGL canvas, where the points would hide them
    traces.append(go.Scattergl(x=data.val_xy[:, 0], y=data.val_xy[:, 1], mode="markers+text", name="validation pairs",
                             text=labels, textposition="top center", textfont=dict(size=11, color="#111111"),
                             hovertext=(val_hover or labels)[: len(data.val_xy)],
                             hovertemplate="%{hovertext}<extra>validation pair</extra>",
                             marker=dict(symbol="star", size=14, color="#111111", line=dict(color="white", width=1))))
    fig = go.Figure(traces)
    fig.update_layout(height=640, dragmode="lasso", margin=dict(t=60),
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0, xanchor="left",
                                  itemsizing="constant"))
    return fig


# ---------------------------------------------------------------------------- storage


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


def save_map(workdir: Path, data: MapData) -> Path:
    """Arrays, then meta, then status "done": a reader never sees a half-written map."""
    out = map_dir(workdir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / ARRAYS, lambda f: np.savez(f, xy=data.xy, example_ids=data.example_ids,
                                                  val_xy=data.val_xy, fitted=data.fitted))
    _write_json(out / META, data.meta)
    _write_json(out / STATUS, {"state": "done", "finished": time.time()})
    return out


def load_map(workdir: Path) -> MapData | None:
    """The saved map, or None when there is none (yet)."""
    out = map_dir(workdir)
    if not (out / META).is_file() or not (out / ARRAYS).is_file():
        return None
    with np.load(out / ARRAYS, allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("xy", "example_ids", "val_xy", "fitted")}
    return MapData(meta=json.loads((out / META).read_text()), **arrays)


def map_status(workdir: Path) -> dict[str, Any]:
    """``{"state": missing|queued|running|done|failed, ...}``; a job whose process is gone
    without reporting is "failed", never "running" forever."""
    path = map_dir(workdir) / STATUS
    if not path.is_file():
        return {"state": "done" if load_map(workdir) else "missing"}
    status = json.loads(path.read_text())
    if status["state"] in ("queued", "running") and not _alive(status.get("pid")):
        return {**status, "state": "failed", "error": "the map process ended without a result"}
    return status


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie counts as ended); no pid yet = queued, alive."""
    from curation.runs.jobs import process_alive
    return not pid or process_alive(pid)


# ---------------------------------------------------------------------------- background job


def launch_map(store, run_id: int, ws: Workspace | None = None, seed: int = 0) -> int:
    """Start ``python -m curation.review.maps RUN_ID`` detached (like `jobs.launch`); returns its pid.

    A map already queued or running is not started twice; a run without gradient features (by
    `explore.effective_labels`: an auto run that chose BM25 too) is refused at once.
    """
    from curation.review.explore import effective_labels, run_info

    info = run_info(store, run_id)
    if info.status != "done" or info.workdir is None:
        raise CurationError(f"run {run_id} is {info.status}: map it once it is done")
    if not (labels := effective_labels(store, run_id)).gradient:  # an auto run: its winner's
        raise CurationError(f"run {run_id}: {labels.name} scores are not built from gradient features, so it has no map")
    status = map_status(info.workdir)
    if status["state"] in ("queued", "running"):
        return int(status.get("pid") or 0)
    out = map_dir(info.workdir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / STATUS, {"state": "queued", "queued": time.time()})
    ws = (ws or Workspace.from_env()).ensure()
    env = {**os.environ, "CURATION_HOME": str(ws.home), "CURATION_DB_URL": ws.db_url,
           "PYTHONUNBUFFERED": "1"}
    with open(out / LOG, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "curation.review.maps", str(run_id), "--seed", str(seed)],
                                cwd=Path(__file__).resolve().parents[2], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _write_json(out / STATUS, {"state": "queued", "queued": time.time(), "pid": proc.pid})
    return proc.pid


def run_map_job(workdir: Path, seed: int = 0, max_points: int = 200_000) -> None:
    """`compute_map` with its state in ``status.json``: running, then done or failed + error."""
    path = map_dir(workdir) / STATUS
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"state": "running", "pid": os.getpid(), "started": time.time()})
    try:
        compute_map(workdir, seed=seed, max_points=max_points)
    except BaseException as e:
        _write_json(path, {"state": "failed", "error": f"{type(e).__name__}: {e}"})
        traceback.print_exc()
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m curation.review.maps RUN_ID [--seed S] [--max-points N]``: the background job."""
    import argparse

    from curation.data.store import Store
    from curation.review.explore import run_info

    p = argparse.ArgumentParser(prog="python -m curation.review.maps", description=main.__doc__)
    p.add_argument("run_id", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-points", type=int, default=200_000)
    args = p.parse_args(argv)
    info = run_info(Store.open(Workspace.from_env()), args.run_id)
    try:
        run_map_job(info.workdir, args.seed, args.max_points)
    except Exception:  # noqa: BLE001  (recorded in status.json and the log)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
