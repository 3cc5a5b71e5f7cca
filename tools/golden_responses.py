"""Golden file for tests/responses.rs: the paper's Fig. 7 measure, computed by PyTorch
for the published CIFAR-10 ResNet-20 on the 1017 exact official test images. For each
3x3 layer (the stem's conv, then every block's convs in order), the population standard
deviation of its BatchNorm output (inference mode) before the ReLU and the shortcut
addition, over all N*H*W*C values. Computed in float64 with forward hooks on the
BatchNorm layers. Re-run with:

    python tools/golden_responses.py ../shared/data tests/golden/responses_resnet20.json
"""
import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file

from cifar_resnet import CifarResNet

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main(data, out):
    weights = load_file(f"{data}/resnet-cifar10-pretrained/resnet20-12fca82f.safetensors")
    model = CifarResNet(3)
    model.load_state_dict({k.removeprefix("module."): v for k, v in weights.items()})
    model = model.double().eval()
    raw = np.fromfile(f"{data}/cifar-10-official-partial/test_batch.first1017.bin", dtype=np.uint8)
    raw = raw.reshape(-1, 3073)[:, 1:].reshape(-1, 3, 32, 32)
    x = torch.tensor(raw, dtype=torch.float64) / 255.0
    x = (x - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    layers = []

    def hook(name):
        # Measured when the BatchNorm returns: before any ReLU or addition uses its output.
        return lambda _m, _i, y: layers.append({"layer": name, "std": y.std(unbiased=False).item()})

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(hook(name.replace("bn", "conv")))
    with torch.no_grad():
        model(x)
    with open(out, "w") as f:
        json.dump({"model": "resnet20", "images": len(x), "norm": "imagenet", "layers": layers}, f, indent=1)
    print(f"wrote {out}: {len(layers)} layers")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data",
         sys.argv[2] if len(sys.argv) > 2 else "tests/golden/responses_resnet20.json")
