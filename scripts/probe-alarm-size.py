#!/usr/bin/env python3
"""Probe behind the README table "How much more" (Attack alarm): the alarm's log band ratio
(finest band over the next, 3x3 box means) over the central 40% of 300 random LFW photos after an
area downscale, against the shipped native threshold. Needs numpy and pillow (not in the
project venv): python3 -m venv /tmp/pyx && /tmp/pyx/bin/pip install numpy pillow &&
/tmp/pyx/bin/python scripts/probe-alarm-size.py [LFW_DIR]. A probe, not the element: edge-
replicated box means, the photo's centre instead of the aligned face region."""
import sys
import glob, random, numpy as np
from PIL import Image
random.seed(0)
files = sorted(glob.glob((sys.argv[1] if len(sys.argv) > 1 else '../shared/datasets/lfw') + '/**/*.jpg', recursive=True))
random.shuffle(files); files = files[:300]
def box3(a):
    p = np.pad(a, ((1,1),(1,1),(0,0)), mode='edge')
    # edge-replicated 3x3 mean (the plugin counts inside pixels only; close enough for a probe)
    return sum(p[dy:dy+a.shape[0], dx:dx+a.shape[1]] for dy in range(3) for dx in range(3)) / 9.0
def ratio(img, frac=0.4):
    a = np.asarray(img, dtype=np.float32) / 127.5
    h, w, _ = a.shape
    b = box3(a); bb = box3(b)
    y0, y1 = int(h*(0.5-frac/2)), int(h*(0.5+frac/2))
    x0, x1 = int(w*(0.5-frac/2)), int(w*(0.5+frac/2))
    fine = ((a-b)[y0:y1, x0:x1]**2).mean(); mid = ((b-bb)[y0:y1, x0:x1]**2).mean()
    return np.log(fine/mid)
thr = 1.1163465 + 2.8030128 * 0.17669955
print(f"threshold on ln(fine/mid): {thr:.3f}")
print("scale | face width px (about) | mean | std | over threshold")
for s in [1.0, 0.75, 0.5, 0.35, 0.25]:
    r = []
    for f in files:
        im = Image.open(f).convert('RGB')
        if s != 1.0:
            im = im.resize((round(250*s), round(250*s)), Image.BOX)
        r.append(ratio(im))
    r = np.array(r)
    print(f"{s:5} | {round(100*s):4} | {r.mean():.3f} | {r.std():.3f} | {(r>thr).mean():.3f}")
