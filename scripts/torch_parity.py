#!/usr/bin/env python3
"""The spec's GPT in PyTorch, beside saobp's: checkpoint parity, training
parity and step times. Not part of CI (it needs PyTorch and `transformers`).

    pip install torch transformers safetensors numpy
    python scripts/torch_parity.py check --run RUN_DIR --data data/shakespeare.txt
        (SAOBP_BIN=path/to/saobp to use a built command instead of `cargo run`)
    python scripts/torch_parity.py train --data data/shakespeare.txt --lam 0 --seed 1 \
        [--steps 2000] [--compare RUN_DIR] [--out torch-l0-s1.jsonl]
    python scripts/torch_parity.py steps [--repeat 10]

`check` loads a run folder written by `saobp train` three ways and compares:
  - `transformers`' GPT2LMHeadModel (λ ignored, so meaningful at λ = 0);
  - this file's model of SPEC.md ("Training a small GPT"), with the
    checkpoint's λ, SAOBP through the explicit two-hop matrix M;
  - `saobp eval --json` (and `--grads`), the library on its default adapter.
  It prints the val loss of each over the same fixed windows and the largest
  gradient difference between the library and PyTorch's autograd.

`train` trains this file's model with what `saobp train` uses: the same
initial weights (SplitMix64 and Box-Muller, as `saobp::model::init_values`),
the same batches (`saobp::data::Corpus::batch`), AdamW, clipping, warm-up and
cosine schedule of the spec, and evaluates every 100 steps on the same 32
val windows. With `--compare RUN_DIR` it prints the library's val loss at the
same steps beside its own.

`steps` times one training step (forward, backward, AdamW) at λ = 0 and
λ = 0.3, at the tiny preset (T = 64, batch 12) and at the small preset's
sizes with batch 8 (T = 256), as the library's bench does, on 2 threads.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

MASK = (1 << 64) - 1


class SplitMix64:
    """saobp::workload::SplitMix64, bit for bit."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def normal(self):
        u1 = 1.0 - (self.next_u64() >> 11) / float(1 << 53)
        u2 = (self.next_u64() >> 11) / float(1 << 53)
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def below(self, n):
        return 0 if n == 0 else self.next_u64() % n


class Corpus:
    """Characters by rank, the 90 % / 10 % split and the fixed windows."""

    def __init__(self, path):
        text = open(path, encoding="utf-8").read()
        self.chars = sorted(set(text))
        rank = {c: i for i, c in enumerate(self.chars)}
        ids = np.fromiter((rank[c] for c in text), dtype=np.int64, count=len(text))
        cut = (len(ids) * 9) // 10
        self.train, self.val = ids[:cut], ids[cut:]

    def batch(self, seed, step, batch, block):
        offsets = len(self.train) - block
        key = SplitMix64(seed ^ SplitMix64(step).next_u64()).next_u64()
        rng = SplitMix64(key)
        starts = [rng.below(offsets) for _ in range(batch)]
        x = np.stack([self.train[o : o + block] for o in starts])
        y = np.stack([self.train[o + 1 : o + block + 1] for o in starts])
        return torch.from_numpy(x), torch.from_numpy(y)

    def windows(self, split, count, block):
        ids = self.val if split == "val" else self.train
        x = np.stack([ids[w * block : w * block + block] for w in range(count)])
        y = np.stack([ids[w * block + 1 : w * block + block + 1] for w in range(count)])
        return torch.from_numpy(x), torch.from_numpy(y)


