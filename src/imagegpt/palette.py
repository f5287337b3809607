"""Color palettes (the clusters that pixels are quantized to), in [-1, 1] RGB as transformers stores them."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["uniform_palette", "grayscale_palette", "fit_palette", "palette_inertia", "color_frequencies",
           "unigram_entropy", "save_palette"]  # fmt: skip


def uniform_palette(levels: int = 8) -> np.ndarray:
    """``levels**3`` colors on a regular RGB grid, shape (levels**3, 3) in [-1, 1]; 8 levels give iGPT's 9 bits.

    A stand-in until a palette is fitted to data: every color is reachable, none is tuned to the images.
    """
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    axis = np.linspace(-1.0, 1.0, levels) if levels > 1 else np.zeros(1)
    r, g, b = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1).astype(np.float32)


def grayscale_palette(k: int = 16) -> np.ndarray:
    """``k`` evenly spaced grays, shape (k, 3) in [-1, 1]."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    gray = np.linspace(-1.0, 1.0, k) if k > 1 else np.zeros(1)
    return np.repeat(gray[:, None], 3, axis=1).astype(np.float32)


# --- fitting a palette to data (k-means) ----------------------------------------------------------------------

# uint8 -> [-1, 1] with the processor's arithmetic: x * (1/255) in float64 -> float32, then (x - 0.5) / 0.5
_LUT = ((np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as Pillow's "L"


def _as_array(data: Any) -> np.ndarray:
    return np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)  # tensors too


def _flat_pixels(pixels: Any) -> np.ndarray:
    """Validate and flatten to (N, C), C = 3 (RGB) or 1 (gray); uint8, or float32 in [-1, 1]. No copy if possible."""
    x = _as_array(pixels)
    shapes = "(N, 3) RGB pixels, (N,) gray pixels, (N, H, W, 3) RGB images or (N, H, W) gray images"
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"pixels must be uint8 (0..255) or float in [-1, 1], got dtype {x.dtype}; pass {shapes}")
    if x.ndim in (2, 3, 4) and x.shape[-1] == 3:  # (H, W, 3): one RGB image, not gray images 3 pixels wide
        x = x.reshape(-1, 3)
    elif x.ndim in (1, 3) or (x.ndim == 4 and x.shape[-1] == 1):
        x = x.reshape(-1, 1)
    else:
        raise ValueError(f"pixels of shape {x.shape} are not {shapes}")
    if len(x) == 0:
        raise ValueError("no pixels given (empty array)")
    if x.dtype != np.uint8:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (lo >= -1 and hi <= 1):  # also catches NaN
            raise ValueError(f"float pixels must lie in [-1, 1], got range [{lo}, {hi}]; pass uint8 for 0..255 data")
        x = x.astype(np.float32, copy=False)
    return x


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(n, 1|3) uint8/float -> (n, channels) of the same dtype: grays repeated, or RGB to Pillow-style luminance."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=1)
    if x.dtype == np.uint8:  # Pillow's L = (R*299 + G*587 + B*114) / 1000, rounded
        return ((x.astype(np.int32) @ np.array([299, 587, 114]) + 500) // 1000).astype(np.uint8)[:, None]
    return (x.astype(np.float64) @ _LUMA).astype(np.float32)[:, None]


def _codes(x: np.ndarray) -> np.ndarray:  # uint8 (n, C) -> one int per color
    x = x.astype(np.int32)
    return x[:, 0] if x.shape[1] == 1 else (x[:, 0] << 16) | (x[:, 1] << 8) | x[:, 2]


def _decode(codes: np.ndarray, channels: int) -> np.ndarray:
    codes = codes[:, None] if channels == 1 else np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1)
    return codes.astype(np.uint8)


