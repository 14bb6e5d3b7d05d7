"""One update's scalar event for TensorBoard: seqstab's encoder (``seqstab.core.logs.scalar_event``) against the
protobuf messages built and serialized, side by side.

    python benchmarks/bench_events.py                  # the word LM's tags (~10 s)
    python benchmarks/bench_events.py --tags 40 --rounds 9

The tags are those of an update of the word LM: 7 at most updates (loss, the clip's four, the learning rate,
``explosion/events``), 19 at a logging step (with the per-module gradient and weight norms); ``--tags`` lists the
counts to time. Both encoders run in alternating rounds (which goes first
alternates too), ``--events`` events a round at increasing steps; the table gives each one's median µs an event and
the ratio. The bytes are the same (``tests/test_monitor.py`` compares them): the check here repeats that on the
events timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

from seqstab.core.logs import scalar_event


def protobuf_event(metrics: dict[str, float], step: int, wall_time: float) -> bytes:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in metrics.items()]
    return Event(wall_time=wall_time, step=step, summary=Summary(value=values)).SerializeToString()


def tags(count: int) -> dict[str, float]:
    first = ["train/loss", "grad/norm_total", "grad/norm_total_clipped", "grad/clipped", "grad/clip_threshold"]
    names = first + ["train/lr", "explosion/events"]
    modules = ["encoder.0", "net.layers.0.ih", "net.layers.0.hh", "net.layers.1.ih", "net.layers.1.hh", "head.1"]
    names += [f"{kind}/norm/{module}" for module in modules for kind in ("grad", "weight")]
    names += [f"extra/tag_{i}" for i in range(max(0, count - len(names)))]
    return {name: 1.0 / (i + 3) for i, name in enumerate(names[:count])}


def timed(encode, metrics: dict[str, float], first_step: int, events: int) -> float:
    start = time.perf_counter()
    for step in range(first_step, first_step + events):
        encode(metrics, step, 1.7e9 + step)
    return (time.perf_counter() - start) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", default="7,19", help="comma list of tag counts an event")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    encoders = {"protobuf": protobuf_event, "seqstab": scalar_event}
    print(f"{args.rounds} rounds × {args.events} events; the same bytes from both\n")
    print("| tags an event | protobuf µs | seqstab µs | protobuf ÷ seqstab |\n|---:|---:|---:|---:|")
    for count in (int(c) for c in args.tags.split(",")):
        metrics = tags(count)
        for step in range(1000, 1200):
            assert scalar_event(metrics, step, 1.7e9 + step) == protobuf_event(metrics, step, 1.7e9 + step)
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for r in range(args.rounds):
            for name in list(encoders)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(timed(encoders[name], metrics, 1000 + r * args.events, args.events))
        proto, ours = statistics.median(times["protobuf"]), statistics.median(times["seqstab"])
        print(f"| {len(metrics)} | {proto:.2f} | {ours:.2f} | {proto / ours:.2f} |")


if __name__ == "__main__":
    main()
