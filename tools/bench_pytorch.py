"""Side-by-side reference for `resnet bench`: PyTorch CPU throughput of the same network
(the CIFAR ResNet of tools/cifar_resnet.py, or torchvision's ImageNet ResNets),
channels_last, same batch, same thread count, median of timed steps.

    python tools/bench_pytorch.py --depth 20 --batch 128 --threads 2
    python tools/bench_pytorch.py --model resnet50 --batch 16 --threads 2
    python tools/bench_pytorch.py --model resnet50 --batch 16 --precision bf16   # CPU autocast
    python tools/bench_pytorch.py --model resnet50 --batch 256 --device cuda --precision bf16 [--compile]
"""
import argparse
import contextlib
import statistics
import time

import torch

from cifar_resnet import CifarResNet


def timed(fn, warmup, steps, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=20, help="CIFAR ResNet depth (6n+2)")
    p.add_argument("--model", help="a torchvision ImageNet model instead, e.g. resnet50")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=["f32", "tf32", "bf16", "fp16"], default="f32",
                   help="bf16, fp16: torch.autocast around the forward passes (fp16 with a GradScaler); "
                        "tf32: f32 with TF32 matrix units (GPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.benchmark = True
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model:
        import torchvision

        model, size, classes, name = getattr(torchvision.models, a.model)(), 224, 1000, a.model
    else:
        model, size, classes, name = CifarResNet((a.depth - 2) // 6), 32, 10, f"resnet{a.depth}"
    model = model.to(dev, memory_format=torch.channels_last)
    x = torch.randn(a.batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (a.batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(a.device, enabled=a.precision == "fp16")
    net = torch.compile(model) if a.compile else model

    def cast():
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
        return torch.autocast(a.device, dtype=low) if low else contextlib.nullcontext()

    def train_step():
        opt.zero_grad(set_to_none=True)
        with cast():
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def infer():
        with cast():
            return net(x)

    model.train()
    t_train = timed(train_step, a.warmup, a.steps, sync)
    model.eval()
    with torch.no_grad():
        t_infer = timed(infer, a.warmup, a.steps, sync)
    where = torch.cuda.get_device_name() if a.device == "cuda" else f"threads {a.threads}"
    compiled = " compiled" if a.compile else ""
    print(f"pytorch {torch.__version__} {name} batch {a.batch} {where} channels_last {a.precision}{compiled}")
    print(f"train: {a.batch / t_train:.1f} img/s ({t_train * 1e3:.2f} ms/step)")
    print(f"infer: {a.batch / t_infer:.1f} img/s ({t_infer * 1e3:.2f} ms/batch)")


if __name__ == "__main__":
    main()
