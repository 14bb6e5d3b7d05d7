"""``seqstab``: one console command for everything (``pip install`` puts it on the PATH).

    seqstab fit -c configs/lm/wikitext2_lstm.yaml       # = python -m seqstab.train fit ...
    seqstab validate|test|predict -c ... --ckpt_path last
    seqstab sweep --config configs/sweeps/explode.yaml   # = python -m seqstab.sweep ...
    seqstab replay RUN_DIR/snapshot_update_5.pt          # = python -m seqstab.replay ...
    seqstab generate --ckpt_path X --prompt "the"        # = python -m seqstab.generate ...
    seqstab score --ckpt_path X FILE                     # = python -m seqstab.score ...
    seqstab --version

Each command is its module's ``main``: the same options, messages and exit codes as ``python -m seqstab.<module>``.
"""

from __future__ import annotations

import importlib
import sys

from seqstab import __version__

TRAIN = ("fit", "validate", "test", "predict")  # seqstab.train's subcommands
TOOLS = {
    "sweep": "a grid of runs, resumable, with a report",
    "replay": "recompute the update an explosion snapshot holds",
    "generate": "sample text from a language-model checkpoint",
    "score": "perplexity of a text file under a language-model checkpoint",
}
EXIT_USAGE = 2


def usage() -> str:
    lines = ["usage: seqstab COMMAND [ARGS...]   (seqstab COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} train, or evaluate a checkpoint (python -m seqstab.train {name})" for name in TRAIN]
    lines += [f"  {name:<9} {what}" for name, what in TOOLS.items()]
    lines += ["", "  --version  print seqstab's version"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command = args[0]
    if command == "--version":
        print(f"seqstab {__version__}")
        return 0
    if command in TRAIN:
        from seqstab.cli.train import main as train

        return train(args)
    if command in TOOLS:
        module = importlib.import_module(f"seqstab.cli.{command}")
        return module.main(args[1:])
    known = ", ".join([*TRAIN, *TOOLS])
    print(f"seqstab: error: unknown command {command!r} (one of: {known}; seqstab --help)", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
