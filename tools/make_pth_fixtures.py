#!/usr/bin/env python3
"""Writes the small PyTorch checkpoints read by tests/pth.rs into tests/fixtures/pth/.

Run it with a Python that has torch and safetensors:

    /work/venv/bin/python tools/make_pth_fixtures.py

Next to the checkpoints it writes expected.safetensors: for every tensor of every fixture the values
the Rust reader must return (converted to float32, contiguous), under the key "<fixture>::<key>".
Its metadata maps "<fixture>::<key>" to the source dtype name and "<fixture>" to a JSON list of the
state-dict keys in file order. The fixtures the reader must refuse (forbidden.pth, expanded.pth,
no_state_dict.pth) have no expected values.
"""

import collections
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pth"

DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "Bool",
}

expected: dict[str, torch.Tensor] = {}
metadata: dict[str, str] = {}


def expect(name: str, state_dict: dict) -> None:
    """Records what reading fixture `name` must return: its tensors, in order, as float32."""
    keys = []
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            keys.append(key)
            # clone(): safetensors refuses tensors that share memory, and views must be made contiguous.
            expected[f"{name}::{key}"] = value.detach().to(torch.float32).contiguous().clone()
            metadata[f"{name}::{key}"] = DTYPE_NAMES[value.dtype]
    metadata[name] = json.dumps(keys)


def save(name: str, state_dict: dict, checkpoint=None, **kwargs) -> None:
    """Saves `checkpoint` (by default the state dict itself); a checkpoint holds it under 'state_dict'."""
    path = OUT / name
    torch.save(state_dict if checkpoint is None else checkpoint, path, **kwargs)
    # Round trip through torch itself, so a fixture never disagrees with what torch would load. torch's
    # weights_only unpickler knows no FRAME opcode, so protocol 4 files need the full (trusted) unpickler.
    loaded = torch.load(path, weights_only=kwargs.get("pickle_protocol", 2) < 4)
    check_equal(state_dict, loaded if checkpoint is None else loaded["state_dict"])
    expect(name, state_dict)


def check_equal(want: dict, got: dict) -> None:
    assert list(want) == list(got), (list(want), list(got))
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == got[key].dtype and value.shape == got[key].shape, key
            # Bytes, not values: NaN != NaN.
            assert torch.equal(raw_bytes(value), raw_bytes(got[key])), key


def raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.resolve_neg().contiguous().flatten().view(torch.uint8)


