"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is as fast, and two spin-waiting threads crawl on a busy 2-core machine.
    Test files use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A fresh working directory: the CLI's default ``runs/`` goes there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