def _unique(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of (n, C) uint8/float32 -> (colors float32 (M, C) in [-1, 1], counts (M,), inverse (n,))."""
    if x.dtype == np.uint8 and x.shape[1] == 1:  # grays: a 256-bin histogram, no sort
        hist = np.bincount(x[:, 0], minlength=256)
        present, rank = np.flatnonzero(hist), np.cumsum(hist > 0) - 1
        colors, counts, inverse = _LUT[present][:, None], hist[present], rank[x[:, 0]]
    elif x.dtype == np.uint8:
        codes, inverse, counts = np.unique(_codes(x), return_inverse=True, return_counts=True)
        colors = _LUT[_decode(codes, 3)]
    else:
        colors, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    return np.ascontiguousarray(colors, dtype=np.float32), counts, inverse.reshape(-1)


def _nearest(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest center and squared distance per row, by |x|^2 - 2 x.c + |c|^2 (matmul) in chunks of rows."""
    chunk = max(1024, (1 << 21) // len(centers))  # chunk x k distances: 8 MiB (smaller: more thread syncs)
    c2, ct = (centers * centers).sum(1), centers.T.contiguous()
    labels = torch.empty(len(x), dtype=torch.long, device=x.device)
    dist = torch.empty(len(x), dtype=x.dtype, device=x.device)
    buffer = torch.empty(min(chunk, len(x)), len(centers), dtype=x.dtype, device=x.device)  # reused: no page faults
    for start in range(0, len(x), chunk):
        a, stop = x[start : start + chunk], min(start + chunk, len(x))
        d = torch.addmm(c2, a, ct, alpha=-2, out=buffer[: len(a)])
        torch.min(d, 1, out=(dist[start:stop], labels[start:stop]))
        dist[start:stop].add_((a * a).sum(1)).clamp_min_(0)
    return labels, dist


def _sum_by(labels: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """Row sums of ``values`` per label; on GPUs by sort + cumsum (their index_add_ is not deterministic)."""
    if labels.device.type == "cpu":
        return torch.zeros(k, values.shape[1], dtype=values.dtype, device=values.device).index_add_(0, labels, values)
    cs = torch.nn.functional.pad(values[torch.argsort(labels, stable=True)].cumsum(0), (0, 0, 1, 0))
    ends = torch.bincount(labels, minlength=k).cumsum(0)
    return cs[ends] - cs[torch.cat([ends.new_zeros(1), ends[:-1]])]


def _kmeans_pp(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy weighted k-means++ (2 + ln k candidates per step, the best kept) on distinct ``points``. In numpy:
    k tiny steps, which torch's thread pool slows down (by 10x and more when other work shares the cores)."""
    points, weights = points.astype(np.float64), weights.astype(np.float64)
    columns, trials, last = list(points.T.copy()), 2 + int(math.log(k)), len(points) - 1
    chosen = [min(int(np.searchsorted(np.cumsum(weights), rng.random() * weights.sum(), "right")), last)]
    closest = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        cs = np.cumsum(weights * closest)  # chosen points have 0 mass: never drawn again
        cand = np.minimum(np.searchsorted(cs, rng.random(trials) * cs[-1], "right"), last)
        d = sum((col[:, None] - col[cand][None]) ** 2 for col in columns)  # (P, trials)
        best = int((weights[:, None] * np.minimum(closest[:, None], d)).sum(0).argmin())
        chosen.append(int(cand[best]))
        closest = np.minimum(closest, d[:, best])
    return points[chosen].astype(np.float32)


def _kmeans_1d(x: np.ndarray, w: np.ndarray, k: int, bins: int = 1024) -> np.ndarray | None:
    """Weighted k-means of sorted 1-D ``x`` by dynamic programming over the k - 1 split points: exact for at most
    ``bins`` values, else over ``bins`` equal bins' weighted means (off the optimum by < (2 / bins)^2 / 12)."""
    if len(x) > bins:
        b = np.minimum(((x + 1) * (bins / 2)).astype(np.int64), bins - 1)
        bw = np.bincount(b, w, bins)
        x, w = np.bincount(b, w * x, bins)[bw > 0] / bw[bw > 0], bw[bw > 0]
        if len(x) < k:
            return None
    cw, cx, cxx = (np.concatenate([[0.0], np.cumsum(v)]) for v in (w, w * x, w * x * x))
    n = np.arange(len(x) + 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # cost[a, b]: the points a..b-1 as one cluster
        cost = (cxx[None] - cxx[:, None]) - (cx[None] - cx[:, None]) ** 2 / (cw[None] - cw[:, None])
    cost[n[:, None] >= n[None]] = np.inf
    best, splits = cost[0], []
    for _ in range(1, k):
        total = best[:, None] + cost
        splits.append(total.argmin(0))
        best = total[splits[-1], n]
    edges = [len(x)]
    for split in reversed(splits):
        edges.append(split[edges[-1]])
    e = np.array([0] + edges[::-1])  # the first split is never 0: no cluster is empty
    return (cx[e[1:]] - cx[e[:-1]]) / (cw[e[1:]] - cw[e[:-1]])


def fit_palette(pixels: Any, k: int = 512, *, batch_size: int = 4096, max_iter: int = 300, tol: float = 1e-4,
                seed: int = 0, device: str | torch.device = "cpu", grayscale: bool = False, progress: bool = False,
                sample_size: int = 2_000_000, init_size: int | None = None, lloyd_iter: int = 5) -> np.ndarray:
    """Fit a ``k``-color palette to pixels by k-means: float32 (k, 3) in [-1, 1], sorted by luminance, then R, G, B.

    ``pixels``: uint8 RGB pixels (N, 3) or images ((N,) H, W, 3), gray images (N, H, W) or pixels (N,); or floats
    already in [-1, 1] (uint8 is mapped as the processor does). ``grayscale``: fit k grays (RGB input by luminance)
    and return them repeated to 3 channels. The algorithm, in torch on ``device``:

    1. a seeded sample of at most ``sample_size`` pixels, reduced to its distinct colors with counts;
    2. greedy k-means++ (in numpy) on ``init_size`` (default max(20 k, 3 batch_size)) sampled pixels;
    3. up to ``max_iter`` mini-batch steps of ``batch_size`` pixels (Sculley 2010: per-center counts, learning rate
       1/count), centers that win nothing for a while re-seeded on far-away points, stopping early when the
       smoothed batch inertia improves by less than ``tol`` (relative) for 10 steps (``tol=0``: never);
    4. ``lloyd_iter`` weighted Lloyd passes over the whole sample, empty clusters re-seeded on the farthest points;
       every center then owns at least one sampled color.

    With ``grayscale``, steps 2-4 give way to 1-D k-means by dynamic programming over the sorted grays weighted by
    their counts: the optimum for at most 1024 distinct grays (always for uint8), else over 1024 bins.

    Distances are computed in chunks (memory stays bounded); the same ``seed`` on the same device gives the same
    palette. Raises ValueError for bad input, or when ``k`` exceeds the number of distinct colors.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    for name, value in (("batch_size", batch_size), ("max_iter", max_iter), ("sample_size", sample_size)):
        if value < (0 if name == "max_iter" else 1):
            raise ValueError(f"{name} must be positive, got {value}")
    k, device, channels, flat = int(k), torch.device(device), 1 if grayscale else 3, _flat_pixels(pixels)
    n, rng = len(flat), np.random.default_rng(seed)
    sample = flat if n <= sample_size else flat[np.sort(rng.integers(0, n, sample_size))]
    colors, counts, inverse = _unique(_to_channels(sample, channels))
    if len(colors) < k and len(sample) < n:  # rare colors may hide outside the sample: look at everything
        sample, (colors, counts, inverse) = flat, _unique(_to_channels(flat, channels))
    if len(colors) < k:
        raise ValueError(f"k={k} is larger than the number of distinct {'grays' if grayscale else 'colors'} in the "
                         f"pixels ({len(colors)}); choose k <= {len(colors)}")  # fmt: skip
    logger.info("fitting %d %s to %d pixels (%d sampled, %d distinct) on %s", k, "grays" if grayscale else "colors",
                n, len(sample), len(colors), device)  # fmt: skip
    grays = _kmeans_1d(colors[:, 0].astype(np.float64), counts.astype(np.float64), k) if grayscale else None
    if grays is not None:  # 1-D: the optimum (near it past 1024 distinct grays), in milliseconds
        return _sorted(_to_channels(grays.astype(np.float32)[:, None], 3))
    gen = torch.Generator(device=device).manual_seed(seed)
    points = torch.from_numpy(colors).to(device)
    weights = torch.from_numpy(counts.astype(np.float32)).to(device)
    inv = torch.from_numpy(inverse.astype(np.int64)).to(device)

    # k-means++ on the distinct colors of a sub-sample (weighted by how often they were drawn)
    pool, pool_w = np.unique(inverse[rng.integers(0, len(inverse), init_size or max(20 * k, 3 * batch_size))],
                             return_counts=True)  # fmt: skip
    if len(pool) < k:  # a few colors dominate: add distinct colors at random, weighted by their counts
        pool = np.union1d(pool, rng.choice(len(colors), min(len(colors), 4 * k), replace=False))
        pool_w = counts[pool]
    centers = torch.from_numpy(_kmeans_pp(colors[pool], pool_w, k, rng)).to(device)

    # mini-batch k-means (Sculley 2010)
    v, last_hit = torch.zeros(k, device=device), torch.zeros(k, dtype=torch.long, device=device)
    window = max(5, -(-10 * k // batch_size))
    ewa, best, stale = None, math.inf, 0
    bar = tqdm(total=max_iter + lloyd_iter, desc="fit_palette", disable=not progress, unit="step")
    for step in range(1, max_iter + 1):
        batch = points[inv[torch.randint(len(inv), (batch_size,), generator=gen, device=device)]]
        labels, dist = _nearest(batch, centers)
        hits = torch.bincount(labels, minlength=k).float()
        sums, won = _sum_by(labels, batch.double(), k).float(), hits > 0
        v += hits
        centers[won] += (sums[won] - hits[won, None] * centers[won]) / v[won, None]
        last_hit[won] = step
        if step % window == 0 and step <= 0.8 * max_iter:  # dead centers -> far-away batch points (D^2 sampling)
            dead = torch.nonzero(last_hit <= step - window).flatten()
            if len(dead) and bool((dist > 0).sum() >= len(dead)):
                centers[dead] = batch[torch.multinomial(dist, len(dead), generator=gen)]
                v[dead], last_hit[dead] = 1.0, step
        bar.update()
        ewa = float(dist.mean()) if ewa is None else 0.9 * ewa + 0.1 * float(dist.mean())
        best, stale = (ewa, 0) if ewa < best * (1 - tol) else (best, stale + 1)
        if tol > 0 and stale >= 10:
            logger.debug("mini-batch k-means stopped early after %d steps", step)
            break

    # weighted Lloyd passes over the sample's distinct colors, then checks that no center is left empty
    for it in range(lloyd_iter + 5):
        labels, dist = _nearest(points, centers)
        mass = torch.bincount(labels, weights.double(), minlength=k)  # sums of integers: exact in any order
        empty, full = torch.nonzero(mass == 0).flatten(), mass > 0
        done = not len(empty)  # past the Lloyd passes: this assignment owns every center
        if it < lloyd_iter:
            new = (_sum_by(labels, points.double() * weights.double()[:, None], k)[full] / mass[full, None]).float()
            done, centers[full] = done and bool((new == centers[full]).all()), new  # converged: same assignment
            logger.debug("Lloyd pass %d: inertia %.6g, %d empty", it + 1,
                         float((dist * weights).sum() / weights.sum()), len(empty))  # fmt: skip
            bar.update()
        far = min(len(empty), int((dist > 0).sum()))  # empty centers -> the distinct points farthest from theirs
        if far:
            centers[empty[:far]] = points[torch.topk(dist, far).indices]
        if done:
            break
    bar.close()
    if len(empty):
        logger.warning("%d palette colors own no sampled pixel", len(empty))
    palette = centers.clamp(-1, 1).cpu().numpy().astype(np.float32)
    return _sorted(_to_channels(palette, 3))


def _sorted(palette: np.ndarray) -> np.ndarray:
    luma = palette.astype(np.float64) @ _LUMA
    return np.ascontiguousarray(palette[np.lexsort((palette[:, 2], palette[:, 1], palette[:, 0], luma))])


# --- measuring a palette ----------------------------------------------------------------------------------------


def _palette_array(palette: Any) -> np.ndarray:
    p = _as_array(palette)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0 or not np.issubdtype(p.dtype, np.number):
        raise ValueError(f"palette must be an array of shape (K, 3) of RGB colors in [-1, 1], got {p.shape} {p.dtype}")
    if not (np.isfinite(p).all() and np.abs(p).max() <= 1):
        raise ValueError("palette colors must be finite and lie in [-1, 1]")
    return p


def _color_counts(flat: np.ndarray, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C) -> its distinct colors as float32 (M, 3) in [-1, 1] and their counts, by a histogram."""
    size = 256 if flat.shape[1] == 1 else 1 << 24
    hist = np.zeros(size, dtype=np.int64)
    for start in range(0, len(flat), chunk):
        hist += np.bincount(_codes(flat[start : start + chunk]), minlength=size)
    codes = np.flatnonzero(hist)
    return _LUT[_to_channels(_decode(codes, flat.shape[1]), 3)], hist[codes].astype(np.float64)


def palette_inertia(pixels: Any, palette: Any) -> float:
    """Mean squared distance of the pixels (as :func:`fit_palette` takes them) to their nearest palette color, in
    [-1, 1] RGB units (grays as R = G = B); in chunks (uint8 through a color histogram)."""
    flat, centers = _flat_pixels(pixels), torch.from_numpy(_palette_array(palette).astype(np.float32))
    if flat.dtype == np.uint8:
        colors, counts = _color_counts(flat)
        dist = _nearest(torch.from_numpy(colors), centers)[1].double().numpy()
        return float(dist @ counts / counts.sum())
    total = 0.0
    for start in range(0, len(flat), 1 << 20):
        x = torch.from_numpy(np.ascontiguousarray(_to_channels(flat[start : start + (1 << 20)], 3)))
        total += float(_nearest(x, centers)[1].double().sum())
    return total / len(flat)


def color_frequencies(ids: Any, k: int) -> np.ndarray:
    """Relative frequency of each palette index 0..k-1 in ``ids`` (any shape): float64 (k,), summing to 1."""
    ids = _as_array(ids)
    if not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
        raise ValueError(f"ids must be a non-empty array of integer color ids, got {ids.dtype} of shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= k:
        raise ValueError(f"ids must lie in [0, {k}) (drop the start token {k}), got [{ids.min()}, {ids.max()}]")
    return np.bincount(ids.ravel(), minlength=k) / ids.size


def unigram_entropy(pixels_or_ids: Any, palette: Any) -> float:
    """Entropy in nats of the palette colors' frequencies: the loss of a model that ignores context.

    Takes color ids (any integer dtype but uint8), or pixels as :func:`fit_palette` (uint8 or float in [-1, 1]),
    quantized to ``palette`` as the processor does (:func:`imagegpt.processor.color_quantize`).
    """
    from imagegpt.processor import color_quantize

    palette = _palette_array(palette)
    data = _as_array(pixels_or_ids)
    if np.issubdtype(data.dtype, np.integer) and data.dtype != np.uint8:
        freq = color_frequencies(data, len(palette))
    else:
        flat = _flat_pixels(data)
        if flat.dtype == np.uint8:
            colors, counts = _color_counts(flat)
        else:
            colors, counts = _to_channels(flat, 3), np.ones(len(flat))
        freq = np.bincount(color_quantize(colors, palette), weights=counts, minlength=len(palette)) / counts.sum()
    p = freq[freq > 0]
    return float(-(p * np.log(p)).sum())


def save_palette(palette: Any, out_dir: str | os.PathLike, *, size: Any = 32, **processor_kwargs: Any) -> Path:
    """Save ``ImageGPTImageProcessor(clusters=palette, size=size, **kwargs)``; returns its preprocessor_config.json
    (which transformers' ImageGPTImageProcessor loads too)."""
    from imagegpt.processor import ImageGPTImageProcessor

    clusters = _palette_array(palette).astype(np.float32)
    return Path(ImageGPTImageProcessor(clusters=clusters, size=size, **processor_kwargs).save_pretrained(out_dir)[0])
