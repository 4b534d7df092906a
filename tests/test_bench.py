"""bench.py, the instructors' benchmarks: the parts that prepare a run, on tiny data (the
measurements themselves take minutes to hours: BENCHMARKS.md)."""
import argparse

import pytest
import torch

import bench
import part2_diffusion

pytestmark = pytest.mark.e2e  # the script end to end: plain `python -m pytest` runs these


def weights(run_dir):
    return torch.load(run_dir + "/checkpoint.pt", weights_only=True)


def test_bench_curve_unet_starts_another_unet_at_step_0_that_resume_trains(mnist_dir, tmp_path):
    with pytest.raises(SystemExit, match="^bench.py curve: --unet base_channels=x builds no U-Net"):
        bench.curve_unet(["base_channels=x"])
    unet = bench.curve_unet(["base_channels=8", "norm_groups=4", "channel_mults=1,2",
                             "attention=1"])
    args = argparse.Namespace(data_dir=str(mnist_dir))
    folder = bench.curve_start(part2_diffusion, tmp_path / "u", 3, args, {}, unet)
    start = weights(folder)
    assert start["step"] == 0 and start["history"] == []
    assert start["meta"]["model_config"]["channel_mults"] == [1, 2]
    part2_diffusion.main(["--steps", "2", "--resume", folder, "--n", "1", "--sampler", "ddim",
                          "--sampling-steps", "1", "--data-dir", str(mnist_dir)])
    trained = weights(folder)
    assert trained["step"] == 2 and trained["meta"]["model_config"]["base_channels"] == 8
    assert {k: v.shape for k, v in trained["model"].items()} == {
        k: v.shape for k, v in start["model"].items()}
