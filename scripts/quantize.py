#!/usr/bin/env python3
"""Adds an int8 decoder (`decoder-int8.onnx`) to an A-VAE model bundle.

    .venv/bin/python scripts/quantize.py models/avae-cpu [--data ~/avae-runs/data]

What it does, in order (README, "Precision"):

1. Rewrites the bundle's fp32 `decoder.onnx` into the same function with fewer nodes: each
   instance norm written as ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div becomes one
   `InstanceNormalization`, each nearest 2x upsampling written as Reshape/Concat/Concat/Reshape
   becomes one `Resize` (nearest, floor). The rewrite is checked against the original
   (max abs difference <= 1e-4) before going on.
2. Calibrates on real decoder inputs: training-split faces of the crop cache written by
   `trainer prepare` (never the test split, whose people are fold 1 of pairs.txt) go through the
   bundle's encoder, and latents are drawn from each posterior with the element's KL clip at the
   bundle's tau (`src/core/latent.rs`).
3. Quantizes the convolutions to int8 in QDQ form with ONNX Runtime's static quantizer
   (per-channel signed weights, unsigned activations, ranges at the 99.999th percentile of
   the calibration activations): on x86 ONNX Runtime runs them as QLinearConv with VNNI dot
   products where the CPU has them. Everything else stays fp32.
4. Measures the int8 decoder against fp32 on test-split faces (the same latents through both):
   PSNR of the candidates, and PSNR of the nearest-of-M output against the input for both.
   Refuses to write a decoder whose candidates are below --min-psnr dB of fp32.
5. Writes `decoder-int8.onnx` into the bundle and records it in `manifest.json`:
   `graphs.decoder_int8` (file, sha256) and `provenance.decoder_int8` (the fp32 decoder's sha256
   it was made from, the calibration and the quality figures). The element uses it only while
   that sha256 matches the bundle's decoder, so a retrained bundle needs this command again.

Needs the venv of scripts/setup.sh (onnxruntime, onnx, numpy).
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

try:
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
except ImportError as err:  # pragma: no cover - message for a venv without the tools
    sys.exit(f"quantize.py: {err}; install the tools with "
             "`.venv/bin/python -m pip install -r scripts/requirements.txt`")

INT8_FILE = "decoder-int8.onnx"
LOGVAR_LIMIT = 30.0


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def load_faces(data_dir, size):
    """The crop cache of `trainer prepare`: (faces u8 [N,3,S,S], splits list)."""
    index_path = os.path.join(data_dir, f"lfw-{size}.json")
    bin_path = os.path.join(data_dir, f"lfw-{size}.bin")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except OSError as err:
        sys.exit(f"quantize.py: cannot read the crop cache index {index_path} ({err}); "
                 f"run `trainer prepare --size {size} --out {data_dir}` first or pass --data DIR")
    if index.get("size") != size:
        sys.exit(f"quantize.py: {index_path} holds {index.get('size')}px crops, the bundle "
                 f"needs {size}px")
    pixels = np.fromfile(bin_path, dtype=np.uint8)
    n = len(index["images"])
    if pixels.size != n * 3 * size * size:
        sys.exit(f"quantize.py: {bin_path} holds {pixels.size} bytes, expected {n} crops of "
                 f"3x{size}x{size} (run `trainer prepare` again)")
    splits = [e["split"] for e in index["images"]]
    return pixels.reshape(n, 3, size, size), splits


def to_unit(faces_u8):
    return faces_u8.astype(np.float32) / 127.5 - 1.0


def sample_latents(mu, logvar, tau, draws, rng):
    """z = mu + sigma * eps, projected onto the KL ball of `tau` (src/core/latent.rs)."""
    lv = np.clip(logvar.astype(np.float64), -LOGVAR_LIMIT, LOGVAR_LIMIT)
    d = mu.shape[1]
    k0 = (np.exp(lv) - 1.0 - lv).sum(axis=1) / (2.0 * d)
    r2 = 2.0 * d * (tau - k0)
    sigma = np.exp(0.5 * lv).astype(np.float32)
    out = []
    for i in range(mu.shape[0]):
        if r2[i] < 0:
            out.append(np.repeat(mu[i:i + 1], draws, axis=0))
            continue
        z = mu[i] + sigma[i] * rng.standard_normal((draws, d)).astype(np.float32)
        norm2 = (z.astype(np.float64) ** 2).sum(axis=1)
        scale = np.where(norm2 > r2[i], np.sqrt(r2[i] / np.maximum(norm2, 1e-30)), 1.0)
        out.append((z * scale[:, None]).astype(np.float32))
    return np.concatenate(out, axis=0)


def decoder_inputs(encoder, faces, tau, draws, rng, chunk=64):
    """Encodes `faces` ([N,3,S,S] in [-1,1]) and draws `draws` latents per face: (z, skip)."""
    zs, skips = [], []
    for start in range(0, len(faces), chunk):
        mu, logvar, skip = encoder.run(None, {"face": faces[start:start + chunk]})
        zs.append(sample_latents(mu, logvar, tau, draws, rng))
        skips.append(np.repeat(skip, draws, axis=0))
    return np.concatenate(zs), np.concatenate(skips)


# ---------------------------------------------------------------------------------------------
# Graph rewrite (same function, fewer nodes)


def consumers(graph):
    use = {}
    for node in graph.node:
        for name in node.input:
            use.setdefault(name, []).append(node)
    return use


def constant_value(graph, name):
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def only(use, name, op_type):
    nodes = list({id(n): n for n in use.get(name, [])}.values())
    return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type else None


def fuse_instance_norms(model):
    """ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div over axes (2, 3) -> InstanceNormalization."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    use = consumers(graph)
    drop, add, fused = set(), [], 0
    for mean in list(graph.node):
        if mean.op_type != "ReduceMean" or id(mean) in drop:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in mean.attribute}
        if list(attrs.get("axes", [])) != [2, 3] or attrs.get("keepdims", 1) != 1:
            continue
        x = mean.input[0]
        sub = only(use, mean.output[0], "Sub")
        if sub is None or list(sub.input) != [x, mean.output[0]]:
            continue
        sq = next((n for n in use.get(sub.output[0], [])
                   if n.op_type == "Mul" and list(n.input) == [sub.output[0]] * 2), None)
        div = next((n for n in use.get(sub.output[0], []) if n.op_type == "Div"), None)
        if sq is None or div is None or len(use[sub.output[0]]) != 3:
            continue
        var = only(use, sq.output[0], "ReduceMean")
        add_eps = var and only(use, var.output[0], "Add")
        sqrt = add_eps and only(use, add_eps.output[0], "Sqrt")
        if sqrt is None or div.input[1] != sqrt.output[0]:
            continue
        eps = constant_value(graph, add_eps.input[1])
        conv = producers.get(x)
        if eps is None or eps.size != 1 or conv is None or conv.op_type != "Conv":
            continue
        channels = constant_value(graph, conv.input[1]).shape[0]
        tag = f"instnorm_{fused}"
        graph.initializer.extend([
            numpy_helper.from_array(np.ones(channels, np.float32), f"{tag}.scale"),
            numpy_helper.from_array(np.zeros(channels, np.float32), f"{tag}.bias"),
        ])
        add.append((div, helper.make_node(
            "InstanceNormalization", [x, f"{tag}.scale", f"{tag}.bias"], [div.output[0]],
            name=tag, epsilon=float(eps.reshape(-1)[0]))))
        drop.update(id(n) for n in (mean, sub, sq, var, add_eps, sqrt, div))
        fused += 1
    replace_nodes(graph, drop, add)
    return fused


