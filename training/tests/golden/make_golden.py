#!/usr/bin/env python3
"""Golden values for the teacher tests, computed without torch (Python pickle + numpy).

How to run (from the repository root; needs only `pip install numpy`):

    python3 training/tests/golden/make_golden.py

It writes, beside this script:

- `lite0_golden.json`: EfficientNet-Lite0 features (block0 max-pooled, stage2, stage3,
  stage5) of the pretrained file third_party/weights/efficientnet-lite0-57934424.pth,
  read here with Python's own unpickler, for two analytic 256x256 input images;
- `resnet18_golden.json`: ResNet-18 features (stem max-pooled, layer1..layer3) for weights
  given by a closed formula (no file needed: the Rust test builds the same tensors), for two
  analytic 128x128 images;
- `tiny_zip.pth`: a small torchvision-style zip checkpoint (strided and offset views, a
  LongStorage scalar) with the values it must load as in `tiny_zip.json`.

Every number is computed in float64 from float32 weights. The formulas for the input
images and the ResNet weights are repeated in training/tests/teacher_golden.rs.
"""

import collections
import io
import json
import math
import os
import pickle
import sys
import types
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
LITE0 = os.path.join(REPO, "third_party", "weights", "efficientnet-lite0-57934424.pth")


# ---------------------------------------------------------------- legacy torch pickle reader

class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


_STORAGE_TYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "DoubleStorage": np.float64}


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, size, stride)
        if module == "torch" and name in _STORAGE_TYPES:
            return _Storage(_STORAGE_TYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel, view_metadata)
        return {"type": pid[1], "key": pid[2], "numel": pid[4]}


def read_legacy_pth(path):
    with open(path, "rb") as f:
        magic = pickle.load(f)
        assert magic == 0x1950A86A20F9469CFC6C, "not a legacy torch file"
        assert pickle.load(f) == 1001
        sys_info = pickle.load(f)
        assert sys_info["little_endian"]
        state = _LegacyUnpickler(f).load()
        keys = pickle.load(f)
        storages = {}
        dtypes = {}
        for v in state.values():
            if isinstance(v, tuple) and v[0] == "tensor":
                dtypes[v[1]["key"]] = v[1]["type"].dtype
        for key in keys:
            (count,) = np.frombuffer(f.read(8), dtype="<u8")
            dt = np.dtype(dtypes.get(key, np.float32)).newbyteorder("<")
            storages[key] = np.frombuffer(f.read(int(count) * dt.itemsize), dtype=dt)
    out = {}
    for name, v in state.items():
        if not (isinstance(v, tuple) and v[0] == "tensor"):
            continue
        _, st, offset, size, stride = v
        data = storages[st["key"]]
        item = data.itemsize
        arr = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=[s * item for s in stride]
        )
        out[name] = np.array(arr)
    return out


# ---------------------------------------------------------------- numpy layers (C, H, W)

def conv2d(x, w, stride, pads, groups=1, bias=None):
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    k = w.shape[2]
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    if groups == 1:
        y = np.tensordot(w, win, axes=([1, 2, 3], [0, 3, 4]))
    else:
        assert groups == x.shape[0] == w.shape[0]
        y = np.einsum("ckl,chwkl->chw", w[:, 0], win, optimize=True)
    if bias is not None:
        y = y + bias[:, None, None]
    return y


def batch_norm(x, g, b, m, v, eps):
    return (x - m[:, None, None]) / np.sqrt(v[:, None, None] + eps) * g[:, None, None] + b[:, None, None]


def max_pool_3x3_s2_p1(x):
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))[:, ::2, ::2]
    return win.max(axis=(3, 4))


def same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


# ---------------------------------------------------------------- EfficientNet-Lite0

LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


