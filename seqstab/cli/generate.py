"""``python -m seqstab.generate --ckpt_path X``: sample text from a trained language model.

    python -m seqstab.generate --ckpt_path runs/seqstab/version_0/checkpoints/last.ckpt --prompt "the" --tokens 200
    python -m seqstab.generate --ckpt_path last.ckpt --temperature 0        # greedy: the likeliest token each step
    python -m seqstab.generate --ckpt_path last.ckpt --temperature 0.8 --seed 3

The tokenizer (word, char or BPE) is the one the checkpoint carries (:mod:`seqstab.vocab`). The model reads
``<eos>`` (the start of a line, as in training, where every line follows one) then the prompt, encoded as the
training text was (a word or character it never saw is ``<unk>``, said once on stderr), and continues it: each next
token is drawn from ``softmax(logits / temperature)`` with a ``torch.Generator`` seeded by ``--seed`` (same seed,
same text), or is the argmax at ``--temperature 0``. The prompt and its continuation are printed as text: words
joined by spaces, characters by nothing, BPE pieces by the tokenizer's decoder; ``<eos>`` is a line end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm

from seqstab.cli.console import ToolParser, error_line, tool_main
from seqstab.core.errors import ConfigError, SeqstabError, check_non_negative, check_positive
from seqstab.data.vocab import EOS_ID

__all__ = ["generate", "main"]

PROGRESS_FROM = 1000  # a progress bar for generations longer than this many tokens (on a terminal)


def generate(model, prompt_ids: list[int], tokens: int, temperature: float = 1.0, seed: int = 0) -> list[int]:
    """``tokens`` ids continuing ``<eos>`` + ``prompt_ids`` (the prompt's own ids are not returned)."""
    check_positive(tokens=tokens)
    check_non_negative(temperature=temperature)
    generator = torch.Generator().manual_seed(seed)
    context = torch.tensor([[EOS_ID, *prompt_ids]])  # (1, T)
    out: list[int] = []
    bar = tqdm(total=tokens, unit="tok", desc="generating", file=sys.stderr, leave=False, disable=_no_bar(tokens))
    with torch.inference_mode(), bar:
        logits, hidden = model(context)  # (1, T, V)
        for _ in range(tokens):
            last = logits[0, -1].float()  # (V,)
            if temperature == 0:
                token = int(last.argmax())
            else:
                token = int(torch.multinomial(torch.softmax(last / temperature, dim=-1), 1, generator=generator))
            out.append(token)
            logits, hidden = model(torch.tensor([[token]]), hidden)  # (1, 1, V)
            bar.update()
    return out


def _no_bar(tokens: int) -> bool | None:
    return None if tokens > PROGRESS_FROM else True  # None: tqdm shows it on a terminal only


@tool_main("generate")
def main(argv: list[str] | None = None) -> int:
    parser = ToolParser("generate", description="Sample text from a trained language model's checkpoint.")
    parser.add_argument("--ckpt_path", type=Path, required=True, help="a LanguageModel checkpoint written by fit")
    parser.add_argument("--prompt", default="", help="text to continue (default: none, start a line)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens to generate (default: 200)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default: 0)")
    parser.add_argument("--trust", action="append", default=[], metavar="MODULE", help="as for seqstab.replay")
    args = parser.parse(argv)
    if isinstance(args, int):  # a mistake (one line said it) or --help
        return args
    try:
        from seqstab.cli.lm import load_lm

        check_positive(tokens=args.tokens)
        check_non_negative(temperature=args.temperature)
        if args.temperature != args.temperature:  # nan
            raise ConfigError("temperature=nan: must be >= 0")
        lm = load_lm(args.ckpt_path, args.trust)
        prompt_ids, unknown = lm.codec.encode_prompt(args.prompt)
        if unknown:
            shown = ", ".join(repr(piece) for piece in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            print(f"seqstab.generate: not in the vocabulary, read as <unk>: {shown}", file=sys.stderr)
        ids = generate(lm.model, prompt_ids, args.tokens, args.temperature, args.seed)
    except SeqstabError as err:
        return error_line("generate", err)
    print(lm.codec.decode([*prompt_ids, *ids]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
