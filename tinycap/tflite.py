"""The one .tflite reader: flatbuffer -> Graph (tensors with shapes, types, quantisation and
constant data; ops with their builtin options), and what the pipeline asks of a graph.

Built on the schema bundled with the tflite-micro package (no TensorFlow import): the firmware's
code generator, the quantize stage (op lists, graph I/O in quant.json) and the M7 benchmark (MACs,
per-vocabulary-entry costs) all read graphs through load_graph(). build_model() writes small
one-subgraph graphs (kernel tests, the code generator's lookup tables).
"""

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from tinycap.errors import TinyCapError


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    return fb


def _op_names():
    fb = _schema()
    return {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


@dataclasses.dataclass
class Tensor:
    index: int
    name: str
    shape: tuple
    dtype: str  # int8 | int32 | float32 | ...
    scale: np.ndarray  # float32 [1] or [N] (per channel); empty if not quantised
    zero_point: np.ndarray  # int64
    data: np.ndarray | None  # constant contents, or None

    @property
    def size(self):
        return int(np.prod(self.shape)) if len(self.shape) else 1

    @property
    def nbytes(self):
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def s(self):
        return np.float32(self.scale[0])

    @property
    def zp(self):
        return int(self.zero_point[0]) if len(self.zero_point) else 0


@dataclasses.dataclass
class Op:
    index: int
    name: str
    inputs: list  # tensor indices (-1 = absent)
    outputs: list
    options: object


@dataclasses.dataclass
class Graph:
    path: str
    tensors: list
    ops: list
    inputs: list
    outputs: list
    io_names: dict = dataclasses.field(default_factory=dict)  # tensor index -> name in the serving_default signature


def load_graph(data, where):
    """Parse .tflite bytes into a Graph (first subgraph)."""
    fb = _schema()
    try:
        model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as e:  # flatbuffers raises assorted errors on garbage
        raise TinyCapError(where, f"not a .tflite flatbuffer ({type(e).__name__})") from None
    if not model.subgraphs:
        raise TinyCapError(where, "model has no subgraph")
    names = _op_names()
    types = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    sg = model.subgraphs[0]
    tensors = []
    for i, t in enumerate(sg.tensors):
        dtype = types[t.type]
        q = t.quantization
        scale = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32)
        zp = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], np.int64)
        buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        data = None
        if buf is not None and buf.data is not None and len(buf.data):
            data = np.frombuffer(bytes(np.asarray(buf.data, np.uint8)), dtype=np.dtype(dtype).newbyteorder("<"))
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
        if data is not None:
            data = data.reshape(shape)
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        tensors.append(Tensor(i, name, shape, dtype, scale, zp, data))
    ops = []
    for j, op in enumerate(sg.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), f"CODE_{code.builtinCode}")
        if name == "CUSTOM":
            name = f"CUSTOM({code.customCode.decode() if code.customCode else '?'})"
        ins = [int(x) for x in (op.inputs if op.inputs is not None else [])]
        outs = [int(x) for x in (op.outputs if op.outputs is not None else [])]
        ops.append(Op(j, name, ins, outs, op.builtinOptions))
    io_names = {}
    for sig in model.signatureDefs or []:
        if sig.signatureKey in (b"serving_default", "serving_default"):
            for t in list(sig.inputs or []) + list(sig.outputs or []):
                io_names[int(t.tensorIndex)] = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    return Graph(str(where), tensors, ops, [int(x) for x in sg.inputs], [int(x) for x in sg.outputs], io_names)


