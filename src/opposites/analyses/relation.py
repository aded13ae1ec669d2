"""Is-a against opposite against IOI as relation types: can a linear probe read the relation type
from the residual stream at the final position (END), layer by layer, and which heads' outputs
separate the types (the share of their output's variance that the class means explain)? Classes and the task files that supply their prompts are the is-a task's
`relation_probe:`; every class gets the same number of prompts (an opposite class drawing on two
tasks splits them), and each class's prompts are split in half, seeded, into training and held-out
test prompts.

The probe is ridge regression onto one-hot labels (features standardised on the training half,
argmax decides), fitted in closed form. Control: the same probe trained on shuffled labels must
fall to chance. The END token differs between tasks (" of", " to", " is"...), so the embedding
alone (the residual before layer 0) may already tell the types apart: that layer is the
token-identity baseline the later layers are read against."""

from __future__ import annotations

import torch

from opposites.core import batches
from opposites.prompts import cluster_of, load_spec, make_prompts
from opposites.stats import proportion

RIDGE = 1.0  # the probe's L2 penalty, on standardised features


def fit_predict(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Ridge probe: (train, d) features, (train,) labels -> (test,) predicted labels."""
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    y = torch.nn.functional.one_hot(y_train, n_classes).double()  # (train, class)
    alpha = torch.linalg.solve(a @ a.T + RIDGE * torch.eye(len(a), dtype=a.dtype, device=a.device), y)  # dual form
    return (b @ (a.T @ alpha)).argmax(-1)


def separation(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the variance of x (prompt, d) that the class means explain (between / total)."""
    mu = x.mean(0)
    between = sum(int((labels == c).sum()) * (x[labels == c].mean(0) - mu).pow(2).sum() for c in labels.unique())
    return (between / (x - mu).pow(2).sum().clamp_min(1e-12)).item()


def class_prompts(task: str, tokenizer, n: int, seed: int) -> tuple[list[str], list[dict]]:
    """The class names and, for each class, n prompts (rows with a 'label'), from relation_probe:."""
    classes = load_spec(task)["relation_probe"]
    rows = []
    for label, (name, tasks) in enumerate(classes.items()):
        for i, t in enumerate(tasks):
            share = n // len(tasks) + (i < n % len(tasks))
            rows += [{**r, "label": label} for r in make_prompts(t, tokenizer, share, seed, min_prompts=2)[0]]
    return list(classes), rows


def split(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """(prompt,) True for training: half of each class, seeded."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    train = torch.zeros(len(labels), dtype=torch.bool, device="cpu")
    for c in labels.unique():
        idx = (labels == c).nonzero()[:, 0]
        train[idx[torch.randperm(len(idx), generator=gen, device="cpu")[: len(idx) // 2]]] = True
    return train


def _end_features(model, rows: list[dict], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer + 1, prompt, d_model) residual at END before each layer and after the last; (layer,
    head, prompt, d_model) each head's output at END. Prompts of equal token length share a forward
    (the tasks' lengths differ), at most batch_size at a time; the result keeps the rows' order."""
    L = model.cfg.n_layers
    names = {f"blocks.{l}.hook_resid_pre" for l in range(L)} | {f"blocks.{L - 1}.hook_resid_post"} | \
            {f"blocks.{l}.attn.hook_z" for l in range(L)}
    index = {id(r): i for i, r in enumerate(rows)}  # batches() groups the rows by length
    resid, heads = [None] * len(rows), [None] * len(rows)
    for batch in batches(model, rows, batch_size, desc="relation features"):
        _, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n in names)
        r = torch.stack([cache[f"blocks.{l}.hook_resid_pre"][:, -1] for l in range(L)]
                        + [cache[f"blocks.{L - 1}.hook_resid_post"][:, -1]], 1)  # (batch, layer + 1, d_model)
        h = torch.stack([torch.einsum("bhd,hdm->bhm", cache[f"blocks.{l}.attn.hook_z"][:, -1], model.W_O[l])
                         for l in range(L)], 1)  # (batch, layer, head, d_model)
        for k, row in enumerate(batch.rows):
            resid[index[id(row)]], heads[index[id(row)]] = r[k], h[k]
    return torch.stack(resid, 1).double().cpu(), torch.stack(heads, 2).double().cpu()


def run(model, rows: list[dict], batch_size: int, seed: int) -> dict:
    classes, prompts = class_prompts(rows[0]["task"], model.tokenizer, len(rows), seed)
    labels = torch.tensor([r["label"] for r in prompts], device="cpu")
    train = split(labels, seed)
    shuffled = labels[train][torch.randperm(int(train.sum()), generator=torch.Generator(device="cpu").manual_seed(seed + 1),
                                            device="cpu")]
    resid, heads = _end_features(model, prompts, batch_size)
    k = len(classes)
    held_words = [f"{r['task']}:{cluster_of(r)}" for r, t in zip(prompts, train.tolist()) if not t]  # held-out prompts' words

    def accuracy(x: torch.Tensor, y_train: torch.Tensor) -> dict:
        hit = (fit_predict(x[train], y_train, x[~train], k) == labels[~train]).double()
        return proportion(hit, held_words).record()  # share of held-out prompts classified right (Wilson at n_eff)

    layers = [{"layer": l, "accuracy": accuracy(resid[l], labels[train]), "shuffled": accuracy(resid[l], shuffled)}
              for l in range(len(resid))]
    per_head = [{"layer": l, "head": h, "separation": separation(heads[l, h], labels),
                 "accuracy": accuracy(heads[l, h], labels[train])}
                for l in range(heads.shape[0]) for h in range(heads.shape[1])]
    per_head.sort(key=lambda x: -x["separation"])
    return {"classes": classes, "n_per_class": [int((labels == c).sum()) for c in range(k)],
            "n_train": int(train.sum()), "n_test": int((~train).sum()), "chance": 1 / k, "ridge": RIDGE,
            "end_tokens": sorted({model.tokenizer.decode(model.to_tokens(r["clean"])[0, -1:].tolist()) for r in prompts}),
            "layers": layers, "heads": per_head}
