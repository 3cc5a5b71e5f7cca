"""Runs an ONNX model in onnxruntime (CPU) on a raw float32 NCHW input, for tests/export.rs:

    python tools/onnx_run.py MODEL.onnx INPUT.f32 N C H W OUTPUT.f32 [THREADS]

Writes the first output as raw float32 and prints its shape. Exits 3 when onnxruntime is
not importable, so the test can skip saying why."""
import sys

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    print(f"onnxruntime not importable: {e}", file=sys.stderr)
    sys.exit(3)


def main(model, inp, n, c, h, w, out, threads=1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    x = np.fromfile(inp, dtype=np.float32).reshape(int(n), int(c), int(h), int(w))
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    y.astype(np.float32).tofile(out)
    print(*y.shape)


if __name__ == "__main__":
    main(*sys.argv[1:])
