#!/usr/bin/env python3
"""The baseline `cargo bench --bench precision` compares the element with: A-VAE purification
written the way a new user would write it in Python, with onnxruntime and numpy, on the same
bundle.

    .venv/bin/python benches/python_loop.py --bundle models/avae-cpu --samples 16 --faces 32

The faces are encoded in one call, then each face has M latents drawn from its posterior
(KL clip at the bundle's tau, as the element does), decoded in one batched call of M, and the
candidate nearest to the input (pixel L2) is kept. The faces are random pixels: the cost does
not depend on what they show. After a warm-up on as many faces it prints one line,
`python-loop samples=M faces=N decoder=FILE ms/face=X`, and the same as JSON on the next line.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

try:
    import onnxruntime as ort
except ImportError as err:
    sys.exit(f"python_loop.py: {err}; install it with "
             "`.venv/bin/python -m pip install -r scripts/requirements.txt`")


def purify(encoder, decoder, faces, samples, tau, rng):
    """Purifies `faces` ([N,3,S,S] in [-1,1]); returns the nearest candidate of each."""
    mu, logvar, skip = encoder.run(None, {"face": faces})
    lv = np.clip(logvar, -30.0, 30.0)
    sigma = np.exp(0.5 * lv)
    d = mu.shape[1]
    radius_sq = 2.0 * d * (tau - (np.exp(lv) - 1.0 - lv).sum(axis=1) / (2.0 * d))
    out = np.empty_like(faces)
    for i in range(len(faces)):
        if radius_sq[i] < 0:
            z = np.repeat(mu[i:i + 1], samples, axis=0)
        else:
            z = mu[i] + sigma[i] * rng.standard_normal((samples, d), dtype=np.float32)
            norm_sq = (z * z).sum(axis=1)
            scale = np.sqrt(np.minimum(1.0, radius_sq[i] / np.maximum(norm_sq, 1e-30)))
            z = (z * scale[:, None]).astype(np.float32)
        batch_skip = np.repeat(skip[i:i + 1], samples, axis=0)
        candidates = decoder.run(None, {"z": z, "skip": batch_skip})[0]
        distance = ((candidates - faces[i]) ** 2).reshape(samples, -1).sum(axis=1)
        out[i] = candidates[distance.argmin()]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="model bundle folder")
    p.add_argument("--samples", type=int, default=16, help="M, latents per face")
    p.add_argument("--faces", type=int, default=32, help="faces timed (after a warm-up on as many)")
    p.add_argument("--decoder", help="decoder graph file in the bundle (default: the "
                                     "manifest's decoder)")
    args = p.parse_args()
    if args.samples < 1 or args.faces < 1:
        sys.exit("python_loop.py: --samples and --faces must be at least 1")
    try:
        with open(os.path.join(args.bundle, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        sys.exit(f"python_loop.py: cannot read the bundle's manifest.json: {err}")
    decoder_file = args.decoder or manifest["graphs"]["decoder"]["file"]
    cpu = ["CPUExecutionProvider"]
    encoder = ort.InferenceSession(
        os.path.join(args.bundle, manifest["graphs"]["encoder"]["file"]), providers=cpu)
    decoder = ort.InferenceSession(os.path.join(args.bundle, decoder_file), providers=cpu)
    s, tau = manifest["image_size"], float(manifest["tau"])
    rng = np.random.default_rng(0)
    faces = rng.uniform(-1.0, 1.0, (2 * args.faces, 3, s, s)).astype(np.float32)
    # Warm-up on as many faces as are timed: the same shapes, so the timed run pays no
    # first-call costs (allocations of a new batch size) that a long-running loop would not.
    purify(encoder, decoder, faces[:args.faces], args.samples, tau, rng)
    start = time.perf_counter()
    purify(encoder, decoder, faces[args.faces:], args.samples, tau, rng)
    ms = (time.perf_counter() - start) * 1000.0 / args.faces
    print(f"python-loop samples={args.samples} faces={args.faces} decoder={decoder_file} "
          f"ms/face={ms:.2f}")
    print(json.dumps({"samples": args.samples, "faces": args.faces, "decoder": decoder_file,
                      "ms_per_face": round(ms, 3)}))


if __name__ == "__main__":
    main()