def rewrite_zip(src: Path, dst: Path, *, compression=zipfile.ZIP_STORED, edit=None) -> None:
    """Copies a torch zip checkpoint entry by entry; `edit(name, data)` may change an entry's bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if edit is not None:
                data = edit(info.filename, data)
            zout.writestr(info.filename, data, compress_type=compression)


def dtypes() -> None:
    """One tensor of each supported dtype, as a model's state dict would hold them."""
    half_specials = torch.tensor(
        [0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 6e-8, 1e-7, float("inf"), float("-inf"), float("nan")],
        dtype=torch.float16,
    )
    sd = collections.OrderedDict()
    sd["conv.weight"] = torch.randn(4, 3, 3, 3)
    sd["half.weight"] = torch.randn(2, 5).to(torch.float16)
    sd["half.specials"] = half_specials
    sd["bf16.weight"] = torch.randn(3, 4).to(torch.bfloat16)
    sd["bf16.specials"] = torch.tensor([0.0, -0.0, 1e-40, 3.0e38, float("inf"), float("nan")], dtype=torch.bfloat16)
    sd["double.weight"] = torch.randn(2, 3, dtype=torch.float64)
    sd["bn.num_batches_tracked"] = torch.tensor(12345, dtype=torch.int64)
    sd["long.big"] = torch.tensor([-(2**40), 2**40, -1], dtype=torch.int64)
    sd["int.values"] = torch.tensor([-7, 0, 2**30], dtype=torch.int32)
    sd["short.values"] = torch.tensor([-32768, 32767], dtype=torch.int16)
    sd["char.values"] = torch.tensor([-128, 127, 0], dtype=torch.int8)
    sd["byte.values"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["bool.mask"] = torch.tensor([True, False, True])
    sd["empty"] = torch.zeros(0, 3)
    save("dtypes.pth", sd)


def views() -> None:
    """Tensors that are views: the reader must honour storage offsets and strides."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.randn(2, 5)
    neg = torch._neg_view(torch.tensor([1.0, -2.0, 3.0]))
    assert neg.is_neg()
    sd = collections.OrderedDict()
    sd["transposed"] = base.t()
    sd["offset"] = base.view(-1)[7:12]
    sd["sliced"] = base[1:3, ::2]
    sd["shared.a"] = shared[0]
    sd["shared.b"] = shared[1]
    sd["shared.whole"] = shared
    sd["overlapping"] = torch.as_strided(torch.arange(6, dtype=torch.float32), (3, 3), (1, 1))
    sd["broadcast"] = torch.tensor([5.0]).expand(2, 3)
    sd["permuted"] = torch.randn(2, 3, 4).permute(2, 0, 1)
    sd["negative.view"] = neg  # saved with metadata {'neg': True}
    sd["scalar"] = torch.tensor(3.5)
    save("views.pth", sd)


def nested() -> None:
    """A training checkpoint: the state dict sits under 'state_dict' beside other entries."""
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 2, 3, 3)).sum().backward()
    optimizer.step()
    sd = model.state_dict()
    checkpoint = {
        "epoch": 3,
        "arch": "tiny",
        "best_acc1": 71.5,
        "note": None,
        "state_dict": sd,
        "optimizer": optimizer.state_dict(),
    }
    save("nested.pth", sd, checkpoint)


def shared_state_dict() -> None:
    """One state dict under two keys: pickle memoises it before filling it, then refers back to it."""
    sd = torch.nn.Linear(2, 2).state_dict()
    save("shared_dict.pth", sd, {"ema": sd, "state_dict": sd})


def legacy() -> None:
    """The pre-1.6 format, with shared storages and a view."""
    base = torch.randn(3, 4)
    sd = collections.OrderedDict()
    sd["fc.weight"] = base
    sd["fc.weight.t"] = base.t()
    sd["row"] = base[2]
    sd["half"] = torch.randn(5).to(torch.float16)
    sd["bn.num_batches_tracked"] = torch.tensor(7)
    sd["epoch"] = 9  # a non-tensor value, skipped
    save("legacy.pth", sd, _use_new_zipfile_serialization=False)


class StorageView:
    """Stands for a view of a legacy storage; pickled as a persistent id by LegacyViewPickler."""


class TensorOnView:
    """Pickles as torch._utils._rebuild_tensor(view, offset=1, size=(2,), stride=(1,)), as torch < 0.4 did."""

    def __reduce__(self):
        return (torch._utils._rebuild_tensor, (StorageView(), 1, (2,), (1,)))


class LegacyViewPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageView):
            # Elements 4..7 of the 10-element storage "root", as the view "view".
            return ("storage", torch.FloatStorage, "root", "cpu", 10, ("view", 4, 3))
        return None


def legacy_storage_view() -> None:
    """Storage views, which only torch < 0.4 wrote: current torch cannot save them, so write the stream by hand."""
    root = torch.arange(10, dtype=torch.float32)
    out = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, out, protocol=2)  # the magic number
    pickle.dump(1001, out, protocol=2)  # the legacy protocol version
    pickle.dump({"protocol_version": 1001, "little_endian": True}, out, protocol=2)
    LegacyViewPickler(out, protocol=2).dump(collections.OrderedDict(v=TensorOnView()))
    pickle.dump(["root"], out, protocol=2)
    out.write(len(root).to_bytes(8, "little") + root.numpy().tobytes())
    path = OUT / "legacy_view.pth"
    path.write_bytes(out.getvalue())
    sd = collections.OrderedDict(v=root[5:7])
    check_equal(sd, torch.load(path, weights_only=False))  # our own file: trusted
    expect("legacy_view.pth", sd)


def protocol4() -> None:
    """pickle_protocol=4 brings FRAME, MEMOIZE, STACK_GLOBAL and SHORT_BINUNICODE; Parameters bring _rebuild_parameter."""
    sd = collections.OrderedDict()
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2))
    sd["buffer"] = torch.arange(3, dtype=torch.int64)
    save("protocol4.pth", sd, pickle_protocol=4)


def big_endian() -> None:
    """A zip checkpoint whose byteorder record says 'big', as written on a big-endian machine."""
    sd = collections.OrderedDict()
    sd["w"] = torch.randn(2, 3)
    sd["h"] = torch.randn(3).to(torch.float16)
    sd["n"] = torch.tensor(258, dtype=torch.int64)
    little = OUT / "big_endian.tmp"
    torch.save(sd, little)
    # torch names storages "0", "1", ... in pickling order; each tensor here has its own.
    sizes = {str(i): tensor.element_size() for i, tensor in enumerate(sd.values())}

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            size = sizes[name.rsplit("/", 1)[1]]
            return b"".join(data[i : i + size][::-1] for i in range(0, len(data), size))
        return data

    rewrite_zip(little, OUT / "big_endian.pth", edit=edit)
    little.unlink()
    check_equal(sd, torch.load(OUT / "big_endian.pth", weights_only=True))
    expect("big_endian.pth", sd)


def deflated() -> None:
    """The same layout as torch's, but with deflate-compressed entries (as a re-zipped file would be)."""
    sd = collections.OrderedDict()
    sd["w"] = torch.zeros(64)
    sd["b"] = torch.arange(10, dtype=torch.float32)
    stored = OUT / "deflated.tmp"
    torch.save(sd, stored)
    rewrite_zip(stored, OUT / "deflated.pth", compression=zipfile.ZIP_DEFLATED)
    stored.unlink()
    expect("deflated.pth", sd)


class Evil:
    """Pickles as a call of os.system; the reader must refuse the global without running anything."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def forbidden() -> None:
    sd = {"w": torch.ones(2)}
    path = OUT / "forbidden.tmp"
    torch.save(sd, path)
    evil = pickle.dumps({"w": Evil()}, protocol=2)
    assert b"system" in evil
    rewrite_zip(path, OUT / "forbidden.pth", edit=lambda name, data: evil if name.endswith("/data.pkl") else data)
    path.unlink()


def expanded() -> None:
    """A 4-byte storage viewed as 2^40 elements: valid for torch, refused here rather than allocated."""
    torch.save({"huge": torch.zeros(1).expand(2**20, 2**20)}, OUT / "expanded.pth")


def no_state_dict() -> None:
    """A checkpoint without any dict of tensors: the error must list its top-level keys."""
    torch.save({"epoch": 1, "arch": "none"}, OUT / "no_state_dict.pth")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    dtypes()
    views()
    nested()
    shared_state_dict()
    legacy()
    legacy_storage_view()
    protocol4()
    big_endian()
    deflated()
    forbidden()
    expanded()
    no_state_dict()
    save_file(expected, OUT / "expected.safetensors", metadata=metadata)
    (OUT / "expected.safetensors").chmod(0o644)  # safetensors creates it private
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, torch {torch.__version__}")


if __name__ == "__main__":
    main()
