"""Model-based clustering (MBC; Ostapenko et al. 2024, mttl's MBCWithCosSimTransform):
`python -m mmpt.library cluster LIB --k K` groups the library's tasks by their experts' weights.

1. each expert's LoRA parameters flattened into one row (A then B of each target, in index order);
2. each row's entries with |w| at or below the row's `sparsity` quantile set to 0;
3. scikit-learn TruncatedSVD (randomized, 5 iterations, seed 42) to `components` dimensions
   (fewer when there are fewer experts: at most E), rows L2-normalised;
4. the cosine-similarity matrix of the experts (in name order, as mttl sorts them), and KMeans
   (k-means++, n_init 10, seed 42) on its rows. Writes LIB/clusters.json: {"cluster_<i>": [task names]}.
"""
import json
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics.pairwise import cosine_similarity

from mmpt.library.store import LibraryError

CLUSTERS = "clusters.json"


@dataclass
class ClusterOptions:
    k: int = 10                # clusters (mttl's default)
    sparsity: float = 0.5      # share of each row zeroed (mttl's mbc_clustering.py; its config says 0.8)
    components: int = 64       # SVD dimensions
    seed: int = 42             # TruncatedSVD's and KMeans' random_state


def flat_rows(lib) -> np.ndarray:
    """[E, P]: every expert's A and B tensors, flattened and concatenated."""
    keys = [f"{m}.lora_{ab}" for m in lib.compat["targets"] for ab in "AB"]
    return np.stack([np.concatenate([t[k].reshape(-1).numpy() for k in keys])
                     for t in (lib.tensors(n) for n in lib.names)]).astype(np.float32)


def sparsify(rows: np.ndarray, sparsity: float) -> np.ndarray:
    thr = np.quantile(np.abs(rows), sparsity, axis=1)
    out = rows.copy()
    out[np.abs(out) <= thr[:, None]] = 0.0
    return out


def embed(rows: np.ndarray, components: int, seed: int) -> np.ndarray:
    svd = TruncatedSVD(n_components=components, algorithm="randomized", n_iter=5, random_state=seed)
    z = svd.fit_transform(rows)
    return z / np.linalg.norm(z, axis=1, keepdims=True).clip(min=1e-12)


def components_for(n_experts: int, wanted: int) -> int:
    """E experts span at most E dimensions: scikit-learn returns no more (mttl asks 64 regardless)."""
    return min(wanted, n_experts)


def cluster(lib, opts: ClusterOptions = ClusterOptions()) -> tuple:
    """({cluster name: [task names]}, components used); refuses k outside [1, E] in one line."""
    n = len(lib.names)
    if lib.kind != "lora":
        raise LibraryError(f"library {lib.path} holds {lib.kind} experts; MBC clusters LoRA experts")
    if not isinstance(opts.k, int) or not 1 <= opts.k <= n:
        raise LibraryError(f"--k {opts.k}: expected an integer in [1, {n}] (the library has {n} experts)")
    if not 0 <= opts.sparsity < 1:
        raise LibraryError(f"--sparsity {opts.sparsity}: expected a number in [0, 1)")
    used = components_for(n, opts.components)
    sim = similarity(lib, opts.sparsity, used, opts.seed)
    labels = KMeans(n_clusters=opts.k, init="k-means++", n_init=10, random_state=opts.seed).fit(sim).labels_
    task = {row["name"]: row.get("task") or row["name"] for row in lib.experts}
    groups = {}
    for label, name in sorted(zip(labels.tolist(), sorted(lib.names))):
        groups.setdefault(f"cluster_{label}", []).append(task[name])
    return groups, used


def similarity(lib, sparsity: float, components: int, seed: int) -> np.ndarray:
    """[E, E]: the cosine similarities of the experts' embeddings, experts in name order."""
    emb = embed(sparsify(flat_rows(lib), sparsity), components, seed)
    emb = emb[np.argsort(lib.names, kind="stable")]
    return cosine_similarity(emb, emb)


def write_clusters(lib, groups: dict) -> None:
    tmp = lib.path / (CLUSTERS + ".tmp")
    tmp.write_text(json.dumps(groups, indent=1))
    tmp.replace(lib.path / CLUSTERS)


def table(groups: dict) -> str:
    width = max(len(c) for c in groups)
    return "\n".join(f"{c.ljust(width)}  {len(t):3d}  {', '.join(t)}" for c, t in groups.items())
