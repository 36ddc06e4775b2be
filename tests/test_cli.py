"""The `napari-sam` command, through its installed entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from napari_sam.zoo import CACHE_ENV, get_entry, register, unregister
from tests.zoo.helpers import CheckpointServer, entry_for, tiny_state


@pytest.fixture
def main():
    """The function the `napari-sam` console script calls, found as installers find it."""
    (script,) = entry_points(group="console_scripts", name="napari-sam")
    assert script.value == "napari_sam.cli:main"
    return script.load()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    torch.save(tiny_state(seed=2), folder / "tiny.pt")
    server = CheckpointServer(folder)
    register(entry_for("test_cli", folder / "tiny.pt", server.url("tiny.pt")))
    register(entry_for("test_cli_404", folder / "tiny.pt", server.url("gone.pt")))
    yield server
    unregister("test_cli")
    unregister("test_cli_404")
    server.stop()


def test_models_lists_names_sizes_licences_and_cache_state(main, server, cache, capsys):
    cache.mkdir()
    # Under vit_b's name, a file that is not Meta's (another release, a re-saved copy).
    (cache / get_entry("vit_b").filename).write_bytes(b"placed by hand")
    shutil.copy(server.folder / "tiny.pt", cache / get_entry("test_cli").filename)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in ("vit_b", "vit_l", "vit_h", "vit_b_lm", "vit_l_em_organelles"):
        assert name in lines
    assert "375 MB" in lines["vit_b"] and "Apache-2.0" in lines["vit_b"]
    assert "  no (file differs)  " in lines["vit_b"]
    assert lines["test_cli"].split()[4] == "yes"  # the published file, verified
    assert lines["vit_h"].split()[4:6] == ["no", "Meta's"]
    assert "file differs: a file of the model's name" in out
    assert "2.6 GB" in lines["vit_h"]
    assert "MIT" in lines["vit_b_lm"]
    assert str(cache) in out


def test_download(main, server, cache, capsys):
    assert main(["download", "--quiet", "test_cli"]) == 0
    path = cache / get_entry("test_cli").filename
    assert path.read_bytes() == (server.folder / "tiny.pt").read_bytes()
    assert str(path) in capsys.readouterr().out


def test_download_shows_progress_by_default(main, server, capsys):
    assert main(["download", "test_cli"]) == 0
    assert "100%" in capsys.readouterr().err


def test_download_failures(main, server, cache, capsys):
    assert main(["download", "test_cli", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "no_such_model" in err and "vit_b" in err
    assert not cache.exists()  # names are checked before anything is downloaded

    assert main(["download", "-q", "test_cli_404", "test_cli"]) == 1
    captured = capsys.readouterr()
    assert "HTTP 404" in captured.err and server.url("gone.pt") in captured.err
    assert "test_cli:" in captured.out  # the other model was still downloaded


def test_download_keeps_a_file_that_differs_and_says_where(main, server, cache, capsys):
    path = cache / get_entry("test_cli").filename
    cache.mkdir()
    path.write_bytes(b"placed by hand")
    assert main(["download", "-q", "test_cli"]) == 0
    captured = capsys.readouterr()
    assert path.read_bytes() == (server.folder / "tiny.pt").read_bytes()
    kept = path.with_name(path.name + ".unverified")
    assert kept.read_bytes() == b"placed by hand"
    assert f"napari-sam: {path} was not the published file" in captured.err
    assert str(kept) in captured.err
    assert f"test_cli: {path}" in captured.out


def test_info(main, cache, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out
    assert "cpu" in out
    assert str(cache) in out


def test_usage_errors(main, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        main(["download"])
    assert "NAME" in capsys.readouterr().err


def test_installed_script_runs(cache):
    script = Path(sys.executable).parent / "napari-sam"
    env = {**os.environ, CACHE_ENV: str(cache)}
    result = subprocess.run(
        [str(script), "info"], env=env, capture_output=True, text=True, check=True
    )
    assert str(cache) in result.stdout


def test_segment_two_files_a_16_bit_tiff_and_an_rgb_png(main, tmp_path, capsys):
    import numpy as np
    import tifffile
    from PIL import Image
    from skimage import data

    from napari_sam import load_model, segment_everything

    gray = (data.coins()[:128, :160].astype(np.uint16) * 257)  # 16 bit
    rgb = data.astronaut()[::4, ::4]  # (128, 128, 3) uint8
    tifffile.imwrite(tmp_path / "coins.tif", gray)
    Image.fromarray(rgb).save(tmp_path / "astronaut.png")
    inputs = [str(tmp_path / "coins.tif"), str(tmp_path / "astronaut.png")]
    before = [Path(p).read_bytes() for p in inputs]
    options = ["--points-per-side", "6", "--pred-iou-thresh", "0.2",
               "--stability-score-thresh", "0.5"]  # fmt: skip
    assert main(["segment", *inputs, "--out", str(tmp_path / "out"), *options]) == 0
    model = load_model("tiny_cells")
    for name, image in (("coins", gray), ("astronaut", rgb)):
        written = tifffile.imread(tmp_path / "out" / f"{name}_labels.tif")
        expected = segment_everything(model, image, points_per_side=6, pred_iou_thresh=0.2,
                                      stability_score_thresh=0.5)  # fmt: skip
        assert written.dtype == np.int32 and np.array_equal(written, expected)
        assert written.max() > 0
    assert [Path(p).read_bytes() for p in inputs] == before
    # A second run refuses to replace its results without --overwrite; an input never is.
    assert main(["segment", *inputs, "--out", str(tmp_path / "out"), *options]) == 2
    assert "exists" in capsys.readouterr().err
    # The user's own coins_labels.tif beside coins.tif: an input, never written over.
    tifffile.imwrite(tmp_path / "coins_labels.tif", np.ones((4, 4), np.uint8))
    mine = (tmp_path / "coins_labels.tif").read_bytes()
    user_files = [inputs[0], str(tmp_path / "coins_labels.tif")]
    assert main(["segment", *user_files, "--out", str(tmp_path), "--overwrite"]) == 2
    assert (tmp_path / "coins_labels.tif").read_bytes() == mine
    assert main(["segment", inputs[0], "--out", str(tmp_path / "o2"), "--method", "ais"]) == 2


def test_segment_with_an_instance_head_two_files(main, tmp_path):
    import numpy as np
    import tifffile
    from PIL import Image
    from skimage import data

    from napari_sam import load_model, segment_everything
    from napari_sam.training.finetuning import save_finetuned
    from tests.stand_ins import head_model

    checkpoint = save_finetuned(head_model(), tmp_path / "with_head.pt")
    gray = (data.coins()[:128, :160].astype(np.uint16) * 257)  # 16 bit
    rgb = data.astronaut()[::4, ::4]  # (128, 128, 3) uint8
    tifffile.imwrite(tmp_path / "coins.tif", gray)
    Image.fromarray(rgb).save(tmp_path / "astronaut.png")
    inputs = [str(tmp_path / "coins.tif"), str(tmp_path / "astronaut.png")]
    out = tmp_path / "out"
    # No --method: the model has a head, so AIS; an AIS parameter passes through.
    args = ["segment", *inputs, "--out", str(out), "--model", str(checkpoint),
            "--foreground-threshold", "0.6"]  # fmt: skip
    assert main(args) == 0
    model = load_model(checkpoint)
    found = 0
    for name, image in (("coins", gray), ("astronaut", rgb)):
        written = tifffile.imread(out / f"{name}_labels.tif")
        expected = segment_everything(model, image, "ais", foreground_threshold=0.6)
        assert written.dtype == np.int32 and np.array_equal(written, expected)
        found += int(written.max())
    assert found > 0
    # A grid parameter with AIS is an error that names the method's parameters.
    bad = ["segment", inputs[0], "--out", str(tmp_path / "o2"), "--model", str(checkpoint),
           "--pred-iou-thresh", "0.5"]  # fmt: skip
    assert main(bad) == 2


def test_segment_says_what_is_wrong_before_writing_anything(main, tmp_path, capsys):
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    (tmp_path / "other").mkdir()
    tifffile.imwrite(tmp_path / "other" / "a.tif", np.zeros((8, 8), np.uint8))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "missing.tif"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err and not out.exists()
    twins = [str(tmp_path / "a.tif"), str(tmp_path / "other" / "a.tif")]
    assert main(["segment", *twins, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "share one label file" in err and "other" in err and not out.exists()
    # An AIS option with the grid (tiny_cells has no head): refused, no folder made.
    assert main(["segment", twins[0], "--out", str(out), "--min-size", "20"]) == 2
    assert "min_size" in capsys.readouterr().err and not out.exists()


def test_segment_refuses_a_file_as_out_and_says_which_input_it_cannot_read(
    main, tmp_path, capsys
):
    """From a new user's break test: both were tracebacks."""
    import numpy as np
    import tifffile

    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.zeros((16, 16), np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["segment", str(good), "--out", str(good)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["segment", str(good), str(bad), "--out", str(out), "--method", "amg"]) == 2
    err = capsys.readouterr().err
    assert "bad.png: cannot read it as an image" in err
    assert (out / "good_labels.tif").is_file()  # the file before it is written
