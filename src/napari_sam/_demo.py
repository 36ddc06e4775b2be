"""`napari-sam demo`: napari with a sample image and the Segment Anything widget docked.

The model is the first one already in the model cache (no download at start); without
one, a tiny randomly initialised model lets you try the clicks, the picker and the
commit at once (its masks mean nothing: press Load on a real model, e.g. vit_b).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

WIDGET = ("napari-sam-labeler", "Segment Anything")


def first_cached_model() -> str | None:
    from .zoo import cached_path, registry

    for name, entry in registry().items():
        try:
            if cached_path(entry).is_file():
                return name
        except OSError:
            continue
    return None


def tiny_random_model():
    """A small SAM with random weights (256 px input): instant, for trying the interface."""
    import torch

    from .model import SamConfig, build_sam

    torch.manual_seed(0)
    config = SamConfig(
        encoder_embed_dim=64,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        img_size=256,
        window_size=5,
        prompt_embed_dim=64,
        decoder_mlp_dim=128,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    )
    model = build_sam(config).eval()
    model.name = "tiny (random weights)"
    return model


def open_demo(viewer, model: str | None = None, stack: bool = False):
    """Add the sample data and the docked widget to `viewer`; returns the widget."""
    from ._sample_data import sample_image, sample_stack

    for data, kwargs, _ in sample_stack() if stack else sample_image():
        viewer.add_image(data, **kwargs)
    _dock, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    name = model or first_cached_model()
    widget.set_model(name if name else tiny_random_model(), wait=True)
    widget.compute_embedding(wait=False)
    return widget


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="napari-sam demo", description=__doc__)
    parser.add_argument("--model", help="zoo name or checkpoint (default: first cached)")
    parser.add_argument("--stack", action="store_true", help="open the 3D sample stack")
    args = parser.parse_args(argv)

    import napari

    viewer = napari.Viewer(title="napari-sam-labeler demo")
    open_demo(viewer, args.model, args.stack)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