def param_specs(c):
    """saobp::model::GptConfig::parameters: names, shapes and decay, in order."""
    C, V, T, H = c["n_embd"], c["vocab_size"], c["n_positions"], c["n_head"]
    out = [("transformer.wte.weight", (V, C), True), ("transformer.wpe.weight", (T, C), True)]
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        out += [
            (p + "ln_1.weight", (C,), False),
            (p + "ln_1.bias", (C,), False),
            (p + "attn.c_attn.weight", (C, 3 * C), True),
            (p + "attn.c_attn.bias", (3 * C,), False),
            (p + "attn.c_proj.weight", (C, C), True),
            (p + "attn.c_proj.bias", (C,), False),
            (p + "ln_2.weight", (C,), False),
            (p + "ln_2.bias", (C,), False),
            (p + "mlp.c_fc.weight", (C, 4 * C), True),
            (p + "mlp.c_fc.bias", (4 * C,), False),
            (p + "mlp.c_proj.weight", (4 * C, C), True),
            (p + "mlp.c_proj.bias", (C,), False),
        ]
        if c.get("lambda") is not None:
            out.append((p + "attn.saobp_lambda", (H,), False))
    out += [("transformer.ln_f.weight", (C,), False), ("transformer.ln_f.bias", (C,), False)]
    return out


def init_values(c, seed):
    """saobp::model::init_values: one SplitMix64 stream over the weights in order."""
    rng = SplitMix64(seed)
    proj_std = 0.02 / math.sqrt(2.0 * c["n_layer"])
    lam = iter(c.get("lambda") or [])
    out = {}
    for name, shape, _ in param_specs(c):
        n = math.prod(shape)
        if name.endswith("saobp_lambda"):
            v = np.array(next(lam), dtype=np.float32)
        elif name.endswith(".bias"):
            v = np.zeros(n, dtype=np.float32)
        elif "ln_" in name:
            v = np.ones(n, dtype=np.float32)
        else:
            std = proj_std if name.endswith("c_proj.weight") else 0.02
            v = np.array([std * rng.normal() for _ in range(n)], dtype=np.float32)
        out[name] = torch.from_numpy(v.reshape(shape))
    return out


def saobp_attention(q, k, v, lam):
    """Causal attention refined by SAOBP, M formed explicitly (SPEC.md)."""
    T, D = q.shape[-2], q.shape[-1]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    a = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
    if lam is None:
        return a @ v
    diag = a.diagonal(dim1=-2, dim2=-1)
    # M_ij = Σ_{k∉{i,j}} A_ik A_kj for j ≠ i, M_ii = 0.
    m = (a @ a - diag.unsqueeze(-1) * a - a * diag.unsqueeze(-2)) * (~torch.eye(T, dtype=torch.bool))
    l = lam.view(1, -1, 1, 1)
    r = (a + l * m) / (1.0 + l * m.sum(-1, keepdim=True))
    return r @ v


def gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def forward(p, c, x):
    """Logits of the spec's GPT for ids `x` [B, T]; `p` maps names to tensors."""
    B, T = x.shape
    C, H, L = c["n_embd"], c["n_head"], c["n_layer"]
    eps = c.get("layer_norm_epsilon", 1e-5)
    h = p["transformer.wte.weight"][x] + p["transformer.wpe.weight"][:T]
    for i in range(L):
        g = lambda s: p[f"transformer.h.{i}.{s}"]
        y = F.layer_norm(h, (C,), g("ln_1.weight"), g("ln_1.bias"), eps)
        qkv = y @ g("attn.c_attn.weight") + g("attn.c_attn.bias")
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in qkv.split(C, dim=-1))
        lam = p.get(f"transformer.h.{i}.attn.saobp_lambda")
        o = saobp_attention(q, k, v, lam).transpose(1, 2).reshape(B, T, C)
        h = h + o @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        y = F.layer_norm(h, (C,), g("ln_2.weight"), g("ln_2.bias"), eps)
        h = h + gelu(y @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias")) @ g("mlp.c_proj.weight") + g(
            "mlp.c_proj.bias"
        )
    h = F.layer_norm(h, (C,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    return h @ p["transformer.wte.weight"].t()


def loss_of(p, c, x, y):
    logits = forward(p, c, x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def windows_loss(p, c, corpus, split, count, chunk=64):
    """Mean cross-entropy over the first `count` fixed windows of `split`."""
    x, y = corpus.windows(split, count, c["n_positions"])
    total = 0.0
    with torch.no_grad():
        for s in range(0, count, chunk):
            total += loss_of(p, c, x[s : s + chunk], y[s : s + chunk]).item() * len(x[s : s + chunk])
    return total / count


def lr_at(step, total, lr):
    """saobp::lr_at: 100 warm-up steps, then cosine to lr/10 at the last step."""
    if step < 100:
        return lr * (step + 1) / 100
    last = total - 1
    progress = 1.0 if last <= 100 else min((step - 100) / (last - 100), 1.0)
    floor = lr / 10
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def saobp_cli(args):
    """The library's command: $SAOBP_BIN, or built by cargo (from the repository root)."""
    binary = os.environ.get("SAOBP_BIN")
    return ([binary] if binary else ["cargo", "run", "--quiet", "--release", "--"]) + args


def check(a):
    c = json.load(open(os.path.join(a.run, "config.json")))
    weights = load_file(os.path.join(a.run, "model.safetensors"))
    lam_names = [n for n in weights if n.endswith("saobp_lambda")]
    lams = [weights[n].tolist() for n in sorted(lam_names)]
    corpus = Corpus(a.data)
    p = {n: t.float() for n, t in weights.items()}
    ours_torch = windows_loss(p, c, corpus, "val", a.windows)
    print(f"run {a.run}: λ per layer {lams or 'absent'}")
    print(f"val loss, {a.windows} windows of T = {c['n_positions']}:")
    print(f"  PyTorch, this file's spec model (λ as stored): {ours_torch:.6f}")

    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(a.run).eval()
    x, y = corpus.windows("val", a.windows, c["n_positions"])
    with torch.no_grad():
        total = 0.0
        for s in range(0, a.windows, 64):
            out = hf(x[s : s + 64]).logits
            total += F.cross_entropy(out.reshape(-1, out.shape[-1]), y[s : s + 64].reshape(-1)).item() * len(
                x[s : s + 64]
            )
        lg_hf = hf(x[:4]).logits
        lg_spec = forward({n: t.float() for n, t in weights.items() if not n.endswith("saobp_lambda")}, c, x[:4])
    print(f"  transformers GPT2LMHeadModel (λ ignored):      {total / a.windows:.6f}")
    print(f"  largest logit difference, transformers vs the spec model at λ = 0: {(lg_hf - lg_spec).abs().max().item():.3e}")

    grads = os.path.abspath("torch-parity-grads.safetensors")
    out = subprocess.run(
        saobp_cli(["eval", "--model", a.run, "--data", a.data, "--windows", str(a.windows), "--json", "--grads", grads]),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"saobp eval failed: {out.stderr.strip()}")
    report = json.loads(out.stdout)
    print(f"  saobp eval ({report.get('adapter', {}).get('name', 'default adapter')}): {report['loss']:.6f}")
    print(f"  |saobp − PyTorch spec model| = {abs(report['loss'] - ours_torch):.3e}")

    q = {n: t.float().clone().requires_grad_(True) for n, t in weights.items()}
    x, y = corpus.windows("val", a.windows, c["n_positions"])
    loss = loss_of(q, c, x, y)
    loss.backward()
    theirs = load_file(grads)
    worst = 0.0
    for n, t in q.items():
        g, h = t.grad, theirs[n].float()
        scale = g.abs().max().item() or 1.0
        worst = max(worst, ((g - h).abs().max().item()) / scale)
    os.remove(grads)
    print(f"  gradients: largest |saobp − autograd| / that tensor's largest gradient = {worst:.3e} over {len(q)} tensors")


def train(a):
    torch.set_num_threads(a.threads)
    corpus = Corpus(a.data)
    c = {
        "vocab_size": len(corpus.chars),
        "n_positions": a.block,
        "n_embd": a.embd,
        "n_layer": a.layers,
        "n_head": a.heads,
        "layer_norm_epsilon": 1e-5,
        "lambda": None if a.lam is None else [[a.lam] * a.heads for _ in range(a.layers)],
    }
    # A fixed λ is not a parameter: no gradient, not in the clipped norm.
    p = {
        n: t.requires_grad_(a.learn_lambda or not n.endswith("saobp_lambda"))
        for n, t in init_values(c, a.seed).items()
    }
    specs = param_specs(c)
    decayed = [p[n] for n, _, d in specs if d]
    plain = [p[n] for n, _, d in specs if not d and not n.endswith("saobp_lambda")]
    lams = [p[n] for n, _, _ in specs if n.endswith("saobp_lambda")]
    groups = [{"params": decayed, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}]
    if lams and a.learn_lambda:
        groups.append({"params": lams, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.99), eps=1e-8)
    theirs = {}
    if a.compare:
        for line in open(os.path.join(a.compare, "metrics.jsonl")):
            r = json.loads(line)
            theirs[r["step"]] = r["val_loss"]
    out = open(a.out, "w") if a.out else None
    times, start = [], time.perf_counter()
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; λ = {a.lam}, seed {a.seed}")
    for step in range(a.steps + 1):
        if step % a.eval_every == 0 or step == a.steps:
            val = windows_loss(p, c, corpus, "val", a.eval_windows)
            lib = theirs.get(step)
            beside = f"   saobp {lib:.4f}  (diff {val - lib:+.4f})" if lib is not None else ""
            print(f"step {step:5d}  val {val:.4f}{beside}", flush=True)
            if out:
                out.write(json.dumps({"step": step, "val_loss": val, "saobp_val_loss": lib}) + "\n")
        if step == a.steps:
            break
        x, y = corpus.batch(a.seed, step, a.batch, a.block)
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr)
        opt.zero_grad(set_to_none=True)
        loss_of(p, c, x, y).backward()
        torch.nn.utils.clip_grad_norm_([t for g in groups for t in g["params"]], 1.0)
        opt.step()
        with torch.no_grad():
            for l in lams:
                l.clamp_(min=0.0)
        times.append(time.perf_counter() - t0)
    print(f"median step {statistics.median(times) * 1e3:.1f} ms; {time.perf_counter() - start:.0f} s in all")


def steps(a):
    torch.set_num_threads(a.threads)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads: median of {a.repeat} training steps")
    for name, (L, H, C, T, B) in {"tiny (T = 64, batch 12)": (4, 4, 128, 64, 12), "small sizes (T = 256, batch 8)": (6, 6, 384, 256, 8)}.items():
        row = []
        for lam in (None, 0.3):
            c = {"vocab_size": 84, "n_positions": T, "n_embd": C, "n_layer": L, "n_head": H,
                 "lambda": None if lam is None else [[lam] * H for _ in range(L)]}
            p = {n: t.requires_grad_(True) for n, t in init_values(c, 1).items()}
            opt = torch.optim.AdamW(list(p.values()), lr=1e-3, betas=(0.9, 0.99))
            x = torch.randint(0, 84, (B, T))
            y = torch.randint(0, 84, (B, T))
            ts = []
            for i in range(a.repeat + 2):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss_of(p, c, x, y).backward()
                torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
                opt.step()
                if i >= 2:
                    ts.append(time.perf_counter() - t0)
            row.append(statistics.median(ts))
        print(f"  {name}: λ = 0 {row[0] * 1e3:.1f} ms, λ = 0.3 {row[1] * 1e3:.1f} ms, ratio {row[1] / row[0]:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("check")
    k.add_argument("--run", required=True)
    k.add_argument("--data", required=True)
    k.add_argument("--windows", type=int, default=32)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--lam", type=float, default=None, help="λ in every head (omit: plain GPT-2)")
    t.add_argument("--learn-lambda", action="store_true")
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--embd", type=int, default=128)
    t.add_argument("--block", type=int, default=64)
    t.add_argument("--batch", type=int, default=12)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--eval-windows", type=int, default=32)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--compare", help="a saobp run folder of the same settings")
    t.add_argument("--out", help="write the evaluations as JSON lines")
    s = sub.add_parser("steps")
    s.add_argument("--repeat", type=int, default=10)
    s.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    {"check": check, "train": train, "steps": steps}[a.cmd](a)


if __name__ == "__main__":
    main()
