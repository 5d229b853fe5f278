#!/usr/bin/env python3
"""llama.cpp at the decoder shapes `cogvlm bench --text-only` runs: prefill, decode and peak RSS.

Builds a random-weight Llama GGUF of CogVLM's decoder shapes (hidden 4096, MLP 11008, 32 heads, vocab 32000,
2 layers by default), quantizes it to Q4_K_M with llama.cpp's own quantizer, then times one prefill of
--prompt-tokens tokens and --new-tokens single-token decode steps on --threads threads, and prints one JSON line.
Run it back to back with `cogvlm bench --model M --quant 4 --text-only 1250` (M from
`cogvlm make-checkpoint --config cogvlm-17b --layers 2 --vision-layers 4`); BENCHMARKS.md has both.

Needs `gguf`, `numpy` and `llama-cpp-python` (PyPI). The tokenizer's vocabulary comes from the bundled
Llama-2 `tokenizer.json`; the timings feed token ids, so the vocabulary only has to load.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def vocab(tokenizer_json):
    with open(tokenizer_json, encoding="utf-8") as f:
        model = json.load(f)["model"]
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id]
    # llama.cpp's SPM tokenizer merges by score: earlier ids first, as in the original model.
    scores = [-float(i) for i in range(len(tokens))]
    types = []
    for i, t in enumerate(tokens):
        if i == 0:
            types.append(2)  # unknown
        elif i in (1, 2):
            types.append(3)  # control
        elif t.startswith("<0x") and t.endswith(">"):
            types.append(6)  # byte
        else:
            types.append(1)  # normal
    return tokens, scores, types


def write_f16(path, layers, hidden, mlp, heads, tokens, scores, types, seed):
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("cogvlm-decoder-shapes")
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(mlp)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float16)

    vocab_n = len(tokens)
    w.add_tensor("token_embd.weight", mat(vocab_n, hidden))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", mat(hidden, hidden))
        w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(mlp, hidden))
        w.add_tensor(p + "ffn_up.weight", mat(mlp, hidden))
        w.add_tensor(p + "ffn_down.weight", mat(hidden, mlp))
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    w.add_tensor("output.weight", mat(vocab_n, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst, threads):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")


def peak_rss_gib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / (1 << 20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def time_llama(path, prompt_tokens, new_tokens, threads, n_vocab):
    import llama_cpp

    # Extra buffer types (llama.cpp's CPU repacking, AMX among them) off: they crash on this machine.
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        use_mmap=False,
        verbose=False,
        **extra_bufts_off(),
    )
    rng = np.random.default_rng(1)
    prompt = [1] + [int(t) for t in rng.integers(3, n_vocab, prompt_tokens - 1)]
    t = time.perf_counter()
    llm.eval(prompt)
    prefill_s = time.perf_counter() - t
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode_s = time.perf_counter() - t
    return prefill_s, new_tokens / decode_s


def extra_bufts_off():
    """The constructor keyword for llama.cpp's `use_extra_bufts`, where this llama-cpp-python has one."""
    import inspect

    import llama_cpp

    for name in ("use_extra_bufts", "extra_bufts"):
        if name in inspect.signature(llama_cpp.Llama.__init__).parameters:
            return {name: False}
    return {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--tokenizer", default=os.path.join(here, "..", "server", "fixtures", "tokenizer", "tokenizer.json"))
    ap.add_argument("--dir", default=os.path.expanduser("~/.cache/llama-compare"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=1250)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    f16 = os.path.join(a.dir, f"decoder-{a.layers}l-f16.gguf")
    q4 = os.path.join(a.dir, f"decoder-{a.layers}l-q4_k_m.gguf")
    tokens, scores, types = vocab(a.tokenizer)
    if not os.path.exists(q4):
        if not os.path.exists(f16):
            write_f16(f16, a.layers, 4096, 11008, 32, tokens, scores, types, a.seed)
        quantize(f16, q4, a.threads)
        os.remove(f16)
    prefill_s, decode = time_llama(q4, a.prompt_tokens, a.new_tokens, a.threads, len(tokens))
    print(json.dumps({
        "engine": "llama.cpp (llama-cpp-python)",
        "gguf": q4,
        "file_gib": os.path.getsize(q4) / (1 << 30),
        "threads": a.threads,
        "prompt_tokens": a.prompt_tokens,
        "prefill_s": prefill_s,
        "decode_tok_s": decode,
        "peak_rss_gib": peak_rss_gib(),
    }))


if __name__ == "__main__":
    main()
