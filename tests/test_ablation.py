"""The Figure 9 ablation variants: each switch changes what it names and nothing else."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from tests.conftest import CHECKPOINT, needs_dlib
from train import checkpoint
from train.model import ABLATIONS, InvertedResidual, MobileNetL, ModelConfig, SqueezeExcite, count_parameters

FULL_PARAMETERS = 1_713_384


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def _output(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_variant_builds_and_predicts(name):
    assert _output(MobileNetL(ABLATIONS[name])).shape == (2, 68, 2)


def test_full_is_todays_network():
    assert ABLATIONS["full"] == ModelConfig()
    assert count_parameters(MobileNetL()) == FULL_PARAMETERS


def test_no_se_drops_every_squeeze_excite():
    full, no_se = MobileNetL(), MobileNetL(ABLATIONS["no-SE"])
    assert _count(full, SqueezeExcite) == 9 and _count(no_se, SqueezeExcite) == 0
    assert count_parameters(no_se) < FULL_PARAMETERS


@pytest.mark.parametrize("name", ["ReLU", "non-linear-bottleneck", "no-residual"])
def test_weight_free_switches_change_the_function_not_the_weights(name):
    full, variant = MobileNetL(), MobileNetL(ABLATIONS[name])
    variant.load_state_dict(full.state_dict())  # same keys and shapes, so strict loading works
    assert count_parameters(variant) == FULL_PARAMETERS
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():  # C1, since the fresh head's near-zero FC hides differences in the output
        assert not torch.allclose(full.eval().features(x)[0], variant.eval().features(x)[0])


def test_relu_variant_has_no_hard_swish():
    assert _count(MobileNetL(), nn.Hardswish) > 0
    assert _count(MobileNetL(ABLATIONS["ReLU"]), nn.Hardswish) == 0


def test_non_linear_bottleneck_has_an_activation_after_each_projection():
    def projection_acts(model):
        return [len(b.block[-1]) == 3 for b in model.modules() if isinstance(b, InvertedResidual)]

    assert not any(projection_acts(MobileNetL()))
    assert all(projection_acts(MobileNetL(ABLATIONS["non-linear-bottleneck"])))


def test_no_residual_has_no_skip_connections():
    def skips(model):
        return sum(b.residual for b in model.modules() if isinstance(b, InvertedResidual))

    assert skips(MobileNetL()) == 6  # the stride-1 blocks whose width does not change
    assert skips(MobileNetL(ABLATIONS["no-residual"])) == 0


def test_variant_checkpoint_round_trips(tmp_path):
    model = MobileNetL(ABLATIONS["no-SE"]).eval()
    checkpoint.save(tmp_path / "v.pt", model)
    loaded = checkpoint.load_model(tmp_path / "v.pt")
    assert loaded.config == ABLATIONS["no-SE"]
    assert torch.equal(_output(model), _output(loaded))


@pytest.mark.skipif(not CHECKPOINT.exists(), reason=f"committed checkpoint {CHECKPOINT} not found")
def test_committed_checkpoint_loads_as_full_network():
    assert checkpoint.load(CHECKPOINT)["config"].keys() <= ModelConfig().to_dict().keys()
    # the paper's full MobileNet-L, with or without the visibility and face-score heads
    assert replace(checkpoint.load_model(CHECKPOINT).config, heads=False, vis_points=()) == ABLATIONS["full"]


@needs_dlib
def test_resume_refuses_another_variant(small_faces, tmp_cache, tmp_path):
    from train.train import main

    out = tmp_path / "run"
    model = MobileNetL(ABLATIONS["no-SE"])
    checkpoint.save(out / "last.pt", model, optimizer=torch.optim.AdamW(model.parameters()).state_dict(),
                    epoch=1, history=[], best_val_nmse=1.0)
    with pytest.raises(SystemExit, match="a run of 'no-SE', not 'paper'"):
        main(["--faces", str(small_faces), "--out", str(out), "--resume", "--limit", "8", "--val-limit", "2",
              "--variant", "full"])
    with pytest.raises(SystemExit, match="a run of 'no-SE', not 'mobilenet_l'"):
        main(["--faces", str(small_faces), "--out", str(out), "--resume", "--limit", "8", "--val-limit", "2"])
