"""itnet_ext.experiments.recipes: each benchmark recipe runs end to end on tiny generated
data (two steps, one CPU process) and leaves a finite loss and a loadable checkpoint; the
ModelNet recipe also runs as two gloo processes under ``torch.distributed.run``, and both
processes finish (rank 0 alone logs and writes the checkpoint)."""
import math
import os
import subprocess
import sys

import pytest
import torch

from test_data_loaders import (write_glue, write_image_folder, write_modelnet_hdf5,
                               write_modelnet_off, write_vqa)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--kernel-hidden", "4",
        "--batch-size", "2", "--max-steps", "2", "--device", "cpu", "--num-workers", "0",
        "--warmup-steps", "1", "--log-every", "1"]


def _check(result, out_dir, name, capsys, metric=True):
    printed = capsys.readouterr().out
    assert math.isfinite(result["loss"]) and result["steps"] == 2
    assert f"final loss {result['loss']:.4f}" in printed and "step 2/2" in printed
    assert result["checkpoint"] == os.path.join(out_dir, f"{name}_last.pt")
    ckpt = torch.load(result["checkpoint"], weights_only=False)
    assert ckpt["step"] == 2 and ckpt["model"] and all(torch.isfinite(v).all()
                                                       for v in ckpt["model"].values()
                                                       if v.is_floating_point())
    if metric:
        assert result["metric"] is not None and math.isfinite(result["metric"])
    return ckpt


def test_imagenet_recipe(tmp_path, capsys):
    pytest.importorskip("PIL")
    from itnet_ext.experiments.recipes import imagenet

    write_image_folder(tmp_path / "data" / "train", ("a", "b", "c"), per_class=2, size=(20, 24))
    write_image_folder(tmp_path / "data" / "val", ("a", "b", "c"), per_class=1, size=(20, 20), seed=1)
    out = str(tmp_path / "ckpt")
    res = imagenet.main(["--data-root", str(tmp_path / "data"), "--image-size", "16",
                         "--patch-size", "4", "--out", out] + TINY)
    ckpt = _check(res, out, "imagenet", capsys)
    assert ckpt["classes"] == ["a", "b", "c"] and ckpt["model"]["head.weight"].shape == (3, 16)
    assert 0.0 <= res["metric"] <= 1.0


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_glue_recipe(tmp_path, capsys, task):
    from itnet_ext.experiments.recipes import glue

    write_glue(tmp_path)
    if task == "stsb":     # a dev file for the evaluation
        import shutil
        shutil.copy(tmp_path / "STS-B" / "train.tsv", tmp_path / "STS-B" / "dev.tsv")
    out = str(tmp_path / "ckpt")
    res = glue.main(["--data-root", str(tmp_path), "--task", task, "--max-len", "16",
                     "--out", out] + TINY)
    ckpt = _check(res, out, f"glue_{task}", capsys)
    assert ckpt["task"] == task
    assert ("great" if task == "sst2" else "plane") in ckpt["vocab"]
    assert ckpt["model"]["head.weight"].shape[0] == (1 if task == "stsb" else 2)


@pytest.mark.parametrize("fmt", ["off", "hdf5"])
def test_modelnet_recipe(tmp_path, capsys, fmt):
    if fmt == "hdf5":
        pytest.importorskip("h5py")
        write_modelnet_hdf5(tmp_path / "data", points=48)
    else:
        write_modelnet_off(tmp_path / "data")
    from itnet_ext.experiments.recipes import modelnet

    out = str(tmp_path / "ckpt")
    res = modelnet.main(["--data-root", str(tmp_path / "data"), "--num-points", "32",
                         "--neighbors-k", "4", "--point-hidden", "8", "--out", out] + TINY)
    ckpt = _check(res, out, "modelnet", capsys)
    assert ckpt["num_classes"] == (2 if fmt == "off" else 4)


def test_vqa_recipe(tmp_path, capsys):
    pytest.importorskip("PIL")
    from itnet_ext.experiments.recipes import vqa

    write_vqa(tmp_path, "train2014")
    write_vqa(tmp_path, "val2014", seed=1)
    out = str(tmp_path / "ckpt")
    res = vqa.main(["--data-root", str(tmp_path), "--image-size", "16", "--patch-size", "8",
                    "--top-k", "10", "--out", out] + TINY)
    ckpt = _check(res, out, "vqa", capsys)
    assert ckpt["answers"] == ["yes", "3", "blue"] and 0.0 <= res["metric"] <= 1.0


def test_recipe_errors(tmp_path):
    from itnet_ext.experiments.recipes import common, glue, imagenet

    with pytest.raises(FileNotFoundError, match="ImageFolder root: no such directory"):
        imagenet.main(["--data-root", str(tmp_path / "none")] + TINY)
    with pytest.raises(ValueError, match="GLUE task 'imdb'"):
        glue.main(["--data-root", str(tmp_path), "--task", "imdb"] + TINY)
    with pytest.raises(SystemExit):
        imagenet.build_parser().parse_args([])          # --data-root is required
    f = common.warmup_cosine(10, 2)
    assert [round(f(s), 6) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.0]


def test_modelnet_recipe_under_torchrun(tmp_path):
    """Two gloo processes on CPU through torch.distributed.run (the torchrun entry point)."""
    write_modelnet_off(tmp_path / "data", per_split=2)
    out = tmp_path / "ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "itnet_ext.experiments.recipes.modelnet", "--data-root", str(tmp_path / "data"),
           "--num-points", "32", "--neighbors-k", "4", "--point-hidden", "8",
           "--out", str(out)] + TINY
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("final loss") == 1                    # rank 0 alone logs
    ckpt = torch.load(out / "modelnet_last.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["args"]["batch_size"] == 2
