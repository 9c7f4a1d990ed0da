"""Instruction embeddings with a T5 encoder loaded from a local folder (T5-v1.1-XXL in production; a tiny random
T5 in tests). Each instruction becomes a 2-D (L, d_model) tensor of its non-padding tokens, as RoboTwin's
encode_lang_batch_once.py saves them for fine-tuning (no batch dimension, bf16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_LENGTH = 1024  # RDT's tokenizer_max_length


def encode_instructions(texts: list[str], t5_path: Path, device: str | None = None) -> list[Any]:
    """One (L_i, d_model) bf16 tensor per text. bf16 weights on a GPU, fp32 on a CPU."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    if not (t5_path / "config.json").is_file():
        msg = f"{t5_path}: no T5 encoder here (config.json missing); set weights.t5 to a local t5-v1_1-xxl folder"
        raise FileNotFoundError(msg)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar a step would only clutter the step's log
    tokenizer = AutoTokenizer.from_pretrained(str(t5_path))
    model = T5EncoderModel.from_pretrained(str(t5_path), torch_dtype=dtype).to(dev).eval()
    batch = tokenizer(texts, return_tensors="pt", padding="longest", truncation=True, max_length=MAX_LENGTH)
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)).last_hidden_state
    mask = batch["attention_mask"].bool()
    return [hidden[i][mask[i].to(dev)].to(torch.bfloat16).cpu().contiguous() for i in range(len(texts))]


def save_tiny_t5(path: Path, words: list[str], d_model: int = 32, seed: int = 0) -> Path:
    """A tiny randomly initialised T5 encoder and a word-level tokenizer, saved like a real checkpoint folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted({w.lower().strip(".,") for w in words}))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    path.mkdir(parents=True, exist_ok=True)
    T5EncoderModel(config).save_pretrained(str(path))
    fast.save_pretrained(str(path))
    return path
