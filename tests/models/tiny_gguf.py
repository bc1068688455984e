#!/usr/bin/env python3
"""Writes a tiny Llama-architecture GGUF model with random weights, for tests of the llm service.

llama.cpp loads it with its real code and serves it; what it generates is nonsense, but every answer is well formed.
The weights come from a fixed seed, so the same script writes the same file (the tests pin its SHA-256 at run time).

usage: tiny_gguf.py OUT.gguf [--embd N --heads N --layers N --ff N --f16]

The defaults make the tests' model (about 4 MB); larger shapes make a model whose speed means something, for the GPU
benchmark (bench/gpu/): `--embd 2048 --heads 16 --layers 16 --ff 5632 --f16` is a 0.8-billion-parameter body.
"""

import argparse

import gguf
import numpy as np

N_CTX = 4096

# SentencePiece ("llama") vocabulary: unknown, begin, end, 256 byte fallbacks, then words and letters.
WORDS = (
    "the of and to in is that it for on with as was be by this are or from at an not but have you they we "
    "pool volunteer donate compute model token stream answer hello world commons"
).split()


def vocab():
    tokens, scores, types = [], [], []

    def add(text, score, kind):
        tokens.append(text.encode())
        scores.append(score)
        types.append(kind)

    add("<unk>", 0.0, gguf.TokenType.UNKNOWN)
    add("<s>", 0.0, gguf.TokenType.CONTROL)
    add("</s>", 0.0, gguf.TokenType.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, gguf.TokenType.BYTE)
    seen = set()
    for i, w in enumerate(WORDS):
        for piece in ("\u2581" + w, w):
            if piece not in seen:
                seen.add(piece)
                add(piece, -1.0 - i * 0.01, gguf.TokenType.NORMAL)
    for c in "abcdefghijklmnopqrstuvwxyz\u2581":
        if c not in seen:
            seen.add(c)
            add(c, -5.0, gguf.TokenType.NORMAL)
    return tokens, scores, types


def main():
    cli = argparse.ArgumentParser(description="Writes a Llama-architecture GGUF model with random weights.")
    cli.add_argument("out")
    cli.add_argument("--embd", type=int, default=256, help="embedding length")
    cli.add_argument("--heads", type=int, default=4, help="attention heads")
    cli.add_argument("--layers", type=int, default=4, help="blocks")
    cli.add_argument("--ff", type=int, default=512, help="feed-forward length")
    cli.add_argument("--f16", action="store_true", help="matrices in f16 (default f32)")
    args = cli.parse_args()
    N_EMBD, N_HEAD, N_LAYER, N_FF = args.embd, args.heads, args.layers, args.ff
    matrix_type = np.float16 if args.f16 else np.float32
    rng = np.random.default_rng(17)
    tokens, scores, types = vocab()
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name("commons-tiny")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if args.f16 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )

    def t(name, *shape):
        # numpy's shape is GGML's dimensions reversed: (rows, columns) = (ne[1], ne[0]).
        # float64 draws for the tests' f32 model (its bytes stay as they were); float32 draws for a large one.
        draw = rng.standard_normal(shape, dtype=np.float32 if args.f16 else np.float64)
        w.add_tensor(name, (draw * 0.05).astype(matrix_type))

    def ones(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    t("token_embd.weight", n_vocab, N_EMBD)
    for i in range(N_LAYER):
        ones(f"blk.{i}.attn_norm.weight", N_EMBD)
        t(f"blk.{i}.attn_q.weight", N_EMBD, N_EMBD)
        t(f"blk.{i}.attn_k.weight", N_EMBD, N_EMBD)
        t(f"blk.{i}.attn_v.weight", N_EMBD, N_EMBD)
        t(f"blk.{i}.attn_output.weight", N_EMBD, N_EMBD)
        ones(f"blk.{i}.ffn_norm.weight", N_EMBD)
        t(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        t(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        t(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    ones("output_norm.weight", N_EMBD)
    t("output.weight", n_vocab, N_EMBD)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
