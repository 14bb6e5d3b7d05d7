"""Property tests (hypothesis) on windowing: no gaps, no overlap unless stride < length, targets aligned."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodules.base import StreamWindows, _share, batchify
from datamodules.timeseries import WindowDataset, window_starts

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(streams=st.integers(1, 300), data=st.data())
def test_each_process_gets_the_streams_tensor_split_gives_it(streams, data):
    parts = data.draw(st.integers(1, streams))
    expected = torch.arange(streams).tensor_split(parts)
    for part in range(parts):
        assert torch.arange(streams)[_share(streams, parts, part)].tolist() == expected[part].tolist()


@FAST
@given(rows=st.integers(1, 200), length=st.integers(1, 40), horizon=st.integers(1, 10), stride=st.integers(1, 50))
def test_window_starts_step_by_stride_and_stay_inside(rows, length, horizon, stride):
    starts = window_starts(rows, length, horizon, stride).tolist()
    if rows < length + horizon:
        assert starts == []
        return
    assert starts[0] == 0
    assert all(b - a == stride for a, b in zip(starts, starts[1:], strict=False))
    assert starts[-1] + length + horizon <= rows  # inputs and targets inside the rows
    assert starts[-1] + stride + length + horizon > rows  # and no window that fits was left out
    covered = torch.zeros(rows, dtype=torch.long)
    for s in starts:
        covered[s : s + length] += 1
    span = covered[: starts[-1] + length]
    if stride <= length:
        assert (span >= 1).all()  # no gaps
    else:
        assert (span <= 1).all() and ((span == 0).any() or len(starts) == 1)  # stride > length: gaps, no overlap
    assert (span <= 1).all() == (stride >= length or len(starts) == 1)  # overlap only when stride < length


@FAST
@given(
    rows=st.integers(2, 80),
    length=st.integers(1, 12),
    horizon=st.integers(1, 5),
    stride=st.integers(1, 8),
    columns=st.integers(1, 3),
    targets=st.integers(1, 2),
    batch=st.integers(1, 6),
)
def test_window_targets_are_the_next_horizon_values(rows, length, horizon, stride, columns, targets, batch):
    targets = min(targets, columns)
    values = torch.arange(rows * columns, dtype=torch.float32).reshape(rows, columns)  # (n, C), every cell distinct
    dataset = WindowDataset(values, values[:, :targets], length, horizon, stride)
    if len(dataset) == 0:
        assert rows < length + horizon
        return
    indices = list(range(len(dataset)))[:batch]
    item = dataset[indices]
    assert item["x"].shape == (len(indices), length, columns)
    assert item["y"].shape == (len(indices), length, horizon, targets)
    for b, i in enumerate(indices):
        s = int(dataset.starts[i])
        assert torch.equal(item["x"][b], values[s : s + length])
        for t in range(length):
            assert torch.equal(item["y"][b, t], values[s + t + 1 : s + t + 1 + horizon, :targets])


@FAST
@given(n=st.integers(2, 300), streams=st.integers(1, 8), window=st.integers(1, 50))
def test_stream_windows_tile_each_row_without_gap_or_overlap(n, streams, window):
    if n < streams:
        return
    stream = torch.arange(n)
    rows = batchify(stream, streams)  # (B, n // B)
    assert torch.equal(rows.flatten(), stream[: rows.numel()])  # rows are contiguous pieces, in order
    if rows.shape[1] < 2:
        return
    data = StreamWindows(rows[:, :-1], rows[:, 1:], window)
    pieces = [data[i] for i in range(len(data))]
    assert all(p["x"].shape[1] == window for p in pieces[:-1]) and 1 <= pieces[-1]["x"].shape[1] <= window
    x = torch.cat([p["x"] for p in pieces], dim=1)
    y = torch.cat([p["y"] for p in pieces], dim=1)
    assert torch.equal(x, rows[:, :-1])  # concatenated windows give back each row: no gap, no overlap
    assert torch.equal(y, x + 1)  # the target of every step is the next element of the stream


@FAST
@given(
    rows=st.integers(2, 60),
    length=st.integers(1, 12),
    horizon=st.integers(1, 4),
    stride=st.integers(1, 6),
    data=st.data(),
)
def test_score_last_marks_exactly_the_last_steps_and_changes_nothing_else(rows, length, horizon, stride, data):
    score_last = data.draw(st.integers(1, length))
    values = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2)
    plain = WindowDataset(values, values[:, :1], length, horizon, stride)
    masked = WindowDataset(values, values[:, :1], length, horizon, stride, score_last)
    if len(plain) == 0:
        return
    indices = data.draw(st.lists(st.integers(0, len(plain) - 1), min_size=1, max_size=5))
    a, b = plain[indices], masked[indices]
    assert "mask" not in a and torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    mask = b["mask"]
    assert mask.dtype == torch.bool and mask.shape == (len(indices), length)
    assert (mask.sum(dim=1) == score_last).all()  # score_last steps per window ...
    assert mask[:, length - score_last :].all()  # ... the last ones
