"""Reference numbers for Tests/QLoRATrainingTests, from the real Python stack.

Run once with torch, transformers and jinja2 installed (versions are written into
the output); the tests never run Python. Writes reference.json beside this file.

  - adamw: torch.optim.AdamW over two parameter groups (weight decay 0.1 and 0.0)
    for 6 steps, the learning rate changed before every step, gradients chosen to
    hit the interesting cases (zero, tiny next to eps, large, sign flips).
  - clip: torch.nn.utils.clip_grad_norm_ over two tensors, once above and once
    below max_norm.
  - schedules: transformers.get_*_schedule_with_warmup multipliers per step
    (optimizer lr 1.0, so the multiplier is the learning rate).
  - chat: transformers apply_chat_template(tokenize=False) with each recognised
    template on a few conversations.
  - xoshiro: xoshiro256** written from Blackman & Vigna's reference C, seeded with
    SplitMix64 as QLoRATraining's Xoshiro256 documents (seed ^ stream * 0xD1B54A32D192ED03).
"""
import json
import math
import os

import torch
import transformers
from transformers import (PreTrainedTokenizerFast, get_constant_schedule,
                          get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)
import jinja2

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = "/work/shared/fixtures/tiny-llama"   # bos "<s>", eos "</s>"


def f32(xs):
    return [float(x) for x in torch.tensor(xs, dtype=torch.float32)]


def adamw_reference():
    decay0 = f32([0.5, -1.25, 2.0, 0.0, 3.0e-3])
    nodecay0 = f32([1.0, -0.75, 0.125])
    grads = [  # one row per step: 5 values for the decay group, then 3 for the other
        [0.1, -0.2, 0.3, 0.0, 1e-9, 0.05, -0.5, 2.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [-1.5, 4.0, -0.001, 1e-6, 2e-9, 10.0, 0.25, -3.0],
        [0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3],
        [1e3, -1e-4, 7.5, 0.5, -2e-10, 1e-12, -0.02, 0.9],
        [-0.01, 0.02, -0.03, 0.04, -0.05, 0.06, -0.07, 0.08],
    ]
    grads = [f32(g) for g in grads]
    lrs = [1e-2, 5e-3, 2e-2, 1e-3, 3e-2, 1e-2]
    a = torch.tensor(decay0, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(nodecay0, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                            lr=lrs[0], betas=(0.9, 0.999), eps=1e-8, foreach=False)
    after = []
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        a.grad = torch.tensor(g[:5], dtype=torch.float32)
        b.grad = torch.tensor(g[5:], dtype=torch.float32)
        opt.step()
        after.append([float(x) for x in torch.cat([a.detach(), b.detach()])])
    sa, sb = opt.state[a], opt.state[b]
    return {
        "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": [0.1, 0.0], "group_sizes": [5, 3],
        "initial": decay0 + nodecay0, "gradients": grads, "learning_rates": lrs,
        "parameters_after_step": after,
        "exp_avg": [float(x) for x in torch.cat([sa["exp_avg"], sb["exp_avg"]])],
        "exp_avg_sq": [float(x) for x in torch.cat([sa["exp_avg_sq"], sb["exp_avg_sq"]])],
    }


def clip_reference():
    out = []
    for g1, g2, max_norm in [([3.0, -4.0, 0.5], [1.0, 2.0], 1.0), ([0.03, -0.04], [0.001, 0.0, 0.02], 1.0)]:
        p1 = torch.zeros(len(g1), requires_grad=True)
        p2 = torch.zeros(len(g2), requires_grad=True)
        p1.grad = torch.tensor(f32(g1))
        p2.grad = torch.tensor(f32(g2))
        norm = torch.nn.utils.clip_grad_norm_([p1, p2], max_norm)
        out.append({"gradients": [f32(g1), f32(g2)], "max_norm": max_norm, "total_norm": float(norm),
                    "clipped": [[float(x) for x in p1.grad], [float(x) for x in p2.grad]]})
    return out


def schedule_reference():
    def run(make, steps):
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=1.0)
        sched = make(opt)
        lrs = []
        for _ in range(steps):
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return lrs
    warmup, total, steps = 3, 10, 13
    return {
        "warmup": warmup, "total": total,
        "constant": run(get_constant_schedule, steps),
        "constant_with_warmup": run(lambda o: get_constant_schedule_with_warmup(o, warmup), steps),
        "linear": run(lambda o: get_linear_schedule_with_warmup(o, warmup, total), steps),
        "cosine": run(lambda o: get_cosine_schedule_with_warmup(o, warmup, total), steps),
        "linear_no_warmup": run(lambda o: get_linear_schedule_with_warmup(o, 0, total), steps),
        "cosine_no_warmup": run(lambda o: get_cosine_schedule_with_warmup(o, 0, total), steps),
    }


# The chat templates as they appear in tokenizer_config.json files.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi there."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Two plus two? \n"},
     {"role": "assistant", "content": "Four.\n"}, {"role": "user", "content": "And three?"},
     {"role": "assistant", "content": " Five, no: six. "}],
    [{"role": "user", "content": "Grüße, 世界"}, {"role": "assistant", "content": "Ça va? 🙂"}],
]


def chat_reference():
    tok = PreTrainedTokenizerFast.from_pretrained(TOKENIZER_DIR)
    out = []
    for name, template in [("chatml", CHATML), ("qwen2", QWEN2), ("llama-2", LLAMA2), ("zephyr", ZEPHYR)]:
        rendered = [tok.apply_chat_template(c, chat_template=template, tokenize=False, add_generation_prompt=False)
                    for c in CONVERSATIONS]
        # Each conversation up to its last user message, with the header of the reply to write.
        prompted = [tok.apply_chat_template(c[:-1], chat_template=template, tokenize=False, add_generation_prompt=True)
                    for c in CONVERSATIONS]
        out.append({"name": name, "template": template, "rendered": rendered, "prompted": prompted})
    return {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "conversations": CONVERSATIONS,
            "templates": out}


def xoshiro_reference():
    mask = (1 << 64) - 1

    def rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & mask

    def seeded(seed, stream):
        s, words = (seed ^ (stream * 0xD1B54A32D192ED03)) & mask, []
        for _ in range(4):
            s = (s + 0x9E3779B97F4A7C15) & mask
            z = s
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
            words.append(z ^ (z >> 31))
        return words

    def outputs(s, n):
        s, out = list(s), []
        for _ in range(n):
            out.append(rotl((s[1] * 5) & mask, 7) * 9 & mask)
            t = (s[1] << 17) & mask
            s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t
            s[3] = rotl(s[3], 45)
        return out

    cases = [{"state": [1, 2, 3, 4]}, {"seed": 12345, "stream": 0}, {"seed": 12345, "stream": 3}, {"seed": 0, "stream": 0}]
    for c in cases:
        state = c["state"] if "state" in c else seeded(c["seed"], c["stream"])
        c["initial_state_hex"] = [format(w, "x") for w in state]
        c["outputs_hex"] = [format(x, "x") for x in outputs(state, 6)]
        c.pop("state", None)
    return cases


reference = {
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "jinja2": jinja2.__version__},
    "adamw": adamw_reference(),
    "clip_grad_norm": clip_reference(),
    "schedules": schedule_reference(),
    "chat_templates": chat_reference(),
    "xoshiro": xoshiro_reference(),
}
with open(os.path.join(HERE, "reference.json"), "w") as f:
    json.dump(reference, f, indent=1, ensure_ascii=False)
    f.write("\n")
