"""Golden files for tests/imagenet_golden.rs: torchvision's ResNet-18 and ResNet-50 on one
224x224 photo, with torchvision's eval transform, against `resnet predict`.

    python tools/golden_imagenet.py tests/golden/imagenet

Writes into the folder:
- input.png: a 224x224 crop of ../shared/data/imagenet-samples/images/pytorch_hub_dog.jpg
  (resize 256, centre crop 224; lossless, so decoding is exact on both sides);
- resnet18.pth, resnet50.pth: torch.save of each state dict. To keep them small while
  every tensor is still real data, the conv and fc weights and the BN affine parameters
  are strided views (as_strided) into a few shared random storages, which torch.save
  stores once; the BN running statistics are calibrated on noisy copies of the input so
  they are non-trivial and the activations stay in range;
- logits.safetensors: `<model>.logits`, float64, of torchvision's model in float64 on
  the input after Resize(224), CenterCrop(224), ToTensor, Normalize(ImageNet);
- wide.png: a 160x120 crop of the same photo, and in logits.safetensors the ResNet-18
  class probabilities of the evaluation protocols on it: `resnet18.center` (Resize(256),
  CenterCrop(224)), `resnet18.10crop` (Resize(256), TenCrop(224), softmax averaged) and
  `resnet18.multiscale` (Resize(s) for s in 224, 256, 384, 480, 640, whole image and its
  mirror, softmax averaged).
"""
import sys
from pathlib import Path

import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

SEED = 1234
BASE = 20_011  # elements of each shared storage (prime, so strides spread the indices)


def strided_view(base, shape):
    """A view of `base` with the given shape, its strides chosen to fit: element
    [i0, i1, ...] is base[offset + sum(i_k * s_k)], neighbours differ."""
    strides = [0] * len(shape)
    budget = BASE - 1
    for k in reversed(range(len(shape))):
        if k == len(shape) - 1:
            strides[k] = 1
        else:
            # Odd strides with a spread of at most the budget left for this dimension.
            strides[k] = max(1, (budget // max(shape[k] - 1, 1)) // len(shape)) | 1
        budget -= strides[k] * (shape[k] - 1)
    span = sum(s * (d - 1) for s, d in zip(strides, shape)) + 1
    assert span <= BASE, (shape, strides, span)
    offset = (sum(shape) * 7919) % (BASE - span + 1)
    return base.as_strided(shape, strides, offset)


def build(name, x):
    torch.manual_seed(SEED)
    model = getattr(torchvision.models, name)()
    gen = torch.Generator().manual_seed(SEED)
    weights = torch.randn(BASE, generator=gen)
    # The classifier reads BN-normalized features, so its scale sets the logits' range.
    classifier = torch.randn(BASE, generator=gen) / model.fc.in_features ** 0.5
    gammas = torch.rand(BASE, generator=gen) + 0.5
    betas = torch.rand(BASE, generator=gen) * 0.4 - 0.2
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key == "fc.weight":
            state[key] = strided_view(classifier, tuple(value.shape))
        elif value.dim() >= 2:  # conv weights
            state[key] = strided_view(weights, tuple(value.shape))
        elif key.endswith(".weight"):
            state[key] = strided_view(gammas, tuple(value.shape))
        elif key.endswith(".bias"):
            state[key] = strided_view(betas, tuple(value.shape))
        else:
            state[key] = value  # running statistics, calibrated below
    model.load_state_dict(state)
    # Calibrate BN statistics: a cumulative average, in training mode, over noisy copies of
    # the input (statistics from unrelated data would let activations drift through the
    # 50 layers and blow up the logits).
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(x + 0.5 * torch.randn(4, 3, 224, 224, generator=gen))
    model.eval()
    for key, value in model.state_dict().items():
        if "running" in key or key.endswith("num_batches_tracked"):
            state[key] = value.clone()
    return model, state


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photo = Path(__file__).resolve().parent.parent.parent / "shared/data/imagenet-samples/images/pytorch_hub_dog.jpg"
    img = transforms.CenterCrop(224)(transforms.Resize(256)(Image.open(photo).convert("RGB")))
    img.save(out / "input.png")
    img = Image.open(out / "input.png").convert("RGB")
    tf = transforms.Compose([
        transforms.Resize(224),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    x = tf(img).unsqueeze(0)
    golden = {}
    for name in ["resnet18", "resnet50"]:
        model, state = build(name, x)
        torch.save(state, out / f"{name}.pth")
        # The reference: the saved file loaded back, in float64.
        check = getattr(torchvision.models, name)()
        check.load_state_dict(torch.load(out / f"{name}.pth"))
        check.eval()
        with torch.no_grad():
            logits64 = check.double()(x.double())
            logits32 = check.float()(x)
        golden[f"{name}.logits"] = logits64[0].contiguous()
        rel = ((logits32.double() - logits64).norm() / logits64.norm()).item()
        print(f"{name}: logits range [{logits64.min():.2f}, {logits64.max():.2f}], top-1 {logits64.argmax().item()}, "
              f"torch float32 vs float64 rel err {rel:.2e}, file {(out / f'{name}.pth').stat().st_size} bytes")
    golden.update(protocols(out, photo))
    save_file(golden, out / "logits.safetensors")


def protocols(out, photo):
    """ResNet-18's averaged class probabilities under each test protocol on wide.png."""
    wide = transforms.Resize(120)(Image.open(photo).convert("RGB"))
    wide = wide.crop(((wide.width - 160) // 2, 0, (wide.width - 160) // 2 + 160, 120))
    wide.save(out / "wide.png")
    wide = Image.open(out / "wide.png").convert("RGB")
    to_input = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(out / "resnet18.pth"))
    model.eval().double()

    def probs(images):
        with torch.no_grad():
            batch = torch.stack([to_input(im) for im in images]).double()
            return torch.softmax(model(batch), dim=1).mean(0)

    scaled = transforms.Resize(256)(wide)
    center = probs([transforms.CenterCrop(224)(scaled)])
    tencrop = probs(list(transforms.TenCrop(224)(scaled)))
    multi = torch.stack([
        probs([im, transforms.functional.hflip(im)])
        for im in (transforms.Resize(s)(wide) for s in [224, 256, 384, 480, 640])
    ]).mean(0)
    for name, p in [("center", center), ("10crop", tencrop), ("multiscale", multi)]:
        print(f"resnet18 {name}: top-1 {p.argmax().item()} p={p.max().item():.4f}")
    return {"resnet18.center": center, "resnet18.10crop": tencrop, "resnet18.multiscale": multi}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/golden/imagenet")