def lite0_features(sd, x, last_block=10):
    def cbn(x, conv, bn, stride, groups=1):
        w = sd[conv + ".weight"].astype(np.float64)
        k = w.shape[2]
        t, b = same_pads(x.shape[1], k, stride)
        l, r = same_pads(x.shape[2], k, stride)
        y = conv2d(x, w, stride, (t, l, b, r), groups)
        p = {s: sd[f"{bn}.{s}"].astype(np.float64) for s in ("weight", "bias", "running_mean", "running_var")}
        return batch_norm(y, p["weight"], p["bias"], p["running_mean"], p["running_var"], 1e-3)

    relu6 = lambda v: np.clip(v, 0.0, 6.0)
    feats = {}
    x = relu6(cbn(x, "_conv_stem", "_bn0", 2))
    n = 0
    cin = 32
    for repeats, k, stride, expand, cout in LITE0_STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{n}"
            y = x
            if expand != 1:
                y = relu6(cbn(y, p + "._expand_conv", p + "._bn0", 1))
            y = relu6(cbn(y, p + "._depthwise_conv", p + "._bn1", s, groups=y.shape[0]))
            y = cbn(y, p + "._project_conv", p + "._bn2", 1)
            if s == 1 and cin == cout:
                y = y + x
            x = y
            cin = cout
            feats[n] = x
            if n == last_block:
                return feats
            n += 1
    return feats


# ---------------------------------------------------------------- ResNet-18, formula weights

def formula_values(name, n):
    """n values in [0, 1) from the tensor's name; mirrored in teacher_golden.rs."""
    h = sum(b * (i + 1) for i, b in enumerate(name.encode())) % 2**32
    k = np.arange(1, n + 1, dtype=np.uint64)
    v = (k * np.uint64(2654435761) + np.uint64(h) * np.uint64(40503)) % np.uint64(2**32)
    return v.astype(np.float64) / 2.0**32


def formula_tensor(name, shape):
    n = int(np.prod(shape))
    v = formula_values(name, n)
    if name.endswith("running_var"):
        a = 0.5 + v
    elif name.endswith("running_mean") or (name.endswith(".bias")):
        a = 0.2 * (v - 0.5)
    elif len(shape) == 1:  # BatchNorm weight
        a = 0.8 + 0.4 * v
    else:
        fan_in = int(np.prod(shape[1:]))
        a = (2.0 * v - 1.0) * math.sqrt(3.0) * math.sqrt(2.0 / fan_in)
    return a.astype(np.float32).reshape(shape)


