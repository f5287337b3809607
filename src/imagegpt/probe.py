"""Linear probes, as in the iGPT paper: average-pool one layer's hidden states, fit a logistic regression on them.

:func:`extract_features` runs the model once per batch and keeps every requested layer's features;
:func:`fit_probe` picks the inverse regularization ``C`` on a validation split; :func:`probe_layers` probes
each layer (and optionally a concatenation of layers); :func:`raw_pixel_baseline` is the same classifier on
pixels; :func:`refit_probe` refits one probe of a chosen ``C``, and :func:`mcnemar` tells two probes scored on
the same test examples apart; :func:`plot_probe` draws accuracy against layer. scikit-learn is an optional extra,
imported on use.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from imagegpt.atomic import atomic_write as _atomic_write

logger = logging.getLogger(__name__)

__all__ = ["ProbeResult", "extract_features", "fit_probe", "refit_probe", "mcnemar", "probe_layers",
           "pick_C", "row_features", "pixel_matrix", "raw_pixel_baseline", "plot_probe"]

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    # the heads wrap the bare decoder as .transformer; their heads play no part in the probe
    return getattr(model, "transformer", model)


def _cache_key(decoder: torch.nn.Module, ids: torch.Tensor) -> str:
    """A digest of the ids and the weights (names, shapes and a cheap checksum each); not of the layers, so that a
    cache answers any subset of the layers it holds."""
    h = hashlib.sha256(np.ascontiguousarray(ids.cpu().numpy().astype(np.int64)).tobytes())
    with torch.no_grad():
        for name, t in sorted(decoder.state_dict().items()):
            # a sum and a weighted sum over a strided sample: cheap even for large models, yet any retraining shows.
            # In float64: a float32 sum rounds differently with another thread count, and the key must not change
            # (MPS has no float64: its weights are summed on the CPU)
            flat = t.detach().reshape(-1).to("cpu" if t.device.type == "mps" else t.device, torch.float64)
            sample = flat[:: max(1, flat.numel() // 4096)]
            weights = torch.arange(1, sample.numel() + 1, dtype=torch.float64, device=sample.device)
            h.update(f"{name}|{tuple(t.shape)}|{float(flat.sum()):.6e}|{float((sample * weights).sum()):.6e}".encode())
    return h.hexdigest()


def extract_features(
    model: torch.nn.Module,
    input_ids: torch.Tensor | np.ndarray,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    progress: bool = False,
    device: torch.device | str | None = None,
    cache_path: str | os.PathLike | None = None,
) -> dict[int, np.ndarray]:
    """Average-pooled hidden states of each layer in ``layers``: {layer: float32 (N, n_embd)}.

    ``input_ids`` (N, 1 + H*W) begin with the start token. Layer ``l`` in [0, n_layer) is the input of block
    ``l`` (0: the embeddings), ``n_layer`` the ``ln_f`` output; default: all. A causal model sees ``ids[:, :-1]``
    (the last pixel is only a target, as in :func:`imagegpt.metrics.nll_per_sequence`); a bidirectional (BERT)
    model sees the H*W pixels ``ids[:, 1:]``, unmasked (it was trained without a start token, whose id is its
    [MASK]). The features are averaged over all of the positions seen. With ``cache_path``, features are read
    from / written to that .npz, keyed by the ids and weights: a second probe of the same inputs, or of a subset of
    the layers cached, skips the model, and a probe of other layers adds them to the cache.
    """
    decoder = _decoder(model)
    n_layer = decoder.config.n_layer
    layers = list(range(n_layer + 1)) if layers is None else sorted({int(layer) for layer in layers})
    bad = [layer for layer in layers if not 0 <= layer <= n_layer]
    if bad:
        raise ValueError(f"layers must lie in [0, {n_layer}] (n_layer = {n_layer}: the ln_f output), got {bad}")
    ids = torch.as_tensor(np.asarray(input_ids) if not isinstance(input_ids, torch.Tensor) else input_ids)
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"input_ids must be (N, 1 + pixels) with a leading start token, got {tuple(ids.shape)}")
    start = decoder.config.vocab_size - 1
    if not bool((ids[:, 0] == start).all()):
        raise ValueError(f"every sequence must begin with the start token {start} (add_start_token=True)")

    key, cached = None, {}  # cached: {"layer_<l>": (N, n_embd)} of a cache for these ids and weights
    if cache_path is not None:
        key = _cache_key(decoder, ids)
        path = Path(cache_path)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:  # lazy: an array is read when indexed
                    if str(z["key"]) == key:
                        if all(f"layer_{layer}" in z.files for layer in layers):
                            logger.info("features read from the cache %s", path)
                            return {layer: z[f"layer_{layer}"] for layer in layers}
                        cached = {n: z[n] for n in z.files if n.startswith("layer_")}  # kept beside the new ones
                logger.info("feature cache %s is for other inputs, weights or layers: recomputing", path)
            except (OSError, ValueError, KeyError) as e:  # a damaged cache only costs a recomputation
                logger.warning("ignoring unreadable feature cache %s: %s", path, e)

    device = torch.device(device) if device is not None else next(decoder.parameters()).device
    # (start, p0 .. p(HW-2)) for a causal model; (p0 .. p(HW-1)) for BERT, whose [MASK] id is the start token's
    window = slice(1, None) if getattr(decoder.config, "bidirectional", False) else slice(None, -1)
    was_training = decoder.training
    decoder.eval()  # dropout off: features must not depend on the batch
    parts: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    try:
        with torch.inference_mode():
            for i in tqdm(range(0, len(ids), batch_size), desc="features", unit="batch", disable=not progress):
                batch = ids[i : i + batch_size, window].to(device)
                hidden = decoder(batch, use_cache=False, output_hidden_states=True, return_dict=True).hidden_states
                for layer in layers:
                    parts[layer].append(hidden[layer].float().mean(dim=1).cpu().numpy())
    finally:
        decoder.train(was_training)
    feats = {layer: np.concatenate(parts[layer]).astype(np.float32, copy=False) for layer in layers}

    if cache_path is not None:
        path = Path(cache_path)
        arrays = {**cached, **{f"layer_{layer}": x for layer, x in feats.items()}}  # keep the layers it held

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare name
                np.savez(f, key=np.array(key), **arrays)

        _atomic_write(path, write)
    return feats


@dataclass
class ProbeResult:
    """The chosen inverse regularization ``C``, its validation accuracy, and the fitted scaler + classifier."""

    C: float
    val_acc: float
    model: Any


def _sklearn():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:  # an optional extra: the library runs without it
        raise ImportError("linear probes need scikit-learn: pip install scikit-learn") from e
    return LogisticRegression, make_pipeline, StandardScaler


def _classifier(C: float, max_iter: int, seed: int) -> Any:
    LogisticRegression, make_pipeline, StandardScaler = _sklearn()
    # standardized features: one C grid suits every layer, whatever the scale of its activations
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter,
                                                              random_state=seed))  # fmt: skip


def _fit(clf: Any, x: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> Any:
    """Fit, turning scikit-learn's per-fit ConvergenceWarning into one log line that says what to do."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(x, y)
    for w in caught:
        if type(w.message).__name__ == "ConvergenceWarning":
            logger.warning("lbfgs stopped at max_iter=%d before converging (C=%g); a larger max_iter may help "
                           "slightly", max_iter, C)  # fmt: skip
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return clf


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
              Cs: Sequence[float] = DEFAULT_CS, max_iter: int = 1000, seed: int = 0) -> ProbeResult:
    """Fit a standardized lbfgs logistic regression for each ``C`` in ``Cs``; keep the best on validation
    (the smallest C on ties: the most regularized of the equals)."""
    _sklearn()
    if not len(Cs):
        raise ValueError("Cs must hold at least one value")
    best = None
    for C in sorted(float(c) for c in Cs):
        clf = _fit(_classifier(C, max_iter, seed), train_x, train_y, C, max_iter)
        acc = float((clf.predict(val_x) == np.asarray(val_y)).mean())
        logger.debug("C=%g: val accuracy %.4f", C, acc)
        if best is None or acc > best.val_acc:
            best = ProbeResult(C, acc, clf)
    return best


