"""Generate the tokenizer reference data used by Tests/QLoRATokenizerTests.

Documentation only: the Swift tests never run Python. This was run once with
tokenizers 0.23.3 (pip install tokenizers==0.23.3) from the repository root:

    python Tests/Fixtures/tokenizers/make_reference.py \
        --shared /work/shared --out Tests/Fixtures/tokenizers

Inputs:
  * <shared>/fixtures/tiny-llama/{tokenizer.json,tokenizer_config.json,tokenizer_corpus.txt}
    (byte-level BPE with GPT-2's regex), copied unchanged to tiny-llama/.
  * Sources/QLoRAKit/Resources/stories260K/{tokenizer.json,train.jsonl,valid.jsonl}
    (SentencePiece-style BPE); the tests read them from the embedded model.
Trained here (deterministic: the BPE trainer is deterministic for a fixed corpus):
  * llama3-style/: NFC normalizer, Sequence[Split(Llama-3 regex), ByteLevel(use_regex=false)],
    ignore_merges, two vocab entries that no merge can reach, added tokens with
    lstrip/rstrip/single_word/normalized flags, Sequence[ByteLevel, TemplateProcessing].
  * metaspace-first/: Metaspace(prepend_scheme=first, split=false), byte_fallback, fuse_unk,
    decoder Sequence[Replace, ByteFallback, Fuse, Strip] (Llama-2 / Mistral shape).
  * metaspace-always/: Metaspace(always, split=true), unk with fuse_unk, no byte fallback,
    Metaspace decoder, merges written in the legacy "a b" string form.
  * metaspace-never/: Metaspace(never, split=false), unk without fuse_unk, Metaspace decoder.

Also copied: tiny-llama/reference_cases.json and stories260K/reference_sequences.json, the
tokenizer parts of the two shared reference.json files.

Output: reference.json with, per tokenizer, encode cases (ids with and without special
tokens, tokens, both decodes; named as in tiny-llama's reference.json although "with_bos" means
"with the post-processor's special tokens"), decode cases on random id sequences, and DecodeStream
steps; Split regex cases; and, for stories260K's train/valid lines, token counts plus an
FNV-1a 64 digest of the ids (4 little-endian bytes per id).
"""

import argparse
import json
import os
import random
import shutil

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers
from tokenizers.decoders import DecodeStream

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TEXTS = [
    "", " ", "  ", "\t", "\n", "\n\n", " \n ", "\r\n", "a\r\nb", "x\n\n\ny",
    "Hello world", " Hello", "Hello ", "  leading", "trailing  ", "a  b   c    d",
    "tab\tseparated\tvalues", "mixed \t\n whitespace \n\t end",
    "0123456789", "12345678901234567890", "3.14159", "1,000,000 and 42nd", "x2 y33 z444",
    "I'm sure we'll see they've gone, she'd say it's yours, don't you're",
    "DON'T I'LL WE'VE", "'s's 'S 'T", "'ſ 'K \u017ftar", "O'Neil's rock'n'roll",
    "naïve café résumé", "e\u0301 vs \u00e9 and A\u030a", "Ελληνικά λέξεις σς", "Привет, мир!",
    "日本語のテキストです。", "中文测试，标点！", "한국어 문장", "مرحبا بالعالم", "שלום עולם",
    "ภาษาไทย", "नमस्ते दुनिया", "😀👍🏽 👨‍👩‍👧‍👦 🇺🇸🇫🇷", "emoji😀in😀words",
    "!!!???...", "—–- «quotes» “curly” ‘single’", "def f(x):\n    return x**2  # comment\n",
    "https://example.com/path?q=1&r=2#frag", "user@example.org", "C++ and C# and F#",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3, "a" * 300, "ab" * 150,
    "zero\u200bwidth", "no\u00a0break", "ideographic\u3000space", "line\u2028separator",
    "next\u0085line", "vt\u000bff\u000cend", "ctrl\u0000\u0001\u001f", "\ufeffbom", "\ue000private",
    "Ⅻ x²³ ½ ١٢٣ １２３", "a▁b ▁▁ ▁", "\ufffd replacement", "\U0010ffff\U0001f600",
    "<s>Hello</s>", " <s> x </s> ", "<s><s>", "</s>", "<unk>", "<pad>", "a<s>b", "<s", "<<s>>",
    "<|begin_of_text|>Hi<|eot_id|>", "foo [MASK] bar", "foo   [MASK]   bar", "[MASK][MASK]",
    "x<tool>   y", "x <tool>\n\ny", "say hello world", "sayhello world", "hello",
    "ABCabc ABC", "the xylophone played qwerty", "xylophone", " qwerty", "qwerty", "qwerty, xylophone",
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "The quick brown fox jumps over the lazy dog.",
    "Python is licensed under the PSF License Agreement.",
    "  Release         Derived     Year        Owner       GPL-\n    0.9.0 thru 1.2",
]

