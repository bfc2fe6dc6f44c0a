"""PyTorch's training step as the independent reference for lfgcl's.

    python3 torch_train_step.py MODEL OUT_DIR HxW BATCH LR PRE

Builds torchvision's MODEL as torchvision_models.py does (random weights and batch-norm
statistics, 10 classes), first trained in float64 for PRE steps on another batch (so that the
step below starts away from the random initialisation), and writes its state dict to
OUT_DIR/state_dict.safetensors. Then one training step on one batch of BATCH random images
(OUT_DIR/batch.safetensors: `input`, and `labels` as floats): train-mode batch norm,
cross-entropy with labels, SGD with learning rate LR, momentum 0.9, weight decay 5e-4 and
Nesterov. It does so in float64 (the truth), in float32, and in float32 from weights nudged by 1e-6
(two seeds: about what another summation order changes), and writes OUT_DIR/moved_f64.safetensors,
moved_f32.safetensors and moved_f32_nudged{0,1}.safetensors: every parameter's move (after minus
before, subtracted in float64) and every running statistic after the step, as float32. The
float32 runs say how far a correct float32 step lands from the truth on this net. Prints the
losses of the float64 and float32 runs as JSON.

One step, not several: two steps on the same batch are chaotic on these nets (PyTorch's own
float32 moves change by 12% when its starting weights are perturbed by 1e-7), so only the first
step's gradient is a stable thing to compare.
"""

import copy
import json
import sys

import torch

from torchvision_models import build, save


def train(model, x, labels, steps, lr):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def moved(model, start):
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            continue
        is_param = not (k.endswith("running_mean") or k.endswith("running_var"))
        out[k] = (v.double() - start[k].double() if is_param else v.double()).float()
    return out


def main():
    name, out, size = sys.argv[1], sys.argv[2], sys.argv[3]
    batch, lr, pre = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    h, _, w = size.partition("x")
    model, g = build(name)
    if pre:
        g2 = torch.Generator().manual_seed(5)
        xp = torch.randn(batch, 3, int(h), int(w or h), generator=g2)
        lp = torch.randint(0, 10, (batch,), generator=g2)
        m64 = copy.deepcopy(model).double()
        train(m64, xp.double(), lp, pre, lr)
        model = m64.float()
    start = copy.deepcopy(model.state_dict())
    save(f"{out}/state_dict.safetensors", start)
    x = torch.randn(batch, 3, int(h), int(w or h), generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    save(f"{out}/batch.safetensors", {"input": x, "labels": labels.float()})
    exact = copy.deepcopy(model).double()
    nudged = []
    for seed in range(2):
        m = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + 1e-6 * torch.randn(p.shape, generator=gen))
        nudged.append(m)
    losses = {"f64": train(exact, x.double(), labels, 1, lr), "f32": train(model, x, labels, 1, lr)}
    save(f"{out}/moved_f64.safetensors", moved(exact, start))
    save(f"{out}/moved_f32.safetensors", moved(model, start))
    for i, m in enumerate(nudged):
        train(m, x, labels, 1, lr)
        save(f"{out}/moved_f32_nudged{i}.safetensors", moved(m, start))
    print(json.dumps(losses))


if __name__ == "__main__":
    main()