def fuse_nearest_upsamples(model):
    """Reshape [0,0,0,1,-1,1] / Concat axis 5 / Concat axis 3 / Reshape -> Resize nearest 2x."""
    graph = model.graph
    use = consumers(graph)
    drop, add, fused = set(), [], 0
    for first in list(graph.node):
        if first.op_type != "Reshape":
            continue
        shape = constant_value(graph, first.input[1])
        if shape is None or list(shape) != [0, 0, 0, 1, -1, 1]:
            continue
        cat5 = only(use, first.output[0], "Concat")
        cat3 = cat5 and only(use, cat5.output[0], "Concat")
        last = cat3 and only(use, cat3.output[0], "Reshape")
        if last is None:
            continue
        axis = lambda n: helper.get_attribute_value(n.attribute[0])  # noqa: E731
        if (list(cat5.input) != [first.output[0]] * 2 or axis(cat5) != 5
                or list(cat3.input) != [cat5.output[0]] * 2 or axis(cat3) != 3):
            continue
        tag = f"upsample_{fused}"
        graph.initializer.append(
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), f"{tag}.scales"))
        add.append((last, helper.make_node(
            "Resize", [first.input[0], "", f"{tag}.scales"], [last.output[0]], name=tag,
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")))
        drop.update(id(n) for n in (first, cat5, cat3, last))
        fused += 1
    replace_nodes(graph, drop, add)
    return fused


def replace_nodes(graph, drop, add):
    """Removes the nodes in `drop` (by id); each new node goes where its anchor node was."""
    anchors = {id(anchor): node for anchor, node in add}
    kept = []
    for node in graph.node:
        if id(node) in anchors:
            kept.append(anchors[id(node)])
        elif id(node) not in drop:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)


# ---------------------------------------------------------------------------------------------


def session(path_or_bytes, threads=0):
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def run_decoder(sess, z, skip, chunk=32):
    return np.concatenate([
        sess.run(None, {"z": z[i:i + chunk], "skip": skip[i:i + chunk]})[0]
        for i in range(0, len(z), chunk)
    ])


def psnr(a, b):
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), per image then averaged."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(4.0 / np.maximum(mse, 1e-12))))


def nearest(candidates, faces, m):
    """The candidate nearest (pixel L2) to each face, candidates grouped by face, m per face."""
    c = candidates.reshape(len(faces), m, *faces.shape[1:])
    d = ((c - faces[:, None]) ** 2).reshape(len(faces), m, -1).sum(axis=2)
    return c[np.arange(len(faces)), d.argmin(axis=1)]


class Reader(CalibrationDataReader):
    def __init__(self, z, skip, chunk=32):
        self.z, self.skip, self.chunk, self.pos = z, skip, chunk, 0

    def get_next(self):
        if self.pos >= len(self.z):
            return None
        s = slice(self.pos, self.pos + self.chunk)
        self.pos += self.chunk
        return {"z": self.z[s], "skip": self.skip[s]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle folder (manifest.json, encoder.onnx, decoder.onnx)")
    p.add_argument("--data", default=os.path.expanduser("~/avae-runs/data"),
                   help="crop cache of `trainer prepare` (default ~/avae-runs/data)")
    p.add_argument("--faces", type=int, default=256, help="training faces to calibrate on")
    p.add_argument("--draws", type=int, default=4, help="latents drawn per calibration face")
    p.add_argument("--check-faces", type=int, default=128, help="test-split faces to check on")
    p.add_argument("--check-samples", type=int, default=16, help="M for the nearest-of-M check")
    p.add_argument("--min-psnr", type=float, default=30.0,
                   help="refuse an int8 decoder whose candidates are below this PSNR (dB) "
                        "against fp32")
    p.add_argument("--calibration", choices=["minmax", "percentile", "entropy"],
                   default="percentile",
                   help="how activation ranges are set (default percentile: 99.999 %%)")
    p.add_argument("--int8-bundle", metavar="DIR",
                   help="also write a copy of the bundle whose decoder.onnx entry is the int8 "
                        "graph, for tools that always run the decoder (trainer eval --lab)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    manifest_path = os.path.join(args.bundle, "manifest.json")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        sys.exit(f"quantize.py: cannot read {manifest_path}: {err}")
    graphs = manifest["graphs"]
    dec_path = os.path.join(args.bundle, graphs["decoder"]["file"])
    enc_path = os.path.join(args.bundle, graphs["encoder"]["file"])
    dec_sha = sha256_file(dec_path)
    if dec_sha != graphs["decoder"]["sha256"]:
        sys.exit(f"quantize.py: {dec_path} has sha256 {dec_sha}, manifest says "
                 f"{graphs['decoder']['sha256']} (corrupt or replaced decoder)")
    size, tau = manifest["image_size"], float(manifest["tau"])
    t0 = time.time()

    faces_u8, splits = load_faces(args.data, size)
    rng = np.random.default_rng(args.seed)
    train = np.array([i for i, s in enumerate(splits) if s == "train"])
    test = np.array([i for i, s in enumerate(splits) if s == "test"])
    calib_idx = np.sort(rng.choice(train, size=min(args.faces, len(train)), replace=False))
    check_idx = np.sort(rng.choice(test, size=min(args.check_faces, len(test)), replace=False))
    encoder = session(enc_path)
    z_cal, skip_cal = decoder_inputs(encoder, to_unit(faces_u8[calib_idx]), tau, args.draws, rng)
    print(f"calibration: {len(calib_idx)} training faces x {args.draws} latents "
          f"(tau {tau:.4g}) -> {len(z_cal)} decoder inputs")

    model = onnx.load(dec_path)
    norms = fuse_instance_norms(model)
    ups = fuse_nearest_upsamples(model)
    onnx.checker.check_model(model)
    fp32 = session(dec_path)
    rewritten = session(model.SerializeToString())
    probe = slice(0, 64)
    ref = run_decoder(fp32, z_cal[probe], skip_cal[probe])
    err = float(np.abs(run_decoder(rewritten, z_cal[probe], skip_cal[probe]) - ref).max())
    print(f"rewrite: {norms} instance norms, {ups} upsamplings fused; "
          f"max abs difference to decoder.onnx {err:.2e}")
    if err > 1e-4:
        sys.exit("quantize.py: the rewritten decoder does not match decoder.onnx (> 1e-4)")

    out_path = os.path.join(args.bundle, INT8_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        rewritten_path = os.path.join(tmp, "decoder-rewritten.onnx")
        onnx.save(model, rewritten_path)
        staged = os.path.join(tmp, INT8_FILE)
        quantize_static(
            rewritten_path, staged, Reader(z_cal, skip_cal),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax,
                              "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[args.calibration])
        # Drop the quantizer's inferred intermediate shapes: their symbolic batch dims
        # conflict with tract's own analysis, and neither engine needs them.
        quantized = onnx.load(staged)
        del quantized.graph.value_info[:]
        onnx.save(quantized, staged)
        int8 = session(staged)

        m = args.check_samples
        check_faces = to_unit(faces_u8[check_idx])
        z_chk, skip_chk = decoder_inputs(encoder, check_faces, tau, m, rng)
        cand32 = run_decoder(fp32, z_chk, skip_chk)
        cand8 = run_decoder(int8, z_chk, skip_chk)
        figures = {
            "candidates_psnr_vs_fp32_db": round(psnr(cand8, cand32), 2),
            "nearest_psnr_vs_input_db": {
                "fp32": round(psnr(nearest(cand32, check_faces, m), check_faces), 2),
                "int8": round(psnr(nearest(cand8, check_faces, m), check_faces), 2),
            },
            "check": f"{len(check_idx)} test-split faces, M = {m}, same latents",
        }
        print(f"check on {len(check_idx)} test-split faces, M = {m}: int8 candidates "
              f"{figures['candidates_psnr_vs_fp32_db']} dB PSNR against fp32; nearest-of-{m} "
              f"against the input: fp32 {figures['nearest_psnr_vs_input_db']['fp32']} dB, "
              f"int8 {figures['nearest_psnr_vs_input_db']['int8']} dB")
        if figures["candidates_psnr_vs_fp32_db"] < args.min_psnr:
            sys.exit(f"quantize.py: int8 candidates are {figures['candidates_psnr_vs_fp32_db']} "
                     f"dB from fp32, below --min-psnr {args.min_psnr}; nothing written")
        os.replace(staged, out_path)

    graphs["decoder_int8"] = {"file": INT8_FILE, "sha256": sha256_file(out_path)}
    manifest.setdefault("provenance", {})["decoder_int8"] = {
        "decoder_sha256": dec_sha,
        "method": "ONNX Runtime static quantization, QDQ, Conv only, per-channel int8 weights, "
                  f"uint8 activations, {args.calibration} ranges; instance norms and nearest "
                  "upsamplings fused",
        "calibration": f"{len(calib_idx)} training-split faces of {args.data} x {args.draws} "
                       f"latents (KL clip at tau {tau:.4g}), seed {args.seed}",
        "onnxruntime": ort.__version__,
        "command": f"scripts/quantize.py {args.bundle}",
        **figures,
    }
    staged_manifest = manifest_path + ".tmp"
    with open(staged_manifest, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(staged_manifest, manifest_path)
    print(f"wrote {out_path} and graphs.decoder_int8 in {manifest_path} "
          f"({time.time() - t0:.0f} s)")
    if args.int8_bundle:
        write_int8_bundle(args.bundle, manifest, args.int8_bundle)


def write_int8_bundle(src, manifest, dst):
    """A copy of the bundle `src` whose `decoder` is the int8 graph (and no fused purifier)."""
    os.makedirs(dst, exist_ok=True)
    graphs = manifest["graphs"]
    for entry in (graphs["encoder"], graphs["decoder_int8"]):
        shutil.copyfile(os.path.join(src, entry["file"]), os.path.join(dst, entry["file"]))
    derived = json.loads(json.dumps(manifest))
    derived["graphs"] = {"encoder": graphs["encoder"], "decoder": graphs["decoder_int8"]}
    derived["provenance"]["decoder_int8"]["int8_bundle_of"] = os.path.abspath(src)
    del derived["provenance"]["decoder_int8"]["decoder_sha256"]
    with open(os.path.join(dst, "manifest.json"), "w") as f:
        json.dump(derived, f, indent=2)
        f.write("\n")
    print(f"wrote {dst}: the bundle with decoder-int8.onnx as its decoder")


if __name__ == "__main__":
    main()