REGEX_PATTERNS = [
    (GPT2, "isolated", False), (LLAMA3, "isolated", False), (QWEN2, "isolated", False),
    (r"\d+|\w+|[^\w\s]+", "isolated", False), (r"\s+", "removed", False),
    (r"\s", "merged_with_previous", False), (r"\s", "merged_with_next", False),
    (r"\p{L}+", "contiguous", False), (r"\p{N}", "isolated", True), (r"\p{L}", "contiguous", False),
    (r"\s", "removed", True), (r"\p{N}", "merged_with_previous", True), (r"[aeiou]", "merged_with_next", True),
    (r"(?i:[a-c]+|hello)|\P{L}{2,3}?x|[^\p{Lu}\p{Ll}\s]", "isolated", False),
    (r"(?:ab|a)(?=c)|.", "isolated", False), (r"\D\S\W", "isolated", False),
]

REGEX_TEXTS = TEXTS[:60] + ["abcABCHeLLo hello xx1x 12x", "abac ac aab"]


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def dump(obj, path, compact=False):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def training_corpus(shared):
    with open(os.path.join(shared, "fixtures/tiny-llama/tokenizer_corpus.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    return lines + TEXTS[20:45] * 3


def write_dir(out, name, tok_json, config):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    dump(tok_json, os.path.join(d, "tokenizer.json"))
    dump(config, os.path.join(d, "tokenizer_config.json"))
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))