def refit_probe(x: np.ndarray, y: np.ndarray, C: float, max_iter: int = 1000, seed: int = 0,
                blas_threads: int | None = None) -> Any:
    """The probe of a chosen ``C`` fitted on all of (x, y): what `probe_layers` scores on the test examples. A
    fitted scikit-learn pipeline (standardize, then lbfgs logistic regression): ``.predict(test_x)``.
    ``blas_threads`` (the probe's :func:`blas_threads`) fits with that many BLAS threads: a fit that stops at
    ``max_iter`` unconverged ends elsewhere with another count, so reproducing a probe needs its count."""
    if blas_threads is None:
        return _fit(_classifier(C, max_iter, seed), x, y, C, max_iter)
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return _fit(_classifier(C, max_iter, seed), x, y, C, max_iter)


def blas_threads() -> int | None:
    """How many threads the BLAS under scikit-learn's lbfgs uses now (it follows ``OMP_NUM_THREADS``), or None
    without scikit-learn. `imagegpt probe` records it, so that :func:`refit_probe` can reproduce its fits."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    return max(counts) if counts else None


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> dict[str, float]:
    """McNemar's paired test of two classifiers scored on the same examples (boolean arrays, True = right):
    {"only_a", "only_b"} count the examples only one of them gets right, ``z`` = (only_a - only_b) /
    sqrt(only_a + only_b), ``p`` the exact two-sided p-value of only_a against Binomial(only_a + only_b, 1/2).
    Two accuracies on one test set are correlated, so this tells them apart more surely than their standard
    errors do."""
    right_a, right_b = np.asarray(right_a, bool), np.asarray(right_b, bool)
    if right_a.shape != right_b.shape:
        raise ValueError(f"the two classifiers were scored on different examples: {right_a.shape} vs {right_b.shape}")
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    n = b + c
    z = (b - c) / math.sqrt(n) if n else 0.0
    # exact: twice the lower tail of Binomial(n, 1/2) at min(b, c), capped at 1 (no discordant examples: p = 1)
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n) if n else 1.0
    return {"only_a": b, "only_b": c, "z": z, "p": p}


def _split(n: int, val_fraction: float, seed: int, groups: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(train, val) indices. With ``groups`` (one id per example), whole groups go to validation, drawn in a seeded
    order until they hold ``val_fraction`` of the examples: related examples never straddle the split."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    if n < 2:
        raise ValueError(f"need at least 2 training examples to hold out validation, got {n}")
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n)
        return perm[n_val:], perm[:n_val]
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must hold one id per training example ({n}), got shape {groups.shape}")
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(names) < 2:
        raise ValueError("groups must hold at least 2 distinct ids to hold out whole groups for validation")
    order = rng.permutation(len(names))
    taken = order[: max(1, min(len(names) - 1, int(np.searchsorted(np.cumsum(counts[order]), n_val)) + 1))]
    is_val = np.isin(inverse, taken)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def pick_C(x: np.ndarray, y: np.ndarray, val_fraction: float = 0.1, seed: int = 0, Cs: Sequence[float] = DEFAULT_CS,
           max_iter: int = 1000, groups: np.ndarray | None = None) -> ProbeResult:
    """The C a probe row uses: the best of ``Cs`` on the validation split that :func:`probe_layers` and
    :func:`raw_pixel_baseline` hold out (``val_fraction`` of (x, y), drawn with ``seed``; whole ``groups``)."""
    tr, va = _split(len(x), val_fraction, seed, groups)
    y = np.asarray(y)
    return fit_probe(x[tr], y[tr], x[va], y[va], Cs=Cs, max_iter=max_iter, seed=seed)


def _probe_one(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, val_fraction: float,
               seed: int, Cs: Sequence[float], max_iter: int, groups: np.ndarray | None = None) -> dict[str, float]:
    res = pick_C(x, y, val_fraction, seed, Cs, max_iter, groups)
    # refit on all training examples with the chosen C: validation only picks C, it need not cost data
    clf = refit_probe(x, y, res.C, max_iter, seed)
    test_acc = float((clf.predict(test_x) == np.asarray(test_y)).mean())
    return {"C": res.C, "val_acc": res.val_acc, "test_acc": test_acc}


def probe_layers(features_train: dict[int, np.ndarray], y_train: np.ndarray, features_test: dict[int, np.ndarray],
                 y_test: np.ndarray, val_fraction: float = 0.1, seed: int = 0,
                 concat: Sequence[int] | None = None, Cs: Sequence[float] = DEFAULT_CS,
                 max_iter: int = 1000, groups: np.ndarray | None = None,
                 average: Sequence[int] | None = None) -> list[dict]:
    """One row per layer, in order: {"layer", "C", "val_acc", "test_acc"}; with ``concat`` = [a, b, ...] a row
    (``"layer": "a+b"``) probes those layers' features side by side; with ``average`` = [a, b, ...] a last row
    (``"layer": "mean(a,b)"``) probes their mean (the states averaged over layers as well as positions: as many
    dimensions as one layer). The validation split (``val_fraction`` of the training examples, drawn with
    ``seed``; whole ``groups`` when given) picks C; the probe is then refit on all training examples."""
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    rows = []
    for layer in sorted(features_train):
        row = _probe_one(features_train[layer], y_train, features_test[layer], y_test, val_fraction, seed, Cs,
                         max_iter, groups)  # fmt: skip
        rows.append({"layer": int(layer), **row})
        logger.info("layer %d: C=%g val %.4f test %.4f", layer, row["C"], row["val_acc"], row["test_acc"])
    for how, chosen in (("concat", concat), ("average", average)):
        if not chosen:
            continue
        name = "+".join(map(str, chosen)) if how == "concat" else f"mean({','.join(map(str, chosen))})"
        x, tx = row_features(features_train, name), row_features(features_test, name)
        row = _probe_one(x, y_train, tx, y_test, val_fraction, seed, Cs, max_iter, groups)
        rows.append({"layer": name, **row})
    return rows


def row_features(features: dict[int, np.ndarray], name: int | str) -> np.ndarray:
    """The features a probe row of :func:`probe_layers` is fitted on, from its ``"layer"`` name: a layer (``3``
    or ``"3"``), layers side by side (``"2+4"``) or their mean (``"mean(1,2,3)"``)."""
    text = str(name).strip()
    how = "mean" if text.startswith("mean(") and text.endswith(")") else "concat"
    parts = (text[5:-1] if how == "mean" else text).split("," if how == "mean" else "+")
    if not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{name!r} names no probe row: a layer (3), layers side by side (2+4) or a mean (mean(1,2))")
    chosen = [int(p) for p in parts]
    missing = [c for c in chosen if c not in features]
    if missing:
        raise ValueError(f"layers {missing} of {name!r} have no features (extracted: {sorted(features)})")
    if how == "mean":
        return np.mean([features[c] for c in chosen], axis=0, dtype=np.float32)
    return features[chosen[0]] if len(chosen) == 1 else np.concatenate([features[c] for c in chosen], axis=1)


def _pixel_matrix(images: np.ndarray) -> np.ndarray:
    """(N, pixels, channels) float32 in [0, 1] from uint8 images (N, H, W, C) or (N, H, W)."""
    images = np.asarray(images)
    channels = images.shape[-1] if images.ndim == 4 else 1
    return images.reshape(len(images), -1, channels).astype(np.float32) / 255.0


def _is_gray(x: np.ndarray) -> bool:
    return x.shape[-1] == 3 and bool((x[..., :1] == x[..., 1:]).all())


def pixel_matrix(train_images: np.ndarray, test_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The features of :func:`raw_pixel_baseline`: uint8 images (N, H, W[, C]) as float32 rows in [0, 1], each
    gray pixel once (gray images stored as RGB, as :func:`imagegpt.datasets.load_labeled` returns them)."""
    x, tx = _pixel_matrix(train_images), _pixel_matrix(test_images)
    if x.shape[1:] != tx.shape[1:]:
        raise ValueError(f"train and test images differ in size ({np.shape(train_images)[1:]} vs "
                         f"{np.shape(test_images)[1:]}); resize them alike (load_labeled does)")  # fmt: skip
    if _is_gray(x) and _is_gray(tx):
        x, tx = x[..., :1], tx[..., :1]
    return x.reshape(len(x), -1), tx.reshape(len(tx), -1)


