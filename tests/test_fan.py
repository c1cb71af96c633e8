import numpy as np
import torch
import torch.nn.functional as F

from tests.conftest import needs_dlib
from train.fan import FAN, FANConfig, decode_heatmaps, encode_heatmaps, heatmap_loss

TINY = FANConfig(stacks=2, width=16, depth=2)  # same structure, seconds on a CPU


def test_output_shapes_one_heatmap_set_per_stack():
    with torch.no_grad():
        heatmaps = FAN(TINY).eval()(torch.zeros(2, 3, 256, 256))
    assert len(heatmaps) == 2
    assert all(h.shape == (2, 68, 64, 64) for h in heatmaps)


def test_heatmap_round_trip_is_sub_pixel():
    # Crop pixels (pixel centres at integers, as core.preprocess) away from the border, off the 4 px grid.
    rng = np.random.default_rng(0)
    px = torch.from_numpy(rng.uniform(4, 250, (3, 68, 2)))
    px[0, :4] = torch.tensor([[1.5, 1.5], [5.5, 9.5], [128.0, 127.25], [250.1, 3.9]])  # cell centres and between
    decoded = decode_heatmaps(encode_heatmaps(px / 256)) * 256
    assert (decoded - px).abs().max() < 0.1


def test_decoding_keeps_the_peak_of_a_shifted_blob():
    hm = torch.zeros(1, 68, 64, 64)
    hm[..., 10, 20] = 1.0
    hm[..., 10, 21] = 0.5  # the right neighbour is higher: shift right, less than half a cell
    x, y = (decode_heatmaps(hm)[0, 0] * 256).tolist()
    assert 20 * 4 + 1.5 < x < 20.5 * 4 + 1.5 and y == 10 * 4 + 1.5


def test_heatmap_loss_weights_the_gaussians_not_the_background():
    target = encode_heatmaps(torch.rand(2, 68, 2) * 0.8 + 0.1)
    zeros = torch.zeros_like(target)
    # Weight 1 is FAN's plain MSE, summed over stacks.
    assert torch.isclose(heatmap_loss([zeros, zeros], target, 1.0), 2 * F.mse_loss(zeros, target))
    # An error under the Gaussians costs 10x; the same error on the background costs 1x.
    fg = (target > 0.01).float()
    blob_error = heatmap_loss([target + 0.1 * fg], target) / heatmap_loss([target + 0.1 * fg], target, 1.0)
    background_error = heatmap_loss([target + 0.1 * (1 - fg)], target) / heatmap_loss([target + 0.1 * (1 - fg)], target, 1.0)
    assert torch.isclose(blob_error, torch.tensor(10.0)) and torch.isclose(background_error, torch.tensor(1.0))


@needs_dlib
def test_short_training_run_then_predictor(small_faces, tmp_cache, tmp_path):
    from train.fan import fan_predictor, load_fan, main

    out = tmp_path / "fan"
    args = ["--faces", str(small_faces), "--out", str(out), "--limit", "16", "--val-limit", "2", "--batch", "8",
            "--width", "16", "--seed", "1"]
    result = main(args + ["--epochs", "3"])
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0], losses
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["config"]["width"] == 16 and state["schema"]["num_landmarks"] == 68
    assert load_fan(out / "best.pt").fan.config.width == 16

    resumed = main(args + ["--epochs", "4", "--resume"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]

    crops = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    pred = fan_predictor(out / "best.pt")(crops)
    assert pred.shape == (3, 68, 2) and np.isfinite(pred).all()
