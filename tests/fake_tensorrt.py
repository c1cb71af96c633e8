"""A recording fake of ``tensorrt`` and ``pycuda.driver`` for the three API generations we support.

``install(monkeypatch, "8.6" | "10.x" | "11.x")`` puts a fake ``tensorrt``, ``pycuda`` and ``pycuda.driver``
into ``sys.modules`` and returns a ``FakeStack`` whose ``calls`` list records every API call made. The
fakes follow the documented API surface of each generation (the names missing from a generation are
missing here too, so using them fails as it would for real):

* 8.6: ``EXPLICIT_BATCH`` needed by the ONNX parser; ``BuilderFlag.FP16/INT8``; INT8 calibrators.
* 10.x: ``EXPLICIT_BATCH`` deprecated (ignored), ``STRONGLY_TYPED`` available; flags and calibrators still
  there, but precision flags are rejected on a strongly typed network, as TensorRT does.
* 11.x: always strongly typed; no ``EXPLICIT_BATCH``, no ``BuilderFlag.FP16/INT8``, no calibrators, no
  ``int8_calibrator`` / ``set_calibration_profile`` on the builder config.

Device memory is real numpy bytes, so copies work and the fake engine computes something checkable:
``landmarks[n, k, j] = mean(input[n]) * (j + 1) + k / 68`` and, when the ONNX file has those outputs,
``visibility`` and ``face_score`` (see ``expected_outputs``).
"""
from __future__ import annotations

import enum
import itertools
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GENERATIONS = {"8.6": "8.6.1.6", "10.x": "10.3.0.26", "11.x": "11.0.0.1"}
FAKE_GPU = ("NVIDIA Fake Orin", (8, 7))
PLAN_MAGIC = b"FAKE-PLAN\n"
TIMING_MAGIC = b"FAKE-TIMING-CACHE\n"


def expected_output(x: np.ndarray) -> np.ndarray:
    """The landmarks the fake engine computes for input (N, 3, 256, 256)."""
    mean = x.reshape(len(x), -1).astype(np.float64).mean(axis=1)
    out = mean[:, None, None] * np.array([1.0, 2.0])[None, None, :] + (np.arange(68) / 68.0)[None, :, None]
    return out.astype(np.float32)


def expected_outputs(x: np.ndarray, names=("landmarks",)) -> dict[str, np.ndarray]:
    """Every output the fake engine computes: landmarks, and visibility / face_score in [0, 1]."""
    mean = x.reshape(len(x), -1).astype(np.float64).mean(axis=1)
    every = {"landmarks": expected_output(x),
             "visibility": (1 / (1 + np.exp(-(mean[:, None] + np.arange(68) / 68.0 - 0.5)))).astype(np.float32),
             "face_score": (1 / (1 + np.exp(-mean))).astype(np.float32)}
    return {n: every[n] for n in names}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.objects: dict[str, Any] = {}  # the last builder config, network, profile, context, ...

    def __call__(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))

    def named(self, name: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == name]


@dataclass
class FakeStack:
    generation: str
    trt: types.ModuleType
    cuda: types.ModuleType
    rec: Recorder
    memory: dict[int, bytearray] = field(default_factory=dict)

    @property
    def calls(self) -> list[tuple]:
        return self.rec.calls

    def named(self, name: str) -> list[tuple]:
        return self.rec.named(name)

    def last(self, kind: str) -> Any:
        return self.rec.objects[kind]


# ------------------------------------------------------------------------------------------------- pycuda