def resnet18_formula_state():
    sd = {}

    def conv(name, cout, cin, k):
        sd[name + ".weight"] = formula_tensor(name + ".weight", (cout, cin, k, k))

    def bn(name, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{s}"] = formula_tensor(f"{name}.{s}", (c,))

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for layer, cout in enumerate([64, 128, 256], start=1):
        for b in range(2):
            p = f"layer{layer}.{b}"
            stride = 2 if (b == 0 and layer > 1) else 1
            conv(p + ".conv1", cout, cin, 3)
            bn(p + ".bn1", cout)
            conv(p + ".conv2", cout, cout, 3)
            bn(p + ".bn2", cout)
            if stride != 1 or cin != cout:
                conv(p + ".downsample.0", cout, cin, 1)
                bn(p + ".downsample.1", cout)
            cin = cout
    return sd


def resnet18_features(sd, x):
    def cbn(x, conv, bnn, stride, pad):
        w = sd[conv + ".weight"].astype(np.float64)
        y = conv2d(x, w, stride, (pad,) * 4)
        p = {s: sd[f"{bnn}.{s}"].astype(np.float64) for s in ("weight", "bias", "running_mean", "running_var")}
        return batch_norm(y, p["weight"], p["bias"], p["running_mean"], p["running_var"], 1e-5)

    relu = lambda v: np.maximum(v, 0.0)
    feats = {}
    x = relu(cbn(x, "conv1", "bn1", 2, 3))
    x = max_pool_3x3_s2_p1(x)
    feats["stem_pool"] = x
    cin = 64
    for layer, cout in enumerate([64, 128, 256], start=1):
        for b in range(2):
            p = f"layer{layer}.{b}"
            stride = 2 if (b == 0 and layer > 1) else 1
            y = relu(cbn(x, p + ".conv1", p + ".bn1", stride, 1))
            y = cbn(y, p + ".conv2", p + ".bn2", 1, 1)
            sc = cbn(x, p + ".downsample.0", p + ".downsample.1", stride, 0) if (stride != 1 or cin != cout) else x
            x = relu(y + sc)
            cin = cout
        feats[f"layer{layer}"] = x
    return feats


# ---------------------------------------------------------------- inputs and summaries

def analytic_image(n, h, w):
    """Normalised input image n (3, h, w); mirrored in teacher_golden.rs."""
    c = np.arange(3, dtype=np.float64)[:, None, None]
    y = np.arange(h, dtype=np.float64)[None, :, None] / h
    x = np.arange(w, dtype=np.float64)[None, None, :] / w
    img = 0.8 * np.sin(2 * np.pi * (3 * x + 2 * y + 0.25 * c + 0.5 * n)) + 0.2 * np.cos(
        2 * np.pi * (5 * x * y + c / 3.0))
    return img.astype(np.float32).astype(np.float64)


def summarise(name, f):
    c, h, w = f.shape
    samples = []
    for j in range(12):
        cc, yy, xx = (7 * j + 1) % c, (13 * j + 3) % h, (29 * j + 5) % w
        samples.append([cc, yy, xx, float(f[cc, yy, xx])])
    return {
        "name": name,
        "shape": [c, h, w],
        "rms": float(np.sqrt(np.mean(f * f))),
        "channel_means": [float(v) for v in f.mean(axis=(1, 2))],
        "samples": samples,
    }


def write_json(name, obj):
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    print("wrote", name)


# ---------------------------------------------------------------- tiny zip checkpoint

def write_tiny_zip():
    # Stand-ins so that pickle writes the globals torch's loader expects.
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    class LongStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise RuntimeError("stand-in")

    for cls in (FloatStorage, LongStorage):
        cls.__module__ = "torch"
        cls.__qualname__ = cls.__name__
        setattr(torch_mod, cls.__name__, cls)
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod
    sys.modules["torch"] = torch_mod
    sys.modules["torch._utils"] = utils_mod

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class StorageRef:
        def __init__(self, key, cls, data):
            self.key, self.cls, self.data = key, cls, data

    shared = np.arange(40, dtype=np.float32) * 0.5 - 3.0
    conv_w = (np.arange(2 * 3 * 2 * 2, dtype=np.float32) / 7.0).reshape(2, 3, 2, 2)
    count = np.array([17], dtype=np.int64)
    storages = [StorageRef("0", FloatStorage, conv_w), StorageRef("1", FloatStorage, shared),
                StorageRef("2", LongStorage, count)]
    state = collections.OrderedDict()
    state["conv.weight"] = Tensor(storages[0], 0, conv_w.shape, (12, 4, 2, 1))
    state["bn.weight"] = Tensor(storages[1], 4, (6,), (1,))  # a view at offset 4
    state["bn.bias"] = Tensor(storages[1], 10, (6,), (1,))
    state["fc.weight"] = Tensor(storages[1], 16, (3, 4), (1, 3))  # column-major view
    state["bn.num_batches_tracked"] = Tensor(storages[2], 0, (), ())

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, StorageRef):
                return ("storage", obj.cls, obj.key, "cpu", obj.data.size)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(state)
    path = os.path.join(HERE, "tiny_zip.pth")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
        z.writestr("archive/version", "3\n")
    print("wrote tiny_zip.pth")
    fc = np.lib.stride_tricks.as_strided(shared[16:], shape=(3, 4), strides=(4, 12))
    write_json("tiny_zip.json", {
        "conv.weight": {"shape": [2, 3, 2, 2], "values": conv_w.ravel().tolist()},
        "bn.weight": {"shape": [6], "values": shared[4:10].tolist()},
        "bn.bias": {"shape": [6], "values": shared[10:16].tolist()},
        "fc.weight": {"shape": [3, 4], "values": fc.ravel().tolist()},
    })


def main():
    import hashlib

    with open(LITE0, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    sd = read_legacy_pth(LITE0)
    taps = []
    for n in range(2):
        feats = lite0_features(sd, analytic_image(n, 256, 256))
        taps.append([
            summarise("block0_pool", max_pool_3x3_s2_p1(feats[0])),
            summarise("stage2", feats[2]),
            summarise("stage3", feats[4]),
            summarise("stage5", feats[10]),
        ])
    write_json("lite0_golden.json", {
        "backbone": "efficientnet-lite0",
        "weights_sha256": sha,
        "tensor_count": len(sd),
        "height": 256,
        "width": 256,
        "images": taps,
    })

    rsd = resnet18_formula_state()
    taps = []
    for n in range(2):
        feats = resnet18_features(rsd, analytic_image(n, 128, 128))
        taps.append([summarise(k, feats[k]) for k in ("stem_pool", "layer1", "layer2", "layer3")])
    write_json("resnet18_golden.json", {
        "backbone": "resnet18",
        "weights": "formula",
        "height": 128,
        "width": 128,
        "images": taps,
    })
    write_tiny_zip()


if __name__ == "__main__":
    main()
