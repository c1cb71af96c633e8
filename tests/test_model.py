import collections

import onnx
import torch

from train.model import MOBILENET_L_BLOCKS, MobileNetL, count_flops, count_parameters

BACKBONE_OPS = {"Conv", "HardSwish", "HardSigmoid", "Relu", "GlobalAveragePool", "Mul", "Add"}


def test_output_shape_and_size():
    model = MobileNetL().eval()
    with torch.no_grad():
        y = model(torch.zeros(2, 3, 256, 256))
    assert y.shape == (2, 68, 2)
    assert 1.6e6 < count_parameters(model) < 1.8e6  # paper: about 1.7 M
    assert 0.07e9 < count_flops(model) < 0.09e9  # 0.16 GFLOPs counting multiply and add separately


def test_table1_structure():
    assert len(MOBILENET_L_BLOCKS) == 11
    assert [b.out for b in MOBILENET_L_BLOCKS] == [16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96]
    assert [b.stride for b in MOBILENET_L_BLOCKS].count(2) == 4  # with the stem: 256 -> 8
    model = MobileNetL()
    assert model.features(torch.zeros(1, 3, 256, 256))[0].shape == (1, 96, 8, 8)  # C1
    assert model.fc.in_features == 320 and model.fc.out_features == 136


def test_onnx_backbone_uses_only_fusable_ops(tmp_path):
    from export.export_onnx import export_onnx

    path = tmp_path / "m.onnx"
    export_onnx(MobileNetL().eval(), path)
    graph = onnx.load(path).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    # everything up to the last GlobalAveragePool of the head is backbone + SE: only fusable ops
    head_ops = {"Concat", "Flatten", "Gemm", "Reshape"}
    assert set(ops) - head_ops <= BACKBONE_OPS, ops
    assert ops["HardSwish"] > 0 and ops["HardSigmoid"] == 9 and ops["Mul"] == 9  # nine SE blocks
    assert not {"Shape", "Gather", "Unsqueeze", "Cast"} & set(ops)