def _make_pycuda(rec: Recorder, memory: dict[int, bytearray]) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")
    addresses = itertools.count(0x7F0000000000, 0x100000)

    class DeviceAllocation:
        def __init__(self, nbytes: int):
            self.address = next(addresses)
            memory[self.address] = bytearray(nbytes)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            rec("free", self.address)
            memory.pop(self.address, None)

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        rec("mem_alloc", int(nbytes))
        return DeviceAllocation(int(nbytes))

    def pagelocked_empty(shape, dtype) -> np.ndarray:
        rec("pagelocked_empty", tuple(np.atleast_1d(shape)), np.dtype(dtype).name)
        return np.zeros(shape, dtype)

    def _htod(dest, src) -> None:
        data = np.ascontiguousarray(src).tobytes()
        buf = memory[int(dest)]
        assert len(data) <= len(buf), "host->device copy larger than the allocation"
        buf[:len(data)] = data

    def _dtoh(dest: np.ndarray, src) -> None:
        buf = memory[int(src)]
        assert dest.nbytes <= len(buf), "device->host copy larger than the allocation"
        dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(buf[:dest.nbytes]), np.uint8)

    def memcpy_htod(dest, src) -> None:
        rec("memcpy_htod", int(dest), np.asarray(src).nbytes)
        _htod(dest, src)

    def memcpy_htod_async(dest, src, stream=None) -> None:
        rec("memcpy_htod_async", int(dest), np.asarray(src).nbytes, getattr(stream, "handle", None))
        _htod(dest, src)

    def memcpy_dtoh_async(dest, src, stream=None) -> None:
        rec("memcpy_dtoh_async", int(src), dest.nbytes, getattr(stream, "handle", None))
        _dtoh(dest, src)

    class Stream:
        _handles = itertools.count(1)

        def __init__(self) -> None:
            self.handle = next(Stream._handles)
            rec("Stream", self.handle)

        def synchronize(self) -> None:
            rec("synchronize", self.handle)

    class Context:
        stack: list = []

        def push(self) -> None:
            rec("ctx_push")
            Context.stack.append(self)

        @staticmethod
        def pop() -> None:
            rec("ctx_pop")
            Context.stack.pop()

        def detach(self) -> None:
            rec("ctx_detach")

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        def name(self) -> str:
            return FAKE_GPU[0]

        def compute_capability(self) -> tuple[int, int]:
            return FAKE_GPU[1]

        def retain_primary_context(self) -> Context:
            rec("retain_primary_context", self.index)
            return Context()

    def init() -> None:
        rec("cuda_init")

    for obj in (DeviceAllocation, mem_alloc, pagelocked_empty, memcpy_htod, memcpy_htod_async, memcpy_dtoh_async,
                Stream, Context, Device, init):
        setattr(cuda, obj.__name__, obj)
    return cuda


# ---------------------------------------------------------------------------------------------- tensorrt


def _enum(name: str, members: list[str]) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {m: i for i, m in enumerate(members)})