def build_model(tensors, ops, inputs, outputs):
    """Write a one-subgraph .tflite: tensors = [dict(shape, dtype, scale, zp, data)],
    ops = [(op_name, [in idx], [out idx], options or None)]. For tests and lookup tables."""
    import flatbuffers

    fb = _schema()
    types = {k.lower(): v for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    model = fb.ModelT()
    model.version = 3
    model.buffers = [fb.BufferT()]
    model.operatorCodes = []
    codes = {}
    sg = fb.SubGraphT()
    sg.tensors = []
    for i, t in enumerate(tensors):
        tt = fb.TensorT()
        tt.shape = list(t["shape"])
        tt.type = types[t["dtype"]]
        tt.name = f"t{i}".encode()
        tt.buffer = 0
        if t.get("data") is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(t["data"], dtype=t["dtype"]).tobytes(), np.uint8)
            tt.buffer = len(model.buffers)
            model.buffers.append(b)
        if t.get("scale") is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(t["scale"])]
            q.zeroPoint = [int(z) for z in np.atleast_1d(t["zp"])]
            q.quantizedDimension = int(t.get("qdim", 0))
            tt.quantization = q
        sg.tensors.append(tt)
    sg.operators = []
    for name, ins, outs, options in ops:
        if name not in codes:
            oc = fb.OperatorCodeT()
            code = getattr(fb.BuiltinOperator, name)
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = 1
            codes[name] = len(model.operatorCodes)
            model.operatorCodes.append(oc)
        op = fb.OperatorT()
        op.opcodeIndex = codes[name]
        op.inputs = list(ins)
        op.outputs = list(outs)
        if options is not None:
            op.builtinOptionsType = getattr(fb.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        sg.operators.append(op)
    sg.inputs = list(inputs)
    sg.outputs = list(outputs)
    model.subgraphs = [sg]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def options(kind, **fields):
    """A builtin options object, e.g. options("FullyConnectedOptions", fusedActivationFunction=0)."""
    obj = getattr(_schema(), kind + "T")()
    for k, v in fields.items():
        setattr(obj, k, v)
    return obj


def read_graph(path):
    """load_graph() of a .tflite file."""
    return load_graph(Path(path).read_bytes(), path)


# ---------------------------------------------------------------------------------------------
# what the stages ask of a graph


def model_ops(model_bytes):
    """Sorted builtin op names of a .tflite model."""
    return sorted({op.name for op in load_graph(model_bytes, "model").ops})


def io_details(model_bytes):
    """Inputs/outputs in TFLM index order: name (serving_default signature), shape, dtype, scale,
    zero_point (0.0 and 0 for a tensor without quantisation). quant.json stores this dict."""
    g = load_graph(model_bytes, "model")

    def describe(i):
        t = g.tensors[i]
        return {
            "name": g.io_names[i],
            "shape": [int(s) for s in t.shape],
            "dtype": np.dtype(t.dtype).name,
            "scale": float(t.scale[0]) if len(t.scale) else 0.0,
            "zero_point": int(t.zero_point[0]) if len(t.zero_point) else 0,
        }

    return {"inputs": [describe(i) for i in g.inputs], "outputs": [describe(i) for i in g.outputs]}


def graph_macs(tflite_path):
    """Multiply-accumulates of one invocation of a .tflite graph, by op type
    (FULLY_CONNECTED / BATCH_MATMUL / CONV_2D: output elements x reduction depth; DEPTHWISE_CONV_2D: output
    elements x kernel taps)."""
    g = read_graph(tflite_path)
    shape = lambda i: g.tensors[i].shape  # noqa: E731
    macs = Counter()
    for op in g.ops:
        if op.name == "FULLY_CONNECTED":
            macs[op.name] += int(np.prod(shape(op.outputs[0]))) * int(shape(op.inputs[1])[-1])
        elif op.name == "BATCH_MATMUL":
            macs[op.name] += int(np.prod(shape(op.outputs[0]))) * int(shape(op.inputs[0])[-1])
        elif op.name == "CONV_2D":  # weights OHWI
            macs[op.name] += int(np.prod(shape(op.outputs[0]))) * int(np.prod(shape(op.inputs[1])[1:]))
        elif op.name == "DEPTHWISE_CONV_2D":  # weights 1HWC
            macs[op.name] += int(np.prod(shape(op.outputs[0]))) * int(np.prod(shape(op.inputs[1])[1:3]))
    return dict(macs)


def vocab_rows(tflite_path, vocab_size):
    """What one more vocabulary entry costs in a decoder-step graph: MACs per step, constant bytes
    (flash) and activation bytes (RAM), from the FULLY_CONNECTED ops with vocab_size outputs
    (weights row + int32 bias + output element) and the GATHER over a vocab_size-row table."""
    g = read_graph(tflite_path)
    t = g.tensors
    rows = {"macs": 0, "const_bytes": 0, "act_bytes": 0}
    for op in g.ops:
        if op.name == "FULLY_CONNECTED" and t[op.outputs[0]].shape[-1] == vocab_size:
            w = op.inputs[1]
            rows["macs"] += int(t[w].shape[-1])
            rows["const_bytes"] += t[w].nbytes // vocab_size
            if len(op.inputs) > 2 and op.inputs[2] >= 0:
                rows["const_bytes"] += t[op.inputs[2]].nbytes // vocab_size
            rows["act_bytes"] += t[op.outputs[0]].nbytes // vocab_size
        elif op.name == "GATHER" and t[op.inputs[0]].shape[0] == vocab_size:
            rows["const_bytes"] += t[op.inputs[0]].nbytes // vocab_size
    return rows
