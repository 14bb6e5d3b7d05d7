"""Where the tests find data offline: CLI overrides that point each shipped config at ``../shared/data``.

``config_overrides(config)`` returns the extra ``python -m seqstab.train`` arguments a test adds to run a config
without the network and on small settings. The installed package never reads ``../shared``; only tests do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Tokenized corpora are cached here between test runs (never in ~/.cache, never in ../shared).
TEST_CACHE = Path(tempfile.gettempdir()) / "seqstab-test-cache"

_SMALL_SAMPLED = ["--data.num_train", "200", "--data.num_val", "100", "--data.num_test", "100"]

OVERRIDES: dict[str, list[str]] = {
    "lm/wikitext2_lstm.yaml": ["--data.data_dir", str(SHARED_DATA / "wikitext-2")],
    "lm/shakespeare_char_lstm.yaml": ["--data.data_dir", str(SHARED_DATA / "tinyshakespeare")],
    "timeseries/etth1_lstm.yaml": ["--data.path", str(SHARED_DATA / "timeseries" / "ETTh1.csv")],
    "timeseries/airline_rnn.yaml": ["--data.path", str(SHARED_DATA / "timeseries" / "airline-passengers.csv")],
    "timeseries/sunspots_lstm_stream.yaml": ["--data.path", str(SHARED_DATA / "timeseries" / "monthly-sunspots.csv")],
    "timeseries/mackey_glass_rnn.yaml": ["--data.length", "1000"],
    "synthetic/adding_rnn.yaml": _SMALL_SAMPLED,
    "synthetic/copying_lstm.yaml": _SMALL_SAMPLED,
    "synthetic/temporal_order_rnn.yaml": _SMALL_SAMPLED,
}


def config_overrides(config_path: str | Path) -> list[str]:
    """Extra CLI arguments that run ``config_path`` offline on small settings; ``[]`` for configs not listed."""
    path = Path(config_path).resolve()
    try:
        key = path.relative_to(REPO / "configs").as_posix()
    except ValueError:
        return []
    extra = list(OVERRIDES.get(key, []))
    if key.startswith("lm/"):
        extra += ["--data.cache_dir", str(TEST_CACHE)]
    return extra
