import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _tmp_cache_dir(tmp_path_factory, monkeypatch):
    """Every test uses a private operator cache (never the user's)."""
    d = tmp_path_factory.getbasetemp() / "aotfmm-cache"
    d.mkdir(exist_ok=True)
    monkeypatch.setenv("AOTFMM_CACHE_DIR", str(d))
    return d


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)
