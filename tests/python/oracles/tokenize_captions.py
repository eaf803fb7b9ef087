"""Token ids of captions from the `tokenizers` package, set up as the text encoders' callers do.

usage: tokenize_captions.py t5|clip TOKENIZER_JSON CAPTIONS_JSON LENGTH
  CAPTIONS_JSON holds a list of strings. Prints {"ids": [[...]], "mask": [[...]]} as JSON.
  t5: LlamaGen's T5Embedder call, `tokenizer(captions, max_length=LENGTH, padding="max_length",
    truncation=True, add_special_tokens=True)`, which transformers' fast tokenizer runs as
    `enable_truncation(LENGTH)` (longest first, from the right), `enable_padding(length=LENGTH,
    pad_id=<pad>, pad_token="<pad>")` (on the right), `encode_batch(captions, True)`.
  clip: torchmetrics' CLIPScore, `processor(text=captions, padding=True)` (no truncation, padded to
    the longest with the pad token, `<|endoftext|>` for OpenAI's CLIP) then `[..., :LENGTH]`; the
    rows are padded on to LENGTH with `<|endoftext|>`, which the causal text tower never attends to.
"""
import json
import sys

from tokenizers import Tokenizer


def main():
    mode, path, captions_path, length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with open(captions_path, encoding="utf-8") as f:
        captions = json.load(f)
    tok = Tokenizer.from_file(path)
    if mode == "t5":
        pad = tok.token_to_id("<pad>")
        tok.enable_truncation(length)
        tok.enable_padding(length=length, pad_id=pad, pad_token="<pad>")
        encodings = tok.encode_batch(captions, add_special_tokens=True)
        ids = [e.ids for e in encodings]
        mask = [e.attention_mask for e in encodings]
    elif mode == "clip":
        end = tok.token_to_id("<|endoftext|>")
        tok.no_truncation()
        tok.enable_padding(pad_id=end, pad_token="<|endoftext|>")
        encodings = tok.encode_batch(captions, add_special_tokens=True)
        ids = [(e.ids[:length] + [end] * length)[:length] for e in encodings]
        mask = [(e.attention_mask[:length] + [0] * length)[:length] for e in encodings]
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({"ids": ids, "mask": mask}))


if __name__ == "__main__":
    main()
