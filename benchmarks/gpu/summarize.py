"""``summary.md`` and ``results.json`` of a ``benchmarks/gpu_check.sh`` run, from what its steps left in WORK.

    python benchmarks/gpu/summarize.py WORK OUTDIR

Reads ``WORK/steps.tsv`` (step, status, seconds, limit), ``WORK/json/*.json`` and ``WORK/logs/*.log``; imports
nothing heavy, so it runs after every step (a run cut short still leaves the summary of what finished).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

DATASHEET = {"fp32": 67.0, "tf32_dense": 494.5}  # TFLOP/s, H200 SXM (see env_info.py)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def num(x, fmt: str = ".4g") -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "NO"
    return format(x, fmt)


def yes(x) -> str:
    return "–" if x is None else ("yes" if x else "**NO**")


class Summary:
    def __init__(self, work: Path):
        self.work = work
        self.steps: dict[str, dict] = {}
        tsv = work / "steps.tsv"
        if tsv.is_file():
            for line in tsv.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 3:
                    self.steps[parts[0]] = {"status": parts[1], "seconds": parts[2], "limit": parts[3:4] or [""]}
        self.json = {p.stem: read_json(p) for p in sorted((work / "json").glob("*.json"))}
        self.meta = read_json(work / "meta.json") or {}
        self.lines: list[str] = []

    def say(self, *lines: str) -> None:
        self.lines.extend(lines)

    def status(self, *names: str) -> str:
        return "; ".join(f"`{n}`: {self.steps[n]['status']}" if n in self.steps else f"`{n}`: not run" for n in names)

    def log_tail(self, name: str, lines: int = 12) -> str:
        path = self.work / "logs" / f"{name}.log"
        if not path.is_file():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(["", "```", *tail, "```", ""])

    def failed_tail(self, *names: str) -> None:
        for n in names:
            if n in self.steps and self.steps[n]["status"].startswith("FAILED"):
                self.say(f"Last lines of `{n}`:", self.log_tail(n))

    # -- sections ----------------------------------------------------------------------------------------------

    def header(self) -> None:
        m = self.meta
        self.say(
            "# GPU check (issue 16: the GPU path, measured; issue 30: no host sync between logging steps)",
            "",
            f"- command: `{m.get('command', 'bash benchmarks/gpu_check.sh OUTDIR')}`",
            f"- started {m.get('started', '?')}, summary written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
            f"{m.get('elapsed', '?')} s elapsed of a {m.get('budget', '?')} s budget",
            f"- device: {m.get('device', '?')}; data: {m.get('data', '?')}",
            f"- git: {m.get('git', '?')}",
            "",
        )
        env = self.json.get("env")
        if env:
            gpu = env.get("gpu") or {}
            v = env.get("versions", {})
            self.say(
                "## Machine",
                "",
                f"- GPU: {gpu.get('name', 'none')} (compute capability {gpu.get('capability', '–')}, "
                f"{gpu.get('memory_gib', '–')} GiB, {gpu.get('multiprocessors', '–')} SMs)",
                f"- nvidia-smi: `{(env.get('nvidia_smi') or '–').replace(chr(10), ' | ')}`",
                f"- Python {env.get('python')} ({env.get('executable')}), torch {env.get('torch')}, CUDA runtime "
                f"{env.get('cuda_runtime')}, cuDNN {env.get('cudnn')}, pytorch-lightning {v.get('pytorch-lightning')}, "
                f"lightning {v.get('lightning')}, jsonargparse {v.get('jsonargparse')}, tensorboard "
                f"{v.get('tensorboard')}, numpy {v.get('numpy')}, pytest {v.get('pytest')}, hypothesis "
                f"{v.get('hypothesis')}, seqstab {v.get('seqstab')}",
                f"- TF32: `{env.get('tf32')}`",
            )
            measured = env.get("measured_tflops")
            if measured:
                self.say(
                    "- matmul 8192² (best of 10): fp32 TF32 off {:.1f}, fp32 TF32 on {:.1f}, bf16 {:.1f} TFLOP/s; "
                    "datasheet (H200 SXM, dense): FP32 67, TF32 494.5, BF16 989.5 TFLOP/s".format(
                        measured["fp32_mm_tf32_off"], measured["fp32_mm_tf32_on"], measured["bf16_mm"]
                    )
                )
            self.say("")
        self.say("## Steps", "", "| step | status | seconds | limit s |", "|---|---|---:|---:|")
        for name, s in self.steps.items():
            self.say(f"| {name} | {s['status']} | {s['seconds']} | {s['limit'][0]} |")
        failed = [n for n, s in self.steps.items() if s["status"].startswith("FAILED")]
        self.say("", f"Failed steps: {', '.join(failed) if failed else 'none'}", "")

    def tests_and_fits(self) -> None:
        self.say("## 1. CUDA tests and short fits on `--trainer.accelerator gpu`", "")
        self.say(f"- {self.status('cuda_tests')}")
        log = self.work / "logs" / "cuda_tests.log"
        if log.is_file():
            text = log.read_text(errors="replace")
            final = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected)", ln)]
            listed = re.findall(r"^(?:PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS) .*$", text, flags=re.M)
            self.say(f"- pytest: `{final[-1].strip('= ') if final else 'no summary line'}`")
            for line in listed:
                self.say(f"  - `{line}`")
        self.failed_tail("cuda_tests")
        for name in ("fit_default", "fit_wikitext2"):
            fit = self.json.get(name)
            self.say(f"- {self.status(name)}")
            if fit:
                sc = fit.get("scalars", {})
                dev = fit.get("device") or {}

                def last(tag, sc=sc):
                    return num(sc[tag]["last"][1]) if tag in sc else "–"

                self.say(
                    f"  - {fit.get('applied_line') or 'no `updates applied` line'}; device {dev.get('type')} "
                    f"{dev.get('name')} ({dev.get('accelerator')}, precision {dev.get('precision')}); "
                    f"{num(fit.get('seconds'), '.0f')} s for the whole command"
                    + (
                        f" ({fit['updates_per_s_whole_command']:.1f} updates/s incl. start-up)"
                        if fit.get("updates_per_s_whole_command")
                        else ""
                    ),
                    f"  - last train/loss {last('train/loss')}, val/loss {last('val/loss')}, val/ppl "
                    f"{last('val/ppl')}, grad/norm_total {last('grad/norm_total')}; gradient flow logged at "
                    f"{sc.get('grad_flow/first', {}).get('points', 0)} updates (grad_flow/growth last "
                    f"{last('grad_flow/growth')})",
                    f"  - run directory: `{fit.get('run_dir')}`",
                )
            self.failed_tail(name)
        self.say("")

    def determinism(self) -> None:
        self.say("## 2. Determinism (explode config on the GPU)", "", f"- {self.status('determinism')}")
        d = self.json.get("determinism")
        if d:
            self.say(
                "",
                "| run | deterministic_algorithms | cudnn.deterministic | CUBLAS_WORKSPACE_CONFIG | updates logged "
                "| first event (update, reason, norm) | events | first update with norm > 1e6 | first non-finite |",
                "|---|---|---|---|---:|---|---:|---:|---:|",
            )
            for name, r in d.get("runs", {}).items():
                if "error" in r:
                    self.say(f"| {name} | {r['error']} |")
                    continue
                det = r.get("determinism") or {}
                ev = r.get("first_event") or {}
                self.say(
                    f"| {name} | {det.get('deterministic_algorithms')} | {det.get('cudnn_deterministic')} "
                    f"| {det.get('CUBLAS_WORKSPACE_CONFIG')} | {r['updates_logged']} "
                    f"| {ev.get('update')}, {ev.get('reason')}, {num(ev.get('norm'))} | {r['events']} "
                    f"| {num(r.get('first_update_norm_above_1e6'))} | {num(r.get('first_non_finite_update'))} |"
                )
            for key, label in (("det_a_vs_det_b", "deterministic A vs B"), ("det_a_vs_nondet", "A vs no flag")):
                c = d.get(key)
                if c:
                    self.say(
                        f"- {label}: grad/norm_total bitwise equal {yes(c['grad_norm_total_bitwise_equal'])} "
                        f"({c['points'][0]} vs {c['points'][1]} points; first differing update "
                        f"{num(c['first_differing_update'])}; max relative difference {num(c['max_rel_diff'])}); "
                        f"first event equal {yes(c['first_event_equal'])}; all events equal "
                        f"{yes(c['all_events_equal'])}; final weights bitwise equal "
                        f"{yes(c['final_weights_bitwise_equal'])}"
                    )
            self.say(
                f"- verdict: deterministic runs equal {yes(d.get('pass'))}; the run without the flag "
                f"{'differs' if d.get('nondet_differs') else 'is equal too'}"
            )
        self.failed_tail("determinism")
        self.say("")

    def amp(self) -> None:
        self.say("## 3. AMP: NormClip sees unscaled gradients; a spike under 16-mixed", "", f"- {self.status('amp')}")
        a = self.json.get("amp")
        if a:
            self.say(
                "",
                "Logged pre-clip norm (TensorBoard `grad/norm_total`) against the float64 norm of float32 gradients "
                "recomputed with autocast off on the same weights and batch, at every update without an overflow:",
                "",
                "| door | precision | updates compared | max rel. diff | median rel. diff | tolerance | GradScaler "
                "overflows | pass | grad_flow first / last at update 0, rel. diff vs 32-true |",
                "|---|---|---:|---:|---:|---:|---:|---|---|",
            )
            for name, r in a.get("runs", {}).items():
                if name.endswith("+spikes"):
                    continue
                door, precision = name.split("/")
                flow = r.get("grad_flow_step0_rel_diff_vs_fp32") or {"first": "(baseline)", "last": "(baseline)"}
                self.say(
                    f"| {door} | {precision} | {r['compared']} | {num(r['max_rel_diff'])} "
                    f"| {num(r['median_rel_diff'])} | {num(a['tolerance'].get(precision))} | {r['overflows']} "
                    f"| {yes(r.get('pass'))} | {num(flow.get('first'))} / {num(flow.get('last'))} |"
                )
            self.say(
                "",
                "Spikes under 16-mixed (`ExplosionGuard(policy='skip')`):",
                "",
                "| door | update | loss × | handled by | applied | loss scale before → after | logged norm |",
                "|---|---:|---:|---|---|---|---:|",
            )
            for name, r in a.get("runs", {}).items():
                if not name.endswith("+spikes"):
                    continue
                v = r.get("verdict", {})
                for step, s in v.get("spikes", {}).items():
                    self.say(
                        f"| {name.split('/')[0]} | {step} | {num(s['factor'], 'g')} | {s.get('handled_by', '–')} "
                        f"| {yes(s.get('applied')) if s.get('reached') else 'not reached'} "
                        f"| {num(s.get('scale_before'), 'g')} → {num(s.get('scale_after'), 'g')} "
                        f"| {num(s.get('norm'))} |"
                    )
                self.say(
                    f"| {name.split('/')[0]} | verdict: pass {yes(v.get('pass'))}; {r['applied']} of {r['attempted']} "
                    f"updates applied, {v.get('applied_after_spikes')} after the spikes; weights finite "
                    f"{yes(r['weights_finite'])} | | | | | |"
                )
            for name, err in a.get("errors", {}).items():
                self.say("", f"- **{name} failed**: `{err.splitlines()[0]}`")
            self.say("", f"- verdict: every AMP check passes {yes(a.get('pass'))}")
        self.failed_tail("amp")
        self.say("")

    def syncs(self) -> None:
        self.say("## 4. Host synchronisation between logging steps", "", f"- {self.status('sync')}")
        s = self.json.get("sync")
        if not s:
            self.failed_tail("sync")
            self.say("")
            return
        ins = s.get("instrument", {})
        self.say(
            f"- counted: {s.get('counting')}; {s.get('gpu', s.get('device'))}, {s.get('updates')} updates a run, "
            f"log_every_n_steps {s.get('every')}",
            f"- instrument: a device op {ins.get('device_op_syncs')} syncs, one `.item()` {ins.get('item_syncs')}, a "
            f"probe's `.item()` inside `Trainer.fit` {ins.get('probe_syncs_in_fit')} (expected 0, 1, 1): "
            f"{yes(ins.get('pass'))}; Lightning alone (a plain module, automatic optimization, no seqstab): "
            f"{num(ins.get('lightning_loop_syncs_per_update'), '.2f')} syncs per update in its loop "
            f"{ins.get('lightning_loop_sites') or ''}",
            "- policies on an LSTM's gradients, 8 updates each (norms 1e-2…1e5, then inf, then nan), syncs: "
            + ", ".join(
                f"{n} {r.get('syncs')}" + ("" if r.get("pass") else f" **{r.get('error') or r.get('sites')}**")
                for n, r in s.get("policies", {}).items()
            ),
            "",
            "| run | updates applied | flushes (at most) | syncs in each flush | events settled "
            "| syncs outside a flush (per update) | start-up / teardown syncs | s | pass |",
            "|---|---|---:|---|---:|---:|---|---:|---|",
        )
        loop_sites: dict[str, list[int]] = {}
        exempt_sites: dict[str, list[int]] = {}  # runs whose reads outside a flush are no goal (plain Adam, CPU)
        flush_sites: dict[str, list[int]] = {}
        edge_sites: dict[str, list[int]] = {}
        for name, r in s.get("runs", {}).items():
            if "error" in r:
                self.say(f"| {name} | **failed**: {r['error'].splitlines()[0]} | | | | | | | **NO** |")
                continue
            per_flush = {}
            for n in r["syncs_per_flush"]:
                per_flush[n] = per_flush.get(n, 0) + 1
            each = ", ".join(f"{k}×{v}" for k, v in sorted(per_flush.items(), key=lambda kv: kv[0]))
            self.say(
                f"| {name} | {r['summary']} | {r['flushes']} ({r['flushes_expected_at_most']}) | {each} "
                f"| {sum(r['events_per_flush'])} | {r['loop_syncs']} ({r['loop_syncs_per_update']:.3f}) "
                f"| {r['startup_syncs']} / {r['teardown_syncs']} | {r['seconds']:.1f} | {yes(r.get('pass'))} |"
            )
            loops = loop_sites if r.get("loop_goal", True) else exempt_sites
            for phase, table in (("loop", loops), ("flush", flush_sites)):
                for site, n in r["sites"].get(phase, {}).items():
                    table.setdefault(site, [0, 0])
                    table[site][0] += n
                    table[site][1] += 1
            for phase in ("startup", "teardown"):
                for site, n in r["sites"].get(phase, {}).items():
                    edge_sites.setdefault(f"{phase}: {site}", [0, 0])
                    edge_sites[f"{phase}: {site}"][0] += n
                    edge_sites[f"{phase}: {site}"][1] += 1
        notes = {r["note"] for r in s.get("runs", {}).values() if r.get("note")}
        for note in sorted(notes):
            self.say("", f"- note: {note}")
        missed = {n: [k for k, v in r.get("goals", {}).items() if not v] for n, r in s.get("runs", {}).items()}
        missed = {n: m for n, m in missed.items() if m}
        self.say(
            "",
            "Goals: no sync outside a flush; one sync in each flush that settles no event; at most "
            "updates ÷ every + 2 flushes (a flush per update for plain Adam on CUDA, expected: its step count is a CPU "
            "tensor, so the host decides each update there; `fused=True` is the sync-free path). "
            + (f"**Missed**: {missed}" if missed else "Every goal met." if s.get("pass") else ""),
            "",
        )
        exempt = [("Call sites outside a flush in the runs where that is no goal (see the note)", exempt_sites)]
        for title, table in (
            ("Call sites outside a flush (summed over runs)", loop_sites),
            *(exempt if exempt_sites else []),
            ("Call sites inside a flush (summed over runs; an event's flush also writes its line, diagnosis and "
             "snapshot)", flush_sites),
            ("Start-up and teardown (once a fit: moving the module, Lightning's set-up; no goal)", edge_sites),
        ):  # fmt: skip
            self.say(f"{title}:", "")
            if not table:
                self.say("- none")
            for site, (n, runs) in sorted(table.items(), key=lambda kv: -kv[1][0]):
                self.say(f"- `{site}`: {n} in {runs} runs")
            self.say("")
        self.failed_tail("sync")
        self.say("")

    def peer(self) -> None:
        self.say(
            "## 5a. Throughput against pytorch/examples' word LM (`main.py --accel`, unmodified)",
            "",
            "`benchmarks/bench_peer.py --device cuda --settings wt2-33k --fused-loss true --unfused`: main.py and "
            "`python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml --trainer.accelerator gpu` as programs on "
            "the same cut of WikiText-2 (full vocabulary), interleaved rounds; seqstab's fused loss on (`seqstab`) and "
            "off (`seqstab unfused`). ms per update between two marks (main.py waits for the device at each update, "
            "seqstab's marks wait for it); tokens/s = 700 tokens per update ÷ that. Each setting's line below names "
            "the device and the setting the step ran (the CPU smoke test: the CPU, characters).",
            "",
        )
        for name in ("peer_2x200", "peer_2x1500"):
            self.say(f"- {self.status(name)}")
            p = self.json.get(name)
            if not p:
                self.failed_tail(name)
                continue
            for setting, f in p.get("settings", {}).items():
                v = f.get("vocab", {})
                self.say(
                    "",
                    f"{setting}, 2×{f.get('hidden')} LSTM, vocabulary {v.get('seqstab')}, {p.get('rounds')} rounds × "
                    f"{f.get('updates')} timed updates after {p.get('warmup')}; {p.get('device')}; "
                    f"{f.get('flops_per_update', 0) / 1e9:.1f} GFLOP an update",
                    "",
                    "| program | ms/update (median) | tokens/s | speed: main.py ms ÷ this (per round) | effective "
                    "TFLOP/s | each round's ms |",
                    "|---|---:|---:|---|---:|---|",
                )
                for prog, m in f.get("medians", {}).items():
                    ratios = (f.get("ratios") or {}).get(prog, {}).get("speed")
                    speed = ", ".join(f"{x:.3f}" for x in ratios) if ratios else "–"
                    rounds = ", ".join(f"{x['ms']:.2f}" for x in f.get("runs", {}).get(prog, []))
                    self.say(
                        f"| {prog} | {m['ms']:.2f} | {m['tokens_per_s']:,.0f} | {speed} "
                        f"| {m['effective_gflops'] / 1e3:.2f} | {rounds} |"
                    )
            self.say("")
        self.say("")

    def throughput(self) -> None:
        env = self.json.get("env") or {}
        measured = (env.get("measured_tflops") or {}).get("fp32_mm_tf32_off")
        self.say(
            "## 5b. Throughput: bench_throughput.py on the GPU (in-process, against a bare loop)",
            "",
            "Caveat: seqstab reads nothing back between flushes, and bench_throughput's stopwatch does not wait for "
            "the device, so a seqstab update's time is its host time until the queue fills or a flush waits (the "
            "bare loop waits at each `loss.item()`); the median update can flatter seqstab. The per-run rates "
            "(which hold the flushes' waits) and 5a (whose marks wait for the device) are the fairer figures.",
            "",
        )
        for name in ("throughput_2x200", "throughput_2x1500"):
            self.say(f"- {self.status(name)}")
            t = self.json.get(name)
            if not t:
                self.failed_tail(name)
                continue
            m = t["model"]
            flops_update = t["flops_per_token"] * t["tokens_per_update"]
            self.say(
                "",
                f"{m['layers']}×{m['size']} LSTM word LM, vocab {m['vocab']:,}, batch {m['batch']} × bptt {m['bptt']} "
                f"= {t['tokens_per_update']} tokens per update, {t['flops_per_token'] / 1e6:.1f} MFLOP per token "
                f"(3 × forward), {t['rounds']} interleaved rounds × {t['updates']} timed updates; "
                f"measured fp32 torch.mm peak {t['matmul_peak_gflops'] / 1e3:.1f} TFLOP/s (TF32 {t['tf32']}). "
                f"One update is {flops_update / 1e9:.1f} GFLOP: {1e3 * flops_update / (DATASHEET['fp32'] * 1e12):.2f} "
                f"ms at the FP32 datasheet peak, {1e3 * flops_update / (DATASHEET['tf32_dense'] * 1e12):.3f} ms at "
                "TF32 dense.",
                "",
                "| variant | tokens/s (median update) | ratio vs bare | per-round ratios | median update ms "
                "| effective TFLOP/s | % of FP32 67 | % of TF32 dense 494.5 | % of measured fp32 mm |",
                "|---|---:|---:|---|---:|---:|---:|---:|---:|",
            )
            for v, r in t["variants"].items():
                tf = r["effective_gflops"] / 1e3
                rounds = ", ".join(f"{x:.3f}" for x in r["round_ratios"]) if r.get("round_ratios") else "–"
                share = f"{100 * tf / (measured if measured else t['matmul_peak_gflops'] / 1e3):.1f}%"
                self.say(
                    f"| {v} | {r['tokens_per_s']:,.0f} | {r['ratio']:.3f} | {rounds} | {r['median_update_ms']:.2f} "
                    f"| {tf:.2f} | {100 * tf / DATASHEET['fp32']:.1f}% | {100 * tf / DATASHEET['tf32_dense']:.2f}% "
                    f"| {share} |"
                )
            self.say("")
        self.say(
            "(`seqstab`: GradMonitor defaults, gradient flow every 50th update; `seqstab+flow`: every update; "
            "`seqstab-flow`: never; `seqstab+spectra`: the recurrent spectra every 10 updates, on GradMonitor's "
            "worker thread (its default on a GPU), `seqstab+spectra-on-thread` on the training thread: they are "
            "computed at the flushes, so compare their per-round ratios, not the median update. A median update "
            "far above the time its FLOPs need at peak means the model is launch- and latency-bound, not "
            "compute-bound.)",
            "",
        )

    def write(self, outdir: Path) -> None:
        self.header()
        self.tests_and_fits()
        self.determinism()
        self.amp()
        self.syncs()
        self.peer()
        self.throughput()
        (outdir / "summary.md").write_text("\n".join(self.lines) + "\n")
        results = {"meta": self.meta, "steps": self.steps, **self.json}
        (outdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work")
    parser.add_argument("outdir")
    args = parser.parse_args()
    Summary(Path(args.work)).write(Path(args.outdir))


if __name__ == "__main__":
    main()
