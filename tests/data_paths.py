"""Where the tests find data offline: CLI overrides that point each shipped config at ``../shared/data``.

``config_overrides(config)`` returns the extra ``python -m seqstab.train`` arguments a test adds to run a config
without the network and on small settings. The installed package never reads ``../shared``; only tests do.
The data location follows from the config's datamodule (any config, whoever wrote it); a few configs of the
datamodules issue also get smaller sizes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Tokenized corpora are cached here between test runs (never in ~/.cache, never in ../shared).
TEST_CACHE = Path(tempfile.gettempdir()) / "seqstab-test-cache"

# Corpora by datamodule. Penn Treebank is not in ../shared/data: WikiText-2 stands in (same file names).
TEXT_DIRS = {
    "datamodules.text.WikiText2": SHARED_DATA / "wikitext-2",
    "datamodules.text.PennTreebank": SHARED_DATA / "wikitext-2",
    "datamodules.text.TinyShakespeare": SHARED_DATA / "tinyshakespeare",
}

_SMALL_SAMPLED = ["--data.num_train", "200", "--data.num_val", "100", "--data.num_test", "100"]
SMALLER = {
    "timeseries/mackey_glass_rnn.yaml": ["--data.length", "1000"],
    "synthetic/adding_rnn.yaml": _SMALL_SAMPLED,
    "synthetic/copying_lstm.yaml": _SMALL_SAMPLED,
    "synthetic/temporal_order_rnn.yaml": _SMALL_SAMPLED,
}


def config_overrides(config_path: str | Path) -> list[str]:
    """Extra CLI arguments that run ``config_path`` offline (and, for some, smaller); ``[]`` if none are needed."""
    path = Path(config_path).resolve()
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    if isinstance(data, str):
        data = {"class_path": data}
    class_path = data.get("class_path", "")
    init_args = data.get("init_args") or {}
    extra: list[str] = []
    if class_path in TEXT_DIRS:
        extra += ["--data.data_dir", str(TEXT_DIRS[class_path]), "--data.cache_dir", str(TEST_CACHE)]
    elif class_path == "datamodules.timeseries.CSVSeries" and init_args.get("url"):
        local = SHARED_DATA / "timeseries" / PurePosixPath(init_args["url"]).name
        if local.is_file():
            extra += ["--data.path", str(local)]
    if path.is_relative_to(REPO / "configs"):
        extra += SMALLER.get(path.relative_to(REPO / "configs").as_posix(), [])
    return extra
