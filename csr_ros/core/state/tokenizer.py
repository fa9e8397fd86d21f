"""A byte-level tokenizer for randomly initialised models (no files, deterministic)."""

from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes as token ids 3..258; 0 = pad, 1 = BOS, 2 = EOS.

    Implements the small subset of the Hugging Face tokenizer API that csr_ros uses.
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    chat_template = None
    bos_token = None

    def __init__(self, vocab_size: int = 512):
        if vocab_size < 259:
            raise ValueError("ByteTokenizer needs a vocabulary of at least 259 ids")
        self.vocab_size = vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        data = bytes(int(i) - 3 for i in ids if 3 <= int(i) < 259)
        return data.decode("utf-8", errors="replace")
