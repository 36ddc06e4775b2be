"""The allocator setting that keeps a click's temporaries from page-faulting anew."""

import os
import subprocess
import sys

import pytest

from napari_sam._allocator import _glibc

# Clicks with vit_b's decoder and input size (behind a one-block encoder, on a random
# embedding): prints whether the setting took effect and the minor page faults per click.
CLICKS = """
import resource, torch
from napari_sam import SamPredictor
from napari_sam._allocator import keep_freed_memory_for_reuse
from napari_sam.model import SamConfig, build_sam
from napari_sam.predictor import ImageEmbedding

config = SamConfig(
    encoder_embed_dim=64, encoder_depth=1, encoder_num_heads=4, encoder_global_attn_indexes=(0,)
)
torch.manual_seed(0)
predictor = SamPredictor(build_sam(config))
features = torch.randn(1, 256, 64, 64).contiguous(memory_format=torch.channels_last)
predictor.image_embedding = ImageEmbedding(features, (1024, 1024), (1024, 1024))
for _ in range(3):
    predictor.predict(points=[[500, 500]])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(10):
    predictor.predict(points=[[100 + 80 * i, 500]])
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(keep_freed_memory_for_reuse(), faults)
"""


def clicks(**env) -> tuple[bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", CLICKS],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", float(out[1])


glibc = pytest.mark.skipif(not _glibc(), reason="the setting exists for glibc only")


@glibc
def test_clicks_reuse_freed_memory_instead_of_faulting_new_pages():
    tuned, faults = clicks()
    assert tuned
    assert faults < 1000  # the 3 full-size masks alone are 12 MB = 3072 fresh pages


@glibc
def test_the_allocator_can_be_left_alone():
    tuned, faults = clicks(NAPARI_SAM_KEEP_MALLOC="1")
    assert not tuned
    assert faults > 1000  # glibc's defaults: 2,300 to 7,000 per click measured