def added(id_, content, special, lstrip=False, rstrip=False, single_word=False, normalized=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def make_llama3_style(shared, out):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus(shared), trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    n = len(vocab)
    # Whole-piece tokens no merge sequence reaches: only ignore_merges finds them.
    vocab["Ġxylophone"] = n
    vocab["qwerty"] = n + 1
    n += 2
    j["added_tokens"] = [
        added(n, "<|begin_of_text|>", True), added(n + 1, "<|end_of_text|>", True),
        added(n + 2, "<|eot_id|>", True), added(n + 3, "[MASK]", True, lstrip=True),
        added(n + 4, "<tool>", False, rstrip=True), added(n + 5, "hello", False, single_word=True, normalized=True),
        added(n + 6, "ABC", False)]
    j["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [n], "tokens": ["<|begin_of_text|>"]}}}]}
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "model_max_length": 1024,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return write_dir(out, "llama3-style", j, config)


def make_metaspace_base(shared):
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=520, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(training_corpus(shared), trainer)
    j = json.loads(tok.to_str())
    # Llama-2 layout: specials, then the 256 byte tokens, then the learned pieces.
    trained = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    order = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    order += [t for t, _ in trained if t not in order]
    j["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    j["added_tokens"] = [added(0, "<unk>", True), added(1, "<s>", True), added(2, "</s>", True)]
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return j


def make_metaspace_variants(shared, out):
    base = make_metaspace_base(shared)
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": None, "tokenizer_class": "PreTrainedTokenizerFast"}
    result = {}

    j = json.loads(json.dumps(base))
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    result["metaspace-first"] = write_dir(out, "metaspace-first", j, config)

    j = json.loads(json.dumps(base))
    j["model"]["byte_fallback"] = False
    j["model"]["merges"] = [f"{a} {b}" for a, b in j["model"]["merges"]]
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    result["metaspace-always"] = write_dir(out, "metaspace-always", j, config)

    j = json.loads(json.dumps(base))
    j["model"]["byte_fallback"] = False
    j["model"]["fuse_unk"] = False
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": False}
    j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": False}
    result["metaspace-never"] = write_dir(out, "metaspace-never", j, config)
    return result


def stream_steps(tok, ids, skip):
    ds = DecodeStream(skip_special_tokens=skip)
    steps = []
    for i in ids:
        try:
            steps.append(ds.step(tok, i))
        except Exception as e:  # recorded so the Swift side can expect the same failure
            steps.append({"error": str(e)})
            break
    return steps


def cases_for(tok, rng):
    size = tok.get_vocab_size(with_added_tokens=True)
    cases = []
    for text in TEXTS:
        with_special = tok.encode(text)
        plain = tok.encode(text, add_special_tokens=False)
        cases.append({"text": text, "ids_with_bos": with_special.ids, "ids_no_special": plain.ids,
                      "tokens_no_special": plain.tokens,
                      "decode_skip_special": tok.decode(with_special.ids, skip_special_tokens=True),
                      "decode_keep_special": tok.decode(with_special.ids, skip_special_tokens=False)})
    decode_cases = []
    for k in range(40):
        ids = [rng.randrange(size) for _ in range(rng.randrange(1, 14))]
        if k % 10 == 0:
            ids.insert(rng.randrange(len(ids) + 1), size + 7)  # unknown ids are dropped
        decode_cases.append({"ids": ids, "skip": tok.decode(ids, skip_special_tokens=True),
                             "keep": tok.decode(ids, skip_special_tokens=False)})
    stream_cases = []
    for text in ["naïve café — 日本語 😀 done", "<s>Hello</s> world", "emoji😀in😀words\n\nend",
                 "Once upon a time, there was a little girl named Lily."]:
        ids = tok.encode(text).ids
        for skip in (False, True):
            stream_cases.append({"ids": ids, "skip_special": skip, "steps": stream_steps(tok, ids, skip)})
    for _ in range(6):
        ids = [rng.randrange(size) for _ in range(rng.randrange(2, 16))]
        stream_cases.append({"ids": ids, "skip_special": False, "steps": stream_steps(tok, ids, False)})
    return {"vocab_size": size, "cases": cases, "decode_cases": decode_cases, "stream_cases": stream_cases}


def regex_cases():
    out = {"texts": REGEX_TEXTS, "patterns": []}
    for pattern, behavior, invert in REGEX_PATTERNS:
        pre = pre_tokenizers.Split(Regex(pattern), behavior=behavior, invert=invert)
        pieces = [[p for p, _ in pre.pre_tokenize_str(t)] for t in REGEX_TEXTS]
        out["patterns"].append({"pattern": pattern, "behavior": behavior, "invert": invert,
                                "pieces": pieces})
    return out


def stories_digests(tok, resources):
    out = {}
    for split in ("train", "valid"):
        rows = []
        with open(os.path.join(resources, f"{split}.jsonl"), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                full = tok.encode(r["prompt"] + r["completion"]).ids
                prompt = tok.encode(r["prompt"]).ids
                rows.append({"count": len(full), "digest": fnv1a64(full),
                             "prompt_count": len(prompt), "prompt_digest": fnv1a64(prompt)})
        out[split] = rows
    return out


def copy_shared_references(shared, out):
    """Subsets of the shared reference files that the tests compare against directly."""
    r = json.load(open(os.path.join(shared, "fixtures/tiny-llama/reference.json"), encoding="utf-8"))
    dump({"source": "/work/shared/fixtures/tiny-llama/reference.json, key tokenizer.cases "
                    "(generated by make_fixtures.py with tokenizers 0.23.3)",
          "cases": r["tokenizer"]["cases"]},
         os.path.join(out, "tiny-llama/reference_cases.json"))
    s = json.load(open(os.path.join(shared, "models/stories260K/reference.json"), encoding="utf-8"))
    sequences = {k: {kk: v[kk] for kk in v if kk in ("ids", "decoded", "completion_start")}
                 for k, v in s["sequences"].items()}
    g = s["greedy_once_upon_a_time"]
    os.makedirs(os.path.join(out, "stories260K"), exist_ok=True)
    dump({"source": "/work/shared/models/stories260K/reference.json, keys sequences.*.{ids,decoded,"
                    "completion_start} and greedy_once_upon_a_time (transformers 5.23, tokenizers 0.23.3)",
          "sequences": sequences, "greedy": {k: g[k] for k in ("prompt", "prompt_ids", "all_ids", "text")}},
         os.path.join(out, "stories260K/reference_sequences.json"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--resources", default="Sources/QLoRAKit/Resources/stories260K")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rng = random.Random(20240611)

    tiny_dir = os.path.join(args.out, "tiny-llama")
    os.makedirs(tiny_dir, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(args.shared, "fixtures/tiny-llama", name), os.path.join(tiny_dir, name))
    copy_shared_references(args.shared, args.out)
    toks = {"tiny-llama": Tokenizer.from_file(os.path.join(tiny_dir, "tokenizer.json")),
            "stories260K": Tokenizer.from_file(os.path.join(args.resources, "tokenizer.json")),
            "llama3-style": make_llama3_style(args.shared, args.out)}
    toks.update(make_metaspace_variants(args.shared, args.out))

    ref = {"generator": "make_reference.py", "tokenizers_version": tokenizers.__version__,
           "tokenizers": {name: cases_for(tok, rng) for name, tok in toks.items()},
           "regex_cases": regex_cases(),
           "stories_eval": stories_digests(toks["stories260K"], args.resources)}
    dump(ref, os.path.join(args.out, "reference.json"), compact=True)


if __name__ == "__main__":
    main()
