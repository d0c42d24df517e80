"""MBC clustering (mmpt/library/mbc.py) against a port of mttl's SVDEmbeddingTransform +
MBCWithCosSimTransform written here from their definitions."""
import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics.pairwise import cosine_similarity

from mmpt.library.__main__ import main as cli
from mmpt.library.mbc import ClusterOptions, cluster, similarity
from test_library_scale import synthetic_library


def mttl_mbc(lib, k, sparsity=0.5, n_components=64, random_state=42):
    """mttl's steps: flatten each expert's weights, zero |w| <= the row's quantile, randomized
    TruncatedSVD, L2-normalise, sort by name, cosine similarity, KMeans on its rows."""
    names, rows = [], []
    for name in lib.names:
        tensors = lib.tensors(name)
        rows.append(torch.nn.utils.parameters_to_vector([tensors[key] for key in sorted(tensors)]))
        names.append(name)
    array = torch.stack(rows).numpy()
    thr = np.quantile(np.abs(array), sparsity, axis=1)
    array[np.abs(array) <= thr.reshape(-1, 1)] = 0.0
    svd = TruncatedSVD(n_components=n_components, algorithm="randomized", n_iter=5, n_oversamples=10,
                       power_iteration_normalizer="auto", random_state=random_state, tol=0.0)
    emb = svd.fit_transform(array)
    emb = emb / np.linalg.norm(emb, 2, axis=1)[:, None]
    names, emb = zip(*sorted(zip(names, emb), key=lambda p: p[0]))
    sim = cosine_similarity(np.stack(emb), np.stack(emb))
    labels = KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=random_state).fit(sim).labels_
    clusters = defaultdict(list)
    for name, label in zip(names, labels):
        clusters[f"cluster_{label}"].append(name)
    return dict(clusters), sim


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mbc")
    return {"random": synthetic_library(root / "random", 12, model="t5_tiny", seed=3),
            "grouped": synthetic_library(root / "grouped", 12, model="t5_tiny", seed=4, groups=3)}


@pytest.mark.parametrize("which, k, sparsity", [("random", 3, 0.5), ("random", 4, 0.8), ("grouped", 3, 0.5)])
def test_clusters_are_mttls(libs, which, k, sparsity):
    lib = libs[which]
    want, want_sim = mttl_mbc(lib, k, sparsity)
    got, used = cluster(lib, ClusterOptions(k=k, sparsity=sparsity))
    assert used == 12  # 12 experts: 12 SVD dimensions, not 64
    assert np.allclose(similarity(lib, sparsity, used, 42), want_sim, atol=1e-6)
    assert {c: sorted(t) for c, t in got.items()} == {c: sorted(t) for c, t in want.items()}
    if which == "grouped":  # the planted groups (expert i in group i % 3)
        assert sorted(sorted(int(t[1:]) % 3 for t in ts) for ts in got.values()) == [[0] * 4, [1] * 4, [2] * 4]


def test_cluster_cli_writes_clusters_json_and_prints_the_table(libs, capsys):
    lib = libs["grouped"]
    assert cli(["cluster", str(lib.path), "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "TruncatedSVD: 12 components, not 64" in out and "wrote 3 clusters" in out
    groups = json.loads((lib.path / "clusters.json").read_text())
    assert sorted(t for ts in groups.values() for t in ts) == sorted(lib.names)
    assert all(f"{c}" in out for c in groups)


@pytest.mark.parametrize("k", ["13", "0"])
def test_k_outside_the_experts_is_one_line_and_writes_nothing(libs, capsys, k):
    lib = libs["random"]
    assert cli(["cluster", str(lib.path), "--k", k]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--k {k}" in err and "12 experts" in err
    assert not (lib.path / "clusters.json").exists()