def _make_tensorrt(generation: str, rec: Recorder, memory: dict[int, bytearray]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = GENERATIONS[generation]
    major = int(trt.__version__.split(".")[0])

    network_flags = {8: ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"], 10: ["EXPLICIT_BATCH", "STRONGLY_TYPED"],
                     11: ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"]}[major]
    builder_flags = ["GPU_FALLBACK", "REFIT", "DEBUG", "TF32"] + ([] if major >= 11 else
                                                                  ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"])
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", network_flags)
    trt.BuilderFlag = _enum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM"])
    trt.DeviceType = _enum("DeviceType", ["GPU", "DLA"])
    trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = _enum("DataType", ["FLOAT", "HALF", "INT8"])
    trt.nptype = lambda dt: {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16,
                             trt.DataType.INT8: np.int8}[dt]

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = 4, 3, 2, 1

        def __init__(self, min_severity: int = 2) -> None:
            self.min_severity = min_severity

    trt.Logger = Logger

    def strongly_typed(network: "INetworkDefinition") -> bool:
        if major >= 11:
            return True
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return flag is not None and bool(network.flags & (1 << int(flag)))

    class ITensor:
        def __init__(self, name: str) -> None:
            self.name = name

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.outputs, self.parsed_from = flags, [], ["landmarks"], None
            rec.objects["network"] = self

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> ITensor:
            return self.inputs[i]

    class ParserError:
        def __init__(self, node: int, text: str) -> None:
            self.node_index, self.text = node, text

        def desc(self) -> str:
            return self.text

        def __str__(self) -> str:
            return f"In node {self.node_index} with name: parseGraph: {self.text}"

    class OnnxParser:
        """Reads the real ONNX file for its input names; an op named 'Unsupported' makes it fail."""

        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            self.network, self.errors = network, []
            rec.objects["parser"] = self

        def parse_from_file(self, path: str) -> bool:
            import onnx

            rec("parse_from_file", path)
            if major < 10 and not self.network.flags & (1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
                self.errors.append(ParserError(-1, "Network must have explicit batch dimension"))
                return False
            try:
                model = onnx.load(path)
            except Exception as e:
                self.errors.append(ParserError(-1, f"Failed to parse ONNX model from file: {path} ({e})"))
                return False
            for i, node in enumerate(model.graph.node):
                if node.op_type == "Unsupported":
                    self.errors.append(ParserError(i, f"No importer registered for op: {node.op_type}"))
                    return False
            initialisers = {t.name for t in model.graph.initializer}
            self.network.inputs = [ITensor(v.name) for v in model.graph.input if v.name not in initialisers]
            self.network.outputs = [v.name for v in model.graph.output]
            self.network.parsed_from = path
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, min, opt, max) -> None:
            rec("set_shape", name, tuple(min), tuple(opt), tuple(max))
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self.valid = not data or data.startswith(TIMING_MAGIC)  # else: from another GPU / TensorRT
            self.entries = int(data[len(TIMING_MAGIC):] or 0) if data.startswith(TIMING_MAGIC) else 0

        def serialize(self) -> bytes:
            return TIMING_MAGIC + str(self.entries).encode()

    config_slots = ["flags", "pools", "profiles", "default_device_type", "DLA_core", "timing_cache"]
    if major < 11:
        config_slots += ["int8_calibrator", "calibration_profile"]

    class IBuilderConfig:
        __slots__ = config_slots  # an attribute TensorRT does not have cannot be set (AttributeError)

        def __init__(self) -> None:
            self.flags, self.pools, self.profiles = set(), {}, []
            self.default_device_type, self.DLA_core, self.timing_cache = trt.DeviceType.GPU, -1, None
            if major < 11:
                self.int8_calibrator, self.calibration_profile = None, None
            rec.objects["config"] = self

        def set_flag(self, flag) -> None:
            rec("set_flag", trt.BuilderFlag(flag).name)
            self.flags.add(trt.BuilderFlag(flag).name)

        def set_memory_pool_limit(self, pool, size: int) -> None:
            rec("set_memory_pool_limit", trt.MemoryPoolType(pool).name, size)
            self.pools[trt.MemoryPoolType(pool).name] = size

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            rec("add_optimization_profile", profile.shapes)
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            rec("create_timing_cache", bytes(serialized_timing_cache))
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            rec("set_timing_cache", ignore_mismatch)
            if not cache.valid and not ignore_mismatch:
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache:
            return self.timing_cache

    if major < 11:
        def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
            rec("set_calibration_profile", profile.shapes)
            self.calibration_profile = profile
            return True

        IBuilderConfig.set_calibration_profile = set_calibration_profile

        class IInt8Calibrator:
            def __init__(self) -> None:
                rec("calibrator_base_init", type(self).__mro__[1].__name__)

        class IInt8EntropyCalibrator2(IInt8Calibrator):
            pass

        class IInt8MinMaxCalibrator(IInt8Calibrator):
            pass

        trt.IInt8Calibrator = IInt8Calibrator
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        trt.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator

    def calibrate(config: IBuilderConfig) -> None:
        """Drive the calibrator as TensorRT does: cache first, else batches at the calibration OPT shape."""
        cal = config.int8_calibrator
        profile = config.calibration_profile or config.profiles[0]
        opt = profile.shapes["input"][1]
        if cal.get_batch_size() != opt[0]:
            raise AssertionError(f"calibrator batch {cal.get_batch_size()} != calibration OPT batch {opt[0]}")
        cache = cal.read_calibration_cache()
        rec("read_calibration_cache", cache)
        if cache:
            return
        batches = []
        while (ptrs := cal.get_batch(["input"])) is not None:
            n = int(np.prod(opt)) * 4
            batches.append(np.frombuffer(bytes(memory[int(ptrs[0])][:n]), np.float32).reshape(opt))
        rec("calibration_batches", batches)
        cal.write_calibration_cache(memoryview(b"TRT-FAKE-EntropyCalibration2\ninput: 3c010a14\n"))

    class Builder:
        def __init__(self, logger: Logger) -> None:
            rec("Builder")

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            rec("create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            profile = IOptimizationProfile()
            rec.objects["profile"] = profile
            return profile

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
            rec("build_serialized_network")
            if network.parsed_from is None or not config.profiles:
                return None
            precision_flags = {"FP16", "INT8"} & config.flags
            if strongly_typed(network) and precision_flags:
                rec("build_error", f"precision flags {sorted(precision_flags)} on a strongly typed network")
                return None  # TensorRT: precision flags are not allowed with strong typing
            if major < 11 and config.int8_calibrator is not None and "INT8" in config.flags:
                calibrate(config)
            if config.timing_cache is not None:
                config.timing_cache.entries += 1
            shapes = config.profiles[0].shapes["input"]
            plan = {"profile": shapes, "flags": sorted(config.flags), "strongly_typed": strongly_typed(network),
                    "outputs": network.outputs,
                    "dla_core": config.DLA_core if config.default_device_type == trt.DeviceType.DLA else None}
            return PLAN_MAGIC + json.dumps(plan).encode()

    class IExecutionContext:
        def __init__(self, engine: "ICudaEngine") -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}
            rec.objects["context"] = self

        def set_input_shape(self, name: str, shape) -> bool:
            rec("set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine.profile
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            n = self.shapes["input"][0]
            per_sample = {"input": self.shapes["input"][1:], "landmarks": (68, 2), "visibility": (68,), "face_score": ()}
            return (n, *per_sample[name])

        def set_tensor_address(self, name: str, memory_address: int) -> bool:
            rec("set_tensor_address", name, memory_address)
            self.addresses[name] = memory_address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            shape = self.shapes["input"]
            rec("execute_async_v3", stream_handle, shape)
            n_in = int(np.prod(shape)) * 4
            x = np.frombuffer(bytes(memory[self.addresses["input"]][:n_in]), np.float32).reshape(shape)
            for name, y in expected_outputs(x, self.engine.outputs).items():
                memory[self.addresses[name]][:y.nbytes] = y.tobytes()
            return True

    class ICudaEngine:
        def __init__(self, plan: dict) -> None:
            self.plan, self.profile = plan, [tuple(s) for s in plan["profile"]]
            self.outputs = plan.get("outputs", ["landmarks"])
            self.num_io_tensors = 1 + len(self.outputs)

        def get_tensor_name(self, i: int) -> str:
            return ["input", *self.outputs][i]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple]:
            assert name == "input" and profile_index == 0
            return self.profile

        def create_execution_context(self) -> IExecutionContext:
            rec("create_execution_context")
            return IExecutionContext(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            rec("Runtime")

        def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
            rec("deserialize_cuda_engine", len(data))
            if not bytes(data).startswith(PLAN_MAGIC):
                return None
            return ICudaEngine(json.loads(bytes(data)[len(PLAN_MAGIC):]))

    for obj in (Builder, OnnxParser, Runtime, IBuilderConfig, IOptimizationProfile, ICudaEngine, IExecutionContext):
        setattr(trt, obj.__name__, obj)
    return trt


def make_fake(generation: str) -> FakeStack:
    if generation not in GENERATIONS:
        raise ValueError(f"generation {generation!r}: use one of {list(GENERATIONS)}")
    rec, memory = Recorder(), {}
    return FakeStack(generation, _make_tensorrt(generation, rec, memory), _make_pycuda(rec, memory), rec, memory)


def install(monkeypatch, generation: str) -> FakeStack:
    """Make ``import tensorrt`` and ``import pycuda.driver`` return the fakes for this test."""
    stack = make_fake(generation)
    package = types.ModuleType("pycuda")
    package.__path__ = []  # a package, so "import pycuda.driver" works
    package.driver = stack.cuda
    monkeypatch.setitem(sys.modules, "tensorrt", stack.trt)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", stack.cuda)
    return stack


# ------------------------------------------------------------------------------------------------- ONNX


def _tiny_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W": rng.normal(0, 0.5, (3, 136)), "B": rng.normal(0, 0.1, (136,)),
            "Wv": rng.normal(0, 2.0, (3, 68)), "Bv": rng.normal(0, 0.5, (68,)),
            "Wf": rng.normal(0, 2.0, (3, 1)), "Bf": rng.normal(0, 0.5, (1,))}


def tiny_onnx(path: str | Path, precision: str = "fp32", metadata: dict[str, str] | None = None,
              unsupported: bool = False, seed: int = 0, heads: bool = False) -> Path:
    """A small landmark-shaped model: input [N,3,256,256] -> GlobalAveragePool -> Gemm -> [N,68,2].

    ``heads=True`` adds ``visibility`` [N,68] and ``face_score`` [N] (Gemm + Sigmoid on the same pool).
    ``precision="fp16"`` makes a real FP16 graph with float32 input/output (Casts at both ends), like
    ModelOpt AutoCast with keep_io_types; "int8" only labels the FP32 graph (the fakes do not care).
    ``tiny_reference`` computes the same in numpy.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = _tiny_weights(seed)
    fp16 = precision == "fp16"
    wt = np.float16 if fp16 else np.float32
    inits = [numpy_helper.from_array(v.astype(wt), k) for k, v in weights.items()]
    inits += [numpy_helper.from_array(np.array([-1, 68, 2], np.int64), "shape"),
              numpy_helper.from_array(np.array([-1], np.int64), "flat_shape")]
    nodes = []
    x = "input"
    if fp16:
        nodes.append(helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16))
        x = "x16"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "W", "B"], ["dense"]),
              helper.make_node("Reshape", ["dense", "shape"], ["out16" if fp16 else "landmarks"])]
    if fp16:
        nodes.append(helper.make_node("Cast", ["out16"], ["landmarks"], to=TensorProto.FLOAT))
    outputs = [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["N", 68, 2])]
    if heads:
        nodes += [helper.make_node("Gemm", ["flat", "Wv", "Bv"], ["vis_logits"]),
                  helper.make_node("Sigmoid", ["vis_logits"], ["vis16" if fp16 else "visibility"]),
                  helper.make_node("Gemm", ["flat", "Wf", "Bf"], ["face_logits"]),
                  helper.make_node("Sigmoid", ["face_logits"], ["face_col"]),
                  helper.make_node("Reshape", ["face_col", "flat_shape"], ["face16" if fp16 else "face_score"])]
        if fp16:
            nodes += [helper.make_node("Cast", ["vis16"], ["visibility"], to=TensorProto.FLOAT),
                      helper.make_node("Cast", ["face16"], ["face_score"], to=TensorProto.FLOAT)]
        outputs += [helper.make_tensor_value_info("visibility", TensorProto.FLOAT, ["N", 68]),
                    helper.make_tensor_value_info("face_score", TensorProto.FLOAT, ["N"])]
    if unsupported:
        nodes.insert(0, helper.make_node("Unsupported", ["input"], ["junk"], domain="fake.domain"))
    graph = helper.make_graph(
        nodes, "tiny_landmarks",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 256, 256])], outputs, inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("fake.domain", 1)] if unsupported else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    props = {"precision": precision, **(metadata or {})}
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_reference(x: np.ndarray, seed: int = 0, heads: bool = False):
    """What ``tiny_onnx(seed=seed)`` computes, in numpy float64: the landmarks, or with ``heads`` a dict of
    every output."""
    w = _tiny_weights(seed)
    pooled = x.astype(np.float64).mean(axis=(2, 3))
    landmarks = (pooled @ w["W"] + w["B"]).reshape(len(x), 68, 2)
    if not heads:
        return landmarks
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    return {"landmarks": landmarks, "visibility": sigmoid(pooled @ w["Wv"] + w["Bv"]),
            "face_score": sigmoid(pooled @ w["Wf"] + w["Bf"])[:, 0]}


def synthetic_faces(root: str | Path, count: int = 6, size: int = 96) -> Path:
    """A folder of small face-like PNGs (no splits.csv: every image counts), for calibration-set tests."""
    import cv2

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        cv2.ellipse(img, (size // 2, size // 2), (size // 4, size // 3), 0, 0, 360,
                    tuple(int(v) for v in rng.integers(60, 220, 3)), -1)
        cv2.imwrite(str(root / f"face_{i:02d}.png"), img)
    return root
