"""Writes microsam_ais_reference.npz: micro-sam's own outputs for the parity tests of
`napari_sam.model.instance_decoder` and `napari_sam.automatic.instances`.

Needs micro_sam (1.8.x) and torch-em from PyPI, which CI does not install (their
dependency tree pins napari<0.10 and pulls trackastra, bioimageio.core, ...). Run:

    pip install --no-deps --target /tmp/msdeps micro_sam torch_em bioimage-cpp \
        python-elf zarr numcodecs donfig google-crc32c kornia kornia_rs timm natsort \
        matplotlib pyparsing cycler scikit-learn joblib threadpoolctl kiwisolver \
        fonttools contourpy narwhals
    PYTHONPATH=/tmp/msdeps python tests/automatic/data/make_microsam_reference.py

What it stores (seeded, so a rerun gives the same file):
- For micro-sam's decoder (`DecoderAdapter` over torch-em's `UNETR`, built as micro-sam's
  `get_unetr` builds it, at reduced widths: embedding 32 channels, 8 initial features),
  in both upsampling variants: random weights (batch-norm statistics included), an
  embedding, and micro-sam's output resized to a 100 x 75 image.
- The key names and shapes of the full-size decoders (vit_b: 256 channels, 64 features).
- Maps made from a label image of touching and separate discs, with noise, and
  micro-sam's `InstanceSegmentationWithDecoder.generate` labels for three settings.
"""

import json
from pathlib import Path

import numpy as np
import torch
from micro_sam.instance_segmentation import DecoderAdapter, InstanceSegmentationWithDecoder
from scipy import ndimage
from segment_anything.modeling import ImageEncoderViT
from torch_em.model import UNETR

OUT = Path(__file__).with_name("microsam_ais_reference.npz")
SETTINGS = [
    {},
    {"center_distance_threshold": 0.4, "boundary_distance_threshold": 0.6, "min_size": 30},
    {"foreground_threshold": 0.3, "foreground_smoothing": 0.0, "distance_smoothing": 0.8},
]


def unetr(embed_dim, initial, transposed, img_size):
    encoder = ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=32, depth=1,
                              num_heads=2, out_chans=embed_dim, window_size=0)
    return UNETR(backbone="sam", encoder=encoder, out_channels=3, use_sam_stats=True,
                 final_activation="Sigmoid", use_skip_connection=False, resize_input=True,
                 use_conv_transpose=transposed, initial_features=initial)


def randomised(model, generator):
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder"):
            continue
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        else:
            fan = value[0].numel() if value.ndim > 1 else 10
            state[key] = torch.randn(value.shape, generator=generator) / fan**0.5
    model.load_state_dict(state, strict=False)
    return state


def discs():
    rows, cols = np.mgrid[:160, :200]
    labels = np.zeros((160, 200), np.int32)
    centres = [(40, 40, 18), (40, 74, 17), (110, 60, 22), (100, 140, 25), (40, 150, 12),
               (135, 175, 10), (70, 105, 9)]
    for i, (r, c, radius) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = i
    return labels


def maps_of(labels, rng):
    foreground = (labels > 0).astype(np.float32)
    center = np.ones(labels.shape, np.float32)
    boundary = np.ones(labels.shape, np.float32)
    for i in range(1, labels.max() + 1):
        inside = labels == i
        r, c = ndimage.center_of_mass(inside)
        rows, cols = np.nonzero(inside)
        d = np.hypot(rows - r, cols - c)
        center[rows, cols] = d / d.max()
        edt = ndimage.distance_transform_edt(inside)[rows, cols]
        boundary[rows, cols] = 1 - edt / edt.max()
    noisy = [m + rng.normal(0, 0.15, m.shape).astype(np.float32)
             for m in (foreground, center, boundary)]
    return np.clip(np.stack(noisy), 0, 1).astype(np.float32)


def main():
    out = {}
    generator = torch.Generator().manual_seed(0)
    for transposed in (False, True):
        tag = "transposed" if transposed else "bilinear"
        model = unetr(32, 8, transposed, img_size=128)
        state = randomised(model, generator)
        decoder = DecoderAdapter(model).eval()
        embedding = torch.randn((1, 32, 8, 8), generator=generator)
        with torch.no_grad():
            output = decoder(embedding, (128, 96), (100, 75))
        for key, value in state.items():
            out[f"{tag}/state/{key}"] = value.numpy()
        out[f"{tag}/embedding"] = embedding.numpy()
        out[f"{tag}/output"] = output[0].numpy()
        full = unetr(256, 64, transposed, img_size=1024)
        shapes = {k: list(v.shape) for k, v in full.state_dict().items()
                  if not k.startswith("encoder")}
        out[f"{tag}/full_shapes"] = np.array(json.dumps(shapes))
    maps = maps_of(discs(), np.random.default_rng(0))
    out["maps"] = maps
    segmenter = InstanceSegmentationWithDecoder(predictor=None, decoder=None)
    segmenter._foreground, segmenter._center_distances, segmenter._boundary_distances = maps
    segmenter._is_initialized = True
    for i, setting in enumerate(SETTINGS):
        out[f"labels/{i}"] = segmenter.generate(**setting).astype(np.int32)
    out["settings"] = np.array(json.dumps(SETTINGS))
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
