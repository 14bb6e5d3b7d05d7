"""Screenshot of TensorBoard with an exploding and a clipped run side by side (README, docs/guides/explosions.md).

    python tools/tensorboard_screenshot.py                          # train both runs, capture docs/img/explosion.png
    python tools/tensorboard_screenshot.py --logdir runs/explode    # keep the runs there; reuse them next time

The two runs are the default experiment's sizes with a vanilla tanh RNN (W_hh at spectral radius 1.5, adding
problem, T = 100) trained by plain SGD (lr 0.1) for 80 updates, gradient flow and spectra measured every 5 updates:
one without clipping (``--model.clipping null``), which explodes within a few updates, and one with the default
``NormClip(max_norm=1)``, which does not. The script starts ``tensorboard --logdir`` on 127.0.0.1, opens its scalars
page in headless Chromium (Debian's ``chromium`` package: ``apt-get install -y chromium``) driven over the DevTools
pipe, switches the loss and norm charts to a log y axis, and captures it; the PNG is palette-compressed to stay
under ``--max-bytes``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {  # run name -> arguments on top of the default experiment
    "exploding_sgd_no_clipping": ["--model.clipping", "null"],
    "clipped_sgd_normclip_1": [],
}
COMMON = [
    *("--model.net.nonlinearity", "tanh", "--model.net.init", "default", "--model.net.spectral_radius", "1.5"),
    *("--data.seq_len", "100", "--optimizer", "SGD", "--optimizer.lr", "0.1"),
    *("--data.num_train", "2000", "--trainer.max_epochs", "2"),  # 80 updates of 50 sequences
    *("--model.monitor", "seqstab.monitor.GradMonitor"),  # gradient flow and spectra every 5 updates, not 50/100
    *("--model.monitor.grad_flow_every_n_steps", "5", "--model.monitor.spectrum_every_n_steps", "5"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"),
]
TAGS = r"^(train/loss|grad/norm_total|grad/norm_total_clipped|grad_flow/growth|rnn/sigma_max/layer_0|explosion/events)$"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def train(logdir: Path) -> None:
    """Train both runs with ``python -m seqstab.train`` into ``logdir/<run name>``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    for name, extra in RUNS.items():
        args = [*COMMON, *extra, "--trainer.logger.init_args.save_dir", str(logdir)]
        args += ["--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", ""]
        print(f"training {name} ...", flush=True)
        with tempfile.TemporaryDirectory() as cwd:
            result = subprocess.run(
                [sys.executable, "-m", "seqstab.train", "fit", *args], cwd=cwd, env=env, capture_output=True, text=True
            )
        if result.returncode != 0:
            sys.exit(f"training {name} failed:\n{result.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tensorboard(logdir: Path, port: int, runs: int, timeout: float = 120) -> subprocess.Popen:
    """``tensorboard --logdir`` on 127.0.0.1, returned once it serves the scalars of ``runs`` runs."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--reload_interval", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as response:
                if len(json.load(response)) >= runs:
                    return server
        except OSError:
            pass
        if server.poll() is not None:
            sys.exit(f"tensorboard exited with code {server.returncode}")
        time.sleep(1)
    server.terminate()
    sys.exit(f"tensorboard did not serve {runs} runs within {timeout:.0f} s")


LOG_SCALE = ("train/loss", "grad/norm_total", "grad/norm_total_clipped", "rnn/sigma_max/layer_0")  # log y axis
FIND_CARDS = """(() => {
  const cards = [];
  const walk = (root) => root.querySelectorAll('*').forEach((el) => {
    if (el.tagName === 'TF-SCALAR-CARD') cards.push(el);
    if (el.shadowRoot) walk(el.shadowRoot);
  });
  walk(document);
  return cards;
})()"""


class DevTools:
    """Chromium driven over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-separated JSON): stdlib only."""

    def __init__(self, chromium: str, profile: str, width: int, height: int):
        to_browser, self._commands = os.pipe()
        self._events, from_browser = os.pipe()
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        command += ["--remote-debugging-pipe", "about:blank"]

        def fds() -> None:  # in the child: the pipe ends chromium expects
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            command, preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._id, self.session = b"", 0, None
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._events, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        os.close(self._commands)
        os.close(self._events)


def capture(url: str, out: Path, width: int, height: int, runs: int, timeout: float = 120) -> None:
    """Load the scalars page, wait until every card has drawn every run, switch norm/loss cards to log scale, shoot."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(chromium, profile, width, height)
        try:
            browser.call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            shown = f"{FIND_CARDS}.filter((c) => new RegExp({json.dumps(TAGS)}).test(c.tag))"  # the filtered cards
            loaded = f"s.every((c) => c.dataToLoad.length >= {runs})"
            ready = f"(() => {{ const s = {shown}; return s.length > 0 && {loaded}; }})()"
            while not browser.evaluate(ready):
                if time.monotonic() > deadline:
                    sys.exit(f"TensorBoard's scalar cards did not load within {timeout:.0f} s")
                time.sleep(1)
            time.sleep(3)  # the charts fetch their series after the cards appear
            log_tags = json.dumps(list(LOG_SCALE))
            browser.evaluate(
                f"{FIND_CARDS}.forEach((c) => {{ if ({log_tags}.includes(c.tag)) c.set('_logScaleActive', true); }})"
            )
            time.sleep(3)
            shot = browser.call("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.close()


def shrink(png: Path, max_bytes: int) -> None:
    """Palette-quantise the PNG (a UI screenshot has few colours) when it is larger than ``max_bytes``."""
    from PIL import Image

    if png.stat().st_size <= max_bytes:
        return
    for colors in (256, 128, 64):
        Image.open(png).convert("RGB").quantize(colors=colors).save(png, optimize=True)
        if png.stat().st_size <= max_bytes:
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", type=Path, help="train the runs there, or capture the runs it already holds")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "explosion.png")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=780)
    parser.add_argument("--max-bytes", type=int, default=300_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        logdir = args.logdir or Path(scratch) / "runs"
        if not any(logdir.rglob("events.out.tfevents.*")):
            train(logdir)
        runs = sum(1 for _ in logdir.rglob("events.out.tfevents.*"))
        port = free_port()
        server = start_tensorboard(logdir, port, runs)
        try:
            query = urllib.parse.urlencode({"tagFilter": TAGS, "_smoothingWeight": "0"}, quote_via=urllib.parse.quote)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            capture(f"http://127.0.0.1:{port}/#scalars&{query}", args.out, args.width, args.height, runs)
        finally:
            server.terminate()
            server.wait(timeout=30)
    shrink(args.out, args.max_bytes)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
