"""Language-model corpora: tokenization, a vocabulary, and stream batching (what torchtext used to give).

A corpus is three texts (train, valid, test). Each is tokenized; every line ends with ``<eos>``; the vocabulary
is built on the train split only and maps anything else to ``<unk>``. A split's token ids form one stream, cut
into ``B`` parallel rows and read in contiguous windows of ``seq_len`` tokens (the classic word-level LM
``batchify``/``get_batch``), so batch ``i + 1`` continues batch ``i`` and the hidden state carries over::

    stream  t0 t1 t2 ... t(N-1)              batchify(B=2)      row 0: t0 ... t(n-1)
                                                                row 1: t(n) ... t(2n-1)
    window i of row b:  x = row[b, iL : iL+L]     y = row[b, iL+1 : iL+L+1]   (y is the next token)

One job per file::

    datamodules/files.py        reading the files (shared with the CSV series): one-line errors, UTF-8, line ends
    text/tokens.py              tokenize (word, char, bpe) and the token cache under ``<cache>/tokens/``
    text/stream.py              the stream datamodule (batching, the tokenizer in the checkpoint); TextFiles
    text/corpora.py             the published corpora: WikiText2, PennTreebank, TinyShakespeare

The tokenizer rules and the vocabulary live in :mod:`seqstab.data.vocab`; a checkpoint carries the tokenizer (the
datamodule's ``state_dict()``), so a trained model can generate and score text without its corpus.
"""

from datamodules.files import decode_text, read_text
from datamodules.text.corpora import SPLIT_FILES, PennTreebank, TinyShakespeare, WikiText2, find_split_files
from datamodules.text.stream import TextFiles
from datamodules.text.tokens import Corpus, tokenize
from seqstab.data.vocab import TextCodec, Vocab, word_tokens

__all__ = [
    "SPLIT_FILES",
    "Corpus",
    "PennTreebank",
    "TextCodec",
    "TextFiles",
    "TinyShakespeare",
    "Vocab",
    "WikiText2",
    "decode_text",
    "find_split_files",
    "read_text",
    "tokenize",
    "word_tokens",
]
