"""The per-level GEMM passes (M2M, L2L, DC2E) split their rows over threads: every row's sum
must be the one a plain loop over the pairs gives, whatever the thread count and with absent
children (-1), on random operators and densities (numpy reference written here)."""
from types import SimpleNamespace

import numpy as np
import pytest

from aotfmm import _threads, expansions


def _ops(rng, n_surf=40, up=30, down=35):
    return SimpleNamespace(
        n_surf=n_surf, up_rank=up, down_rank=down,
        m2m=rng.standard_normal((8, up, n_surf)), uc2e_a=rng.standard_normal((n_surf, up)),
        l2l=rng.standard_normal((8, down, n_surf)), dc2e_a=rng.standard_normal((n_surf, down)))


def _tree(rng, n_parents):
    """Distinct parents among 10 n boxes and their children (distinct, some -1)."""
    n_boxes = 10 * n_parents
    boxes = rng.permutation(n_boxes)
    parents = boxes[:n_parents]
    children = boxes[n_parents:9 * n_parents].reshape(n_parents, 8).copy()
    children[rng.random(children.shape) < 0.3] = -1
    return n_boxes, parents, children


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3])
def test_level_passes_match_a_loop_over_pairs(threads, k):
    rng = np.random.default_rng(threads * 10 + k)
    ops = _ops(rng)
    n_boxes, parents, children = _tree(rng, 7 * expansions._MIN_SPLIT_ROWS + 5)
    workers = _threads.Workers(threads)
    assert len(expansions._row_ranges(len(parents), workers)) == threads + 1  # really split

    def dens(width):
        return rng.standard_normal((n_boxes, k * width))

    equiv = dens(ops.n_surf)
    want = equiv.copy()
    for i, p in enumerate(parents):
        for d in range(k):
            acc = np.zeros(ops.up_rank)
            for c in range(8):
                if children[i, c] >= 0:
                    src = equiv[children[i, c], d * ops.n_surf:(d + 1) * ops.n_surf]
                    acc += ops.m2m[c] @ src
            want[p, d * ops.n_surf:(d + 1) * ops.n_surf] += ops.uc2e_a @ acc
    expansions.m2m(ops, equiv, parents, children, workers=workers)
    np.testing.assert_allclose(equiv, want, rtol=1e-12, atol=1e-12)

    local, dcheck = dens(ops.n_surf), dens(ops.down_rank)
    want = dcheck.copy()
    for i, p in enumerate(parents):
        for c in range(8):
            ch = children[i, c]
            if ch >= 0:
                for d in range(k):
                    want[ch, d * ops.down_rank:(d + 1) * ops.down_rank] += \
                        ops.l2l[c] @ local[p, d * ops.n_surf:(d + 1) * ops.n_surf]
    expansions.l2l(ops, local, dcheck, parents, children, workers=workers)
    np.testing.assert_allclose(dcheck, want, rtol=1e-12, atol=1e-12)

    rows = np.concatenate([parents, children[children >= 0]])  # distinct boxes
    want = local.copy()
    for r in rows:
        for d in range(k):
            want[r, d * ops.n_surf:(d + 1) * ops.n_surf] += \
                ops.dc2e_a @ dcheck[r, d * ops.down_rank:(d + 1) * ops.down_rank]
    expansions.dc2e(ops, dcheck, local, rows, workers=workers)
    np.testing.assert_allclose(local, want, rtol=1e-12, atol=1e-12)
    workers.close()