def raw_pixel_baseline(train_images: np.ndarray, y_train: np.ndarray, test_images: np.ndarray, y_test: np.ndarray,
                       val_fraction: float = 0.1, seed: int = 0, Cs: Sequence[float] = DEFAULT_CS,
                       max_iter: int = 1000, groups: np.ndarray | None = None) -> dict:
    """The same probe on raw pixels (uint8 images (N, ...) scaled to [0, 1]): {"layer": "pixels", "dims", ...}.

    Gray images stored as RGB (three equal channels, as :func:`imagegpt.datasets.load_labeled` returns them) count
    each pixel once: three copies would triple the fitting time and weaken the regularization at a given C."""
    x, tx = pixel_matrix(train_images, test_images)
    row = _probe_one(x, np.asarray(y_train), tx, np.asarray(y_test), val_fraction, seed, Cs, max_iter, groups)
    return {"layer": "pixels", "dims": x.shape[1], **row}


def plot_probe(rows: list[dict], path: str | os.PathLike, size: tuple[int, int] = (720, 440)) -> None:
    """Draw validation (orange) and test (blue) accuracy against layer as a PNG, with Pillow only. Rows whose
    ``layer`` is not an int (a concatenation, the pixel baseline) are drawn as gray horizontal test lines."""
    layered = sorted((r for r in rows if isinstance(r["layer"], int)), key=lambda r: r["layer"])
    others = [r for r in rows if not isinstance(r["layer"], int)]
    w, h = size
    left, right, top, bottom = 70, 20, 60, 50  # the legend lives above the plot: accuracies often reach 1.0
    x0 = min((r["layer"] for r in layered), default=0)
    x1 = max(max((r["layer"] for r in layered), default=1), x0 + 1)
    y0, y1 = 0.0, 1.0  # accuracies: a fixed axis keeps plots of different runs comparable

    def xy(s: float, v: float) -> tuple[float, float]:
        return (left + (s - x0) / (x1 - x0) * (w - left - right), top + (y1 - v) / (y1 - y0) * (h - top - bottom))

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for i in range(6):
        v = i / 5
        y = xy(x0, v)[1]
        d.line([(left, y), (w - right, y)], fill=(230, 230, 230))
        d.text((5, y - 6), f"{v:.1f}", fill="black")
    for s in range(x0, x1 + 1):
        x = xy(s, y0)[0]
        d.line([(x, h - bottom), (x, h - bottom + 4)], fill="black")
        d.text((x - 3, h - bottom + 8), str(s), fill="black")
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    d.text((w // 2 - 40, h - 20), "layer (input of block; last: ln_f)", fill="black")
    d.text((5, 8), "linear probe accuracy", fill="black")
    for key, color, ly in (("test_acc", (31, 119, 180), 8), ("val_acc", (255, 127, 14), 24)):
        xys = [xy(r["layer"], r[key]) for r in layered]
        if len(xys) > 1:
            d.line(xys, fill=color, width=2)
        for x, y in xys:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        d.line([(w - 110, ly + 6), (w - 90, ly + 6)], fill=color, width=3)
        d.text((w - 84, ly), key.replace("_acc", ""), fill="black")
    for j, r in enumerate(others):  # labelled in the header, not on their lines: several may coincide
        y = xy(x0, r["test_acc"])[1]
        d.line([(left, y), (w - right, y)], fill=(128, 128, 128), width=1)
        d.text((left + 150 * (j % 3), 26 + 14 * (j // 3)), f"{r['layer']} test: {r['test_acc']:.3f}",
               fill=(90, 90, 90))  # fmt: skip
    _atomic_write(Path(path), lambda p: img.save(p, format="PNG"))
