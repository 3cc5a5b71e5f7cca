"""Reference gradients of trained CIFAR ResNet-20 weights on one batch, for
examples/gradient_accuracy.rs: the first N training images (x/255 minus the per-pixel
mean, no augmentation) through PyTorch in training mode, in float64 (the reference) and in
float32 (PyTorch's own rounding, for scale).

    python tools/gradient_reference.py runs/r20/model.safetensors /tmp/grad_ref.safetensors \
        --data ../shared/data/cifar-10-batches-bin-jpeg-approx
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cifar_resnet import CifarResNet
from train_pytorch import load

p = argparse.ArgumentParser()
p.add_argument("weights")
p.add_argument("out")
p.add_argument("--data", type=Path, required=True)
p.add_argument("--batch", type=int, default=128)
a = p.parse_args()

train_x, train_y = load(sorted(a.data.glob("data_batch_*.bin")))
mean = train_x.double().mean(0, keepdim=True)
x, y = train_x[: a.batch].double() - mean, train_y[: a.batch]
out = {"input": x.float().contiguous(), "labels": y.float()}
for dtype, tag in [(torch.float64, "f64"), (torch.float32, "f32")]:
    model = CifarResNet(3)
    model.load_state_dict(load_file(a.weights))
    model = model.to(dtype).train()
    logits = model(x.to(dtype))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    out.update({f"{tag}.{k}": p.grad.float().contiguous() for k, p in model.named_parameters()})
    out[f"{tag}.loss"] = loss.detach().float().reshape(1)
save_file(out, a.out)
print(f"wrote {a.out}: loss {out['f64.loss'].item():.6f} on {a.batch} images")
