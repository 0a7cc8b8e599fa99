"""build_tflm: the int8 MicroCap as C sources for the firmware runtime in firmware/runtime/.

Reads the two int8 TFLite graphs of data/int8/ (pooler, decoder step), quant.json and the
vocabulary, and writes generated C (data/firmware/gen/, never hand-edited):
  tc_graphs.c/.h  one function per graph; weights, biases and quantisation parameters as const
                  arrays (flash), every intermediate tensor in one static arena planned by
                  lifetime (no heap); multipliers/shifts computed exactly as TFLM's Prepare().
  tc_model.c/.h   the glue tinycap.c's decode loop calls (pool, step), the vocabulary strings,
                  TC_NUM_FRAMES / TC_DIM / TC_MAX_LEN / TC_VOCAB_SIZE.
Elementwise int8 -> int8 ops (LOGISTIC, TANH, QUANTIZE, a DEQUANTIZE -> QUANTIZE pair) become
256-entry tables computed by running TFLM itself on all 256 inputs: bit-exact by construction.
An op the runtime lacks fails the build naming the op. It also builds the host binary (gcc),
checks parity against the TFLM Python runtime and exports a TFLM application (firmware/tflm_app).
"""

import dataclasses
import logging
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tinycap.errors import TinyCapError
from tinycap.io import read_json
from tinycap.quantize import same_quantisation

log = logging.getLogger("build_tflm")

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIR = ROOT / "firmware" / "runtime"
TFLM_APP_DIR = ROOT / "firmware" / "tflm_app"


@dataclasses.dataclass
class FirmwareConfig:
    parity_splits: list[str] = dataclasses.field(default_factory=lambda: ["test", "novel"])  # every clip of
    # these splits is captioned by the host build and by TFLM; any token difference fails the build


# ---------------------------------------------------------------------------------------------
# .tflite flatbuffers (schema bundled with the tflite-micro package)


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
    return Graph(str(where), tensors, ops, [int(x) for x in sg.inputs], [int(x) for x in sg.outputs])


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


def tflm_run(model_bytes, inputs, n_outputs=1, arena_size=256 * 1024):
    """Run TFLM (tflite_micro.runtime.Interpreter) once; returns the list of outputs."""
    from tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(model_bytes, arena_size=arena_size)
    for i, x in enumerate(inputs):
        interp.set_input(x, i)
    interp.invoke()
    return [interp.get_output(i) for i in range(n_outputs)]


# ---------------------------------------------------------------------------------------------
# TFLM's quantisation arithmetic (Prepare side), in Python


def _round(x):
    """TfLiteRound / std::round: half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_multiplier(d):
    """QuantizeMultiplier(double) -> (int32 multiplier, shift)."""
    if d == 0.0:
        return 0, 0
    q, shift = math.frexp(d)
    qf = _round(q * (1 << 31))
    if qf == (1 << 31):
        qf //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return qf, shift


def _srdhm(a, b):
    if a == b == -(1 << 31):
        return (1 << 31) - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    q = abs(ab + nudge) >> 31  # C division truncates toward zero
    return q if ab + nudge >= 0 else -q


def _rdbpot(x, e):
    mask = (1 << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if remainder > threshold else 0)


def mbqm(x, mult, shift):
    """MultiplyByQuantizedMultiplier, TFLM's default (double rounding), on Python ints (int32 range)."""
    left, right = max(shift, 0), max(-shift, 0)
    v = (x << left) & 0xFFFFFFFF
    v = v - (1 << 32) if v >= 1 << 31 else v
    return _rdbpot(_srdhm(v, mult), right)


def activation_range(act, scale, zp, where):
    """CalculateActivationRangeQuantized for int8."""
    def q(f):
        return zp + _round(float(np.float32(f) / np.float32(scale)))

    lo, hi = -128, 127
    if act == 0:
        return lo, hi
    if act == 1:  # RELU
        return max(lo, q(0.0)), hi
    if act == 3:  # RELU6
        return max(lo, q(0.0)), min(hi, q(6.0))
    if act == 2:  # RELU_N1_TO_1
        return max(lo, q(-1.0)), min(hi, q(1.0))
    raise TinyCapError(where, f"fused activation {act} not supported by the firmware runtime")


# ---------------------------------------------------------------------------------------------
# code generation

SUPPORTED_OPS = (
    "FULLY_CONNECTED", "BATCH_MATMUL", "ADD", "SUB", "MUL", "LOGISTIC", "TANH", "QUANTIZE", "DEQUANTIZE",
    "GATHER", "SOFTMAX", "MEAN", "SUM", "CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SPLIT", "SPLIT_V",
    "STRIDED_SLICE", "SLICE",
)
ALIAS_OPS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")
ADD_TABLE_MIN = 64  # ADD/SUB of at least this many elements read their input terms from 2 x 1 KB tables
LUT_OPS = ("LOGISTIC", "TANH", "QUANTIZE")


def check_ops(graph):
    """Fail naming the first op the runtime lacks (bad input caught at build time)."""
    for op in graph.ops:
        if op.name not in SUPPORTED_OPS:
            raise TinyCapError(
                graph.path, f"op {op.name} (op #{op.index}) is not supported by the firmware runtime "
                f"(supported: {', '.join(SUPPORTED_OPS)})"
            )


def _c_array(ctype, name, values, align=4, per_line=24):
    vals = [str(int(v)) for v in np.asarray(values).ravel()]
    lines = [", ".join(vals[i: i + per_line]) for i in range(0, len(vals), per_line)] or ["0"]
    body = ",\n  ".join(lines)
    return f"static const {ctype} {name}[{max(len(vals), 1)}] __attribute__((aligned({align}))) = {{\n  {body}\n}};\n"


class GraphCode:
    """C code of one graph: const data, arena plan, body of the run function."""

    def __init__(self, graph, prefix):
        self.g = graph
        self.p = prefix
        self.data = []  # C definitions
        self.body = []  # C statements
        self.const_bytes = 0
        self.const_names = {}
        self.luts = {}

    def const(self, ctype, name, values, align=4):
        name = f"{self.p}_{name}"
        arr = np.asarray(values)
        self.data.append(_c_array(ctype, name, arr, align))
        self.const_bytes += arr.size * {"int8_t": 1, "int32_t": 4, "uint8_t": 1, "int16_t": 2}[ctype]
        return name

    def tensor_const(self, t):
        if t.index not in self.const_names:
            ctype = {"int8": "int8_t", "int32": "int32_t"}.get(t.dtype)
            if ctype is None:
                raise TinyCapError(self.g.path, f"constant tensor {t.name} has type {t.dtype}; only int8/int32 supported")
            self.const_names[t.index] = self.const(ctype, f"c{t.index}", t.data)
        return self.const_names[t.index]


def _bcast(shape_out, s1, s2):
    """4-D strides of inputs 1/2 over the output shape (0 on broadcast axes)."""
    def pad(s):
        return (1,) * (4 - len(s)) + tuple(s)

    if len(shape_out) > 4:
        return None
    o, a, b = pad(shape_out), pad(s1), pad(s2)

    def strides(s):
        st, acc = [0] * 4, 1
        for i in range(3, -1, -1):
            st[i] = 0 if s[i] == 1 and o[i] != 1 else acc
            acc *= s[i]
        return st

    return o, strides(a), strides(b)


class Codegen:
    """Generates tc_graphs.c/.h for a set of named graphs sharing one static arena."""

    def __init__(self):
        self.graphs = {}
        self.arena_bytes = 0
        self.weight_bytes = 0
        self.ops_used = set()
        self.fc_max_k4 = 4

    def add(self, name, model_bytes, where):
        g = load_graph(model_bytes, where)
        check_ops(g)
        gc = GraphCode(g, f"tc_{name}")
        self._lower(gc)
        self.graphs[name] = gc
        self.weight_bytes += gc.const_bytes
        self.ops_used |= {op.name for op in g.ops}
        return g

    # -- storage: aliases, graph I/O, constants, arena ---------------------------------------

    def _storage(self, gc):
        g = gc.g
        parent = list(range(len(g.tensors)))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for op in g.ops:
            if op.name in ALIAS_OPS:
                parent[find(op.outputs[0])] = find(op.inputs[0])
        groups = {}
        for t in g.tensors:
            groups.setdefault(find(t.index), []).append(t.index)
        gc.copies = []  # (src tensor, dst tensor) for alias groups touching both an input and an output
        where = {}  # tensor -> C expression of its base pointer (int8_t* or const)
        arena_groups = []
        for root, members in groups.items():
            ins = [m for m in members if m in g.inputs]
            outs = [m for m in members if m in g.outputs]
            consts = [m for m in members if g.tensors[m].data is not None]
            if consts:  # emitted when an op reads them (_ref), so unused constants cost nothing
                for m in outs:
                    where[consts[0]] = gc.tensor_const(g.tensors[consts[0]])
                    where[m] = f"(({_ctype(g.tensors[m])} *)out[{g.outputs.index(m)}])"
                    gc.copies.append((consts[0], m))
            elif ins:
                for m in members:
                    where[m] = f"((const {_ctype(g.tensors[m])} *)in[{g.inputs.index(ins[0])}])"
                for m in outs:
                    where[m] = f"(({_ctype(g.tensors[m])} *)out[{g.outputs.index(m)}])"
                    gc.copies.append((ins[0], m))
            elif outs:
                for m in members:
                    where[m] = f"(({_ctype(g.tensors[m])} *)out[{g.outputs.index(outs[0])}])"
                for m in outs[1:]:
                    where[m] = f"(({_ctype(g.tensors[m])} *)out[{g.outputs.index(m)}])"
                    gc.copies.append((outs[0], m))
            elif not all(m in gc.fused for m in members):
                arena_groups.append(members)
        # lifetimes of arena groups: first producing op .. last consuming op
        plan = []
        for members in arena_groups:
            first, last = None, None
            for op in g.ops:
                if any(o in members for o in op.outputs):
                    first = op.index if first is None else first
                    last = op.index if last is None else max(last, op.index)
                if any(i in members for i in op.inputs):
                    last = op.index if last is None else max(last, op.index)
            if first is None:
                continue
            size = max(g.tensors[m].nbytes for m in members)
            plan.append((members, first, last, (size + 15) // 16 * 16))
        gc.plan = plan
        gc.where = where

    def _place(self):
        """Greedy-by-size placement of every graph's arena tensors (graphs run one at a time)."""
        for gc in self.graphs.values():
            placed = []
            for members, first, last, size in sorted(gc.plan, key=lambda x: -x[3]):
                offset = 0
                for (o2, s2, f2, l2) in sorted(placed):
                    if l2 < first or f2 > last:
                        continue
                    if offset + size <= o2:
                        break
                    offset = max(offset, o2 + s2)
                placed.append((offset, size, first, last))
                for m in members:
                    gc.where[m] = f"((int8_t *)(tc_arena + {offset}))"
                    if gc.g.tensors[m].dtype == "int32":
                        gc.where[m] = f"((int32_t *)(void *)(tc_arena + {offset}))"
                self.arena_bytes = max(self.arena_bytes, offset + size)
            gc.arena_placed = placed

    # -- lowering ---------------------------------------------------------------------------

    def _lower(self, gc):
        g = gc.g
        # DEQUANTIZE -> QUANTIZE pairs (int8 -> float -> int8, what the converter leaves around a
        # fake-quant op on an input) fuse into one int8 table; the float tensor never exists.
        gc.fused = {}
        for op in g.ops:
            if op.name == "DEQUANTIZE":
                f = op.outputs[0]
                users = [u for u in g.ops if f in u.inputs]
                if f in g.outputs or not users or any(u.name != "QUANTIZE" for u in users):
                    raise TinyCapError(f"{g.path}: op #{op.index} DEQUANTIZE",
                                       "float tensors are not supported (only DEQUANTIZE feeding QUANTIZE fuses)")
                gc.fused[f] = op
        self._storage(gc)
        gc.pending = []
        for op in gc.g.ops:
            lower = getattr(self, f"_op_{op.name.lower()}")
            gc.pending.append((op, lower(gc, op)))

    def _emit(self, gc):
        g = gc.g
        lines = []
        refs = {f"t{i}": gc.where.get(i, "0") for i in range(len(g.tensors))}
        for op, stmts in gc.pending:
            if stmts:
                lines.append(f'  TC_OP_HOOK("{gc.p[3:]}", {op.index}, "{op.name}");')
            for s in stmts:
                lines.append("  " + s.format(**refs))
        for src, dst in gc.copies:
            lines.append(f"  memcpy({gc.where[dst]}, {gc.where[src]}, {g.tensors[dst].nbytes});")
        return lines

    def _t(self, gc, i):
        return gc.g.tensors[i]

    def _ref(self, gc, i):
        t = gc.g.tensors[i]
        return gc.tensor_const(t) if t.data is not None else "{t%d}" % i

    def _op_fully_connected(self, gc, op):
        x, w = self._t(gc, op.inputs[0]), self._t(gc, op.inputs[1])
        b = self._t(gc, op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        y = self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} FULLY_CONNECTED"
        if w.data is None or w.dtype != "int8" or x.dtype != "int8" or y.dtype != "int8":
            raise TinyCapError(where, "needs int8 input/output and constant int8 weights")
        if np.any(w.zero_point != 0):
            raise TinyCapError(where, "weights must be symmetric (zero point 0), as TFLM requires")
        n, k = w.shape
        W = w.data.astype(np.int64)
        bias = b.data.astype(np.int64) if b is not None else np.zeros(n, np.int64)
        bias_eff = bias - x.zp * W.sum(1)
        if np.any(np.abs(bias_eff) >= 2**31):
            raise TinyCapError(where, "folded bias overflows int32")
        n4, k4 = -(-n // 4) * 4, -(-k // 16) * 16  # DSP loop: 16 inputs per iteration
        self.fc_max_k4 = max(self.fc_max_k4, k4)
        Wp = np.zeros((n4, k4), np.int8)
        Wp[:n, :k] = w.data
        Wp = Wp.reshape(n4 // 4, 4, k4 // 4, 4).transpose(0, 2, 1, 3)
        if len(w.scale) > 1:  # per channel (PopulateConvolutionQuantizationParams: double products)
            reals = [float(x.s) * float(ws) / float(y.s) for ws in w.scale]
        else:  # GetQuantizedConvolutionMultipler: float product, then double
            reals = [float(np.float32(x.s * w.s)) / float(y.s)]
        qm = [quantize_multiplier(r) for r in reals]
        act = getattr(op.options, "fusedActivationFunction", 0) if op.options is not None else 0
        lo, hi = activation_range(act, y.s, y.zp, where)
        name = f"op{op.index}"
        wn = gc.const("int8_t", f"{name}_w", Wp, align=16)
        fast = int(all(sh <= 0 for _, sh in qm))
        rows = []
        for r in range(n):
            m, sh = qm[r if len(qm) > 1 else 0]
            rows.append((int(bias_eff[r]), m, -sh, (1 << (-sh - 1)) if sh < 0 else 0) if fast else (int(bias_eff[r]), m, sh, 0))
        rn = gc.const("int32_t", f"{name}_rq", np.array(rows, np.int64))
        gc.data.append(f"static const tc_fc_params {gc.p}_{name} = {{{wn}, {rn}, {fast}, {k}, {k4}, {n}, {y.zp}, {lo}, {hi}}};\n")
        batches = x.size // k
        return [f"tc_k_fully_connected(&{gc.p}_{name}, {batches}, {self._ref(gc, x.index)}, {self._ref(gc, y.index)}, tc_fc_scratch);"]

    def _binary(self, gc, op):
        a, b, y = self._t(gc, op.inputs[0]), self._t(gc, op.inputs[1]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} {op.name}"
        if not (a.dtype == b.dtype == y.dtype == "int8"):
            raise TinyCapError(where, "only int8 inputs and output are supported")
        bc = _bcast(y.shape, a.shape, b.shape)
        if bc is None:
            raise TinyCapError(where, "more than 4 dimensions")
        o, s1, s2 = bc
        flat = int(tuple(a.shape) == tuple(b.shape) == tuple(y.shape) or (a.size == b.size == y.size))
        name = f"{gc.p}_op{op.index}_bc"
        arrays = ", ".join("{" + ", ".join(map(str, v)) + "}" for v in (o, s1, s2))
        bcast = (name, f"static const tc_bcast {name} = {{{arrays}, {flat}, {y.size}}};\n")
        act = getattr(op.options, "fusedActivationFunction", 0) if op.options is not None else 0
        return a, b, y, bcast, activation_range(act, y.s, y.zp, where)

    def _op_add(self, gc, op, sign=1):
        a, b, y, bc, (lo, hi) = self._binary(gc, op)
        twice_max = 2.0 * float(max(a.s, b.s))
        m1, s1 = quantize_multiplier(float(a.s) / twice_max)
        m2, s2 = quantize_multiplier(float(b.s) / twice_max)
        mo, so = quantize_multiplier(twice_max / ((1 << 20) * float(y.s)))
        name = f"{gc.p}_op{op.index}"
        gc.data.append(
            f"static const tc_add_params {name} = {{{-a.zp}, {-b.zp}, {y.zp}, {m1}, {m2}, {mo}, {s1}, {s2}, {so}, "
            f"{sign}, {lo}, {hi}}};\n"
        )
        if a.size == b.size == y.size >= ADD_TABLE_MIN:  # long, no broadcast: input terms from tables
            tables = []
            for zp, m, s in ((a.zp, m1, s1), (b.zp, m2, s2)):
                key = ("ADD_TERM", zp, m, s)
                if key not in gc.luts:
                    terms = [mbqm((q - zp) * (1 << 20), m, s) for q in range(-128, 128)]
                    gc.luts[key] = gc.const("int32_t", f"addterm{len(gc.luts)}", terms)
                tables.append(gc.luts[key])
            return [f"tc_k_add_tables(&{name}, {tables[0]}, {tables[1]}, {y.size}, {self._ref(gc, a.index)}, "
                    f"{self._ref(gc, b.index)}, {self._ref(gc, y.index)});"]
        gc.data.append(bc[1])
        return [f"tc_k_add(&{name}, &{bc[0]}, {self._ref(gc, a.index)}, {self._ref(gc, b.index)}, {self._ref(gc, y.index)});"]

    def _op_sub(self, gc, op):
        return self._op_add(gc, op, sign=-1)

    def _op_mul(self, gc, op):
        a, b, y, bc, (lo, hi) = self._binary(gc, op)
        m, s = quantize_multiplier(float(a.s) * float(b.s) / float(y.s))
        name = f"{gc.p}_op{op.index}"
        gc.data.append(f"static const tc_mul_params {name} = {{{-a.zp}, {-b.zp}, {y.zp}, {m}, {s}, {lo}, {hi}}};\n")
        gc.data.append(bc[1])
        return [f"tc_k_mul(&{name}, &{bc[0]}, {self._ref(gc, a.index)}, {self._ref(gc, b.index)}, {self._ref(gc, y.index)});"]

    def _lut(self, gc, op):
        x, y = self._t(gc, op.inputs[0]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} {op.name}"
        if not (x.dtype == y.dtype == "int8"):
            raise TinyCapError(where, "only int8 -> int8 is supported")
        key = (op.name, float(x.s), x.zp, float(y.s), y.zp)
        if key not in gc.luts:
            table = lut_from_tflm(op.name, x, y, op.options)
            gc.luts[key] = gc.const("int8_t", f"lut{len(gc.luts)}", table)
        return [f"tc_k_lut({gc.luts[key]}, {x.size}, {self._ref(gc, x.index)}, {self._ref(gc, y.index)});"]

    _op_logistic = _op_tanh = _lut

    def _op_quantize(self, gc, op):
        x = self._t(gc, op.inputs[0])
        if x.index not in gc.fused:
            return self._lut(gc, op)
        deq = gc.fused[x.index]  # int8 -> float -> int8 as one table, computed by TFLM on both ops
        src, y = self._t(gc, deq.inputs[0]), self._t(gc, op.outputs[0])
        if not (src.dtype == y.dtype == "int8"):
            raise TinyCapError(f"{gc.g.path}: op #{op.index} QUANTIZE", "only int8 -> float -> int8 chains are supported")
        key = ("DEQUANTIZE+QUANTIZE", float(src.s), src.zp, float(y.s), y.zp)
        if key not in gc.luts:
            t = [dict(shape=(256,), dtype="int8", scale=src.scale[:1], zp=src.zero_point[:1]),
                 dict(shape=(256,), dtype="float32"),
                 dict(shape=(256,), dtype="int8", scale=y.scale[:1], zp=y.zero_point[:1])]
            model = build_model(t, [("DEQUANTIZE", [0], [1], None), ("QUANTIZE", [1], [2], None)], [0], [2])
            table = tflm_run(model, [np.arange(-128, 128, dtype=np.int8)])[0].astype(np.int8)
            gc.luts[key] = gc.const("int8_t", f"lut{len(gc.luts)}", table)
        return [f"tc_k_lut({gc.luts[key]}, {y.size}, {self._ref(gc, src.index)}, {self._ref(gc, y.index)});"]

    def _op_dequantize(self, gc, op):
        return []  # fused into the QUANTIZE that reads it

    def _op_batch_matmul(self, gc, op):
        a, b, y = self._t(gc, op.inputs[0]), self._t(gc, op.inputs[1]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} BATCH_MATMUL"
        if not (a.dtype == b.dtype == y.dtype == "int8") or len(a.shape) < 2 or len(b.shape) < 2:
            raise TinyCapError(where, "only int8 operands of rank >= 2 are supported")
        adj_x = bool(getattr(op.options, "adjX", False)) if op.options is not None else False
        adj_y = bool(getattr(op.options, "adjY", False)) if op.options is not None else False
        m, k = (a.shape[-1], a.shape[-2]) if adj_x else (a.shape[-2], a.shape[-1])
        k2, n = (b.shape[-1], b.shape[-2]) if adj_y else (b.shape[-2], b.shape[-1])
        ba, bb = int(np.prod(a.shape[:-2])), int(np.prod(b.shape[:-2]))
        if k != k2 or (ba != bb and 1 not in (ba, bb)):
            raise TinyCapError(where, f"shapes {a.shape} x {b.shape} not supported")
        mult, shift = quantize_multiplier(float(np.float32(a.s * b.s)) / float(y.s))
        name = f"{gc.p}_op{op.index}"
        gc.data.append(
            f"static const tc_bmm_params {name} = {{{max(ba, bb)}, {m}, {k}, {n}, {0 if ba == 1 else m * k}, "
            f"{0 if bb == 1 else k * n}, {int(adj_x)}, {int(adj_y)}, {-a.zp}, {-b.zp}, {y.zp}, {mult}, {shift}}};\n"
        )
        return [f"tc_k_batch_matmul(&{name}, {self._ref(gc, a.index)}, {self._ref(gc, b.index)}, {self._ref(gc, y.index)});"]

    def _op_mean(self, gc, op):
        x, ax, y = self._t(gc, op.inputs[0]), self._t(gc, op.inputs[1]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} {op.name}"
        axes = sorted({int(v) % len(x.shape) for v in np.atleast_1d(ax.data)})
        if x.dtype != "int8" or y.dtype != "int8" or len(axes) != 1:
            raise TinyCapError(where, "only int8 over a single axis is supported")
        a = axes[0]
        count = x.shape[a]
        m, sh = quantize_multiplier(float(x.s) / float(y.s))
        if op.name == "MEAN":  # 1/count folded into the multiplier, as TFLM
            fold = min(count.bit_length() - 1, 32, 31 + sh)
            m, sh = (m << fold) // count, sh - fold
        name = f"{gc.p}_op{op.index}"
        gc.data.append(
            f"static const tc_mean_params {name} = {{{int(np.prod(x.shape[:a]))}, {count}, "
            f"{int(np.prod(x.shape[a + 1:]))}, {x.zp}, {m}, {sh}, {y.zp}}};\n"
        )
        return [f"tc_k_mean(&{name}, {self._ref(gc, x.index)}, {self._ref(gc, y.index)});"]

    _op_sum = _op_mean

    def _op_gather(self, gc, op):
        p, idx, y = self._t(gc, op.inputs[0]), self._t(gc, op.inputs[1]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} GATHER"
        axis = getattr(op.options, "axis", 0) if op.options is not None else 0
        if axis != 0 or p.dtype != "int8" or idx.dtype != "int32":
            raise TinyCapError(where, "only axis 0 of an int8 table with int32 indices is supported")
        rows = p.shape[0]
        row_len = p.size // rows
        table = self._ref(gc, p.index) if p.data is None else gc.tensor_const(p)
        return [f"tc_k_gather({table}, {rows}, {row_len}, {p.zp}, {self._ref(gc, idx.index)}, {idx.size}, {self._ref(gc, y.index)});"]

    def _op_softmax(self, gc, op):
        x, y = self._t(gc, op.inputs[0]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} SOFTMAX"
        if not (x.dtype == y.dtype == "int8") or y.zp != -128 or float(y.s) != 1.0 / 256:
            raise TinyCapError(where, "needs int8 in/out with output scale 1/256, zero point -128 (as TFLM)")
        beta = float(np.float32(op.options.beta)) if op.options is not None else 1.0
        real = min(beta * float(x.s) * float(1 << (31 - 5)), float((1 << 31) - 1))
        m, shift = quantize_multiplier(real)
        radius = math.floor(1.0 * ((1 << 5) - 1) * (1 << (31 - 5)) / (1 << shift))
        depth = x.shape[-1]
        name = f"{gc.p}_op{op.index}"
        gc.data.append(f"static const tc_softmax_params {name} = {{{m}, {shift}, {-radius}}};\n")
        return [f"tc_k_softmax(&{name}, {x.size // depth}, {depth}, {self._ref(gc, x.index)}, {self._ref(gc, y.index)});"]

    def _op_concatenation(self, gc, op):
        y = self._t(gc, op.outputs[0])
        axis = op.options.axis % len(y.shape)
        if getattr(op.options, "fusedActivationFunction", 0):
            raise TinyCapError(f"{gc.g.path}: op #{op.index} CONCATENATION", "fused activation not supported")
        for i in op.inputs:
            t = self._t(gc, i)
            if t.dtype != y.dtype or (t.dtype == "int8" and (float(t.s) != float(y.s) or t.zp != y.zp)):
                raise TinyCapError(f"{gc.g.path}: op #{op.index} CONCATENATION",
                                   "inputs must share the output's type and quantisation (as TFLM requires)")
        outer = int(np.prod(y.shape[:axis]))
        dst_step = int(np.prod(y.shape[axis:])) * y.nbytes // y.size
        stmts, off = [], 0
        for i in op.inputs:
            t = self._t(gc, i)
            ln = int(np.prod(t.shape[axis:])) * t.nbytes // t.size
            src = self._ref(gc, i) if t.data is None else gc.tensor_const(t)
            stmts.append(f"tc_k_copy({outer}, {ln}, (const int8_t *){src}, {ln}, (int8_t *){self._ref(gc, y.index)} + {off}, {dst_step});")
            off += ln
        return stmts

    def _slice(self, gc, op, x, y, begin, where):
        """Copy y = x[begin : begin + y.shape] when only one axis is cut."""
        cut = [a for a in range(len(x.shape)) if y.shape[a] != x.shape[a] if len(y.shape) == len(x.shape)]
        if len(y.shape) != len(x.shape) or len(cut) > 1:
            raise TinyCapError(where, f"slice {x.shape} -> {y.shape} not supported (one axis only)")
        axis = cut[0] if cut else 0
        item = x.nbytes // x.size
        inner = int(np.prod(x.shape[axis + 1:])) * item
        outer = int(np.prod(x.shape[:axis]))
        ln = y.shape[axis] * inner
        return (f"tc_k_copy({outer}, {ln}, (const int8_t *){self._ref(gc, x.index)} + {begin[axis] * inner}, "
                f"{x.shape[axis] * inner}, (int8_t *){self._ref(gc, y.index)}, {ln});")

    def _op_split(self, gc, op):
        ax_t, x = self._t(gc, op.inputs[0]), self._t(gc, op.inputs[1])
        return self._split(gc, op, x, int(ax_t.data.ravel()[0]))

    def _op_split_v(self, gc, op):
        x, ax_t = self._t(gc, op.inputs[0]), self._t(gc, op.inputs[2])
        return self._split(gc, op, x, int(ax_t.data.ravel()[0]))

    def _split(self, gc, op, x, axis):
        where = f"{gc.g.path}: op #{op.index} {op.name}"
        axis %= len(x.shape)
        stmts, start = [], 0
        for o in op.outputs:
            y = self._t(gc, o)
            begin = [0] * len(x.shape)
            begin[axis] = start
            stmts.append(self._slice(gc, op, x, y, begin, where))
            start += y.shape[axis]
        return stmts

    def _op_strided_slice(self, gc, op):
        x, y = self._t(gc, op.inputs[0]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} STRIDED_SLICE"
        begin, strides = self._t(gc, op.inputs[1]).data, self._t(gc, op.inputs[3]).data
        o = op.options
        if np.any(strides != 1) or (o is not None and (o.ellipsisMask or o.newAxisMask or o.shrinkAxisMask)):
            raise TinyCapError(where, "only unit strides without ellipsis/new-axis/shrink masks are supported")
        b = [0 if (o is not None and o.beginMask >> a & 1) else int(v) % max(x.shape[a], 1) for a, v in enumerate(begin)]
        return [self._slice(gc, op, x, y, b, where)]

    def _op_slice(self, gc, op):
        x, y = self._t(gc, op.inputs[0]), self._t(gc, op.outputs[0])
        return [self._slice(gc, op, x, y, [int(v) for v in self._t(gc, op.inputs[1]).data], f"{gc.g.path}: op #{op.index} SLICE")]

    def _alias(self, gc, op):
        return []

    _op_reshape = _op_squeeze = _op_expand_dims = _alias

    # -- output ------------------------------------------------------------------------------

    def write(self, out_dir):
        self._place()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        h = ["/* Generated by tinycap/firmware.py — do not edit. */", "#ifndef TC_GRAPHS_H", "#define TC_GRAPHS_H",
             "#include <stdint.h>", "", f"#define TC_ARENA_BYTES {max(self.arena_bytes, 16)}",
             f"#define TC_FC_SCRATCH_BYTES {self.fc_max_k4 * 2}", ""]
        c = ["/* Generated by tinycap/firmware.py — do not edit. */", "#include <string.h>",
             '#include "tc_kernels.h"', '#include "tc_graphs.h"', "",
             "static int8_t tc_arena[TC_ARENA_BYTES] __attribute__((aligned(16), unused));",
             f"static uint32_t tc_fc_scratch[{self.fc_max_k4 // 2}] __attribute__((unused)); /* FC scratch, passed in */", ""]
        for name, gc in self.graphs.items():
            g = gc.g
            ins = [g.tensors[i] for i in g.inputs]
            outs = [g.tensors[i] for i in g.outputs]
            h.append(f"/* {name}: inputs {', '.join(f'{t.name} {t.dtype}{list(t.shape)}' for t in ins)}; "
                     f"outputs {', '.join(f'{t.name} {t.dtype}{list(t.shape)}' for t in outs)} */")
            h.append(f"void tc_{name}_run(const void *const *in, void *const *out);")
            h.append(f"#define TC_{name.upper()}_NUM_INPUTS {len(ins)}")
            h.append(f"#define TC_{name.upper()}_NUM_OUTPUTS {len(outs)}")
            h.append("")
            c.extend(gc.data)
            c.append(f"void tc_{name}_run(const void *const *in, void *const *out) {{")
            c.append("  (void)in; (void)out;")
            c.extend(self._emit(gc))
            c.append("}\n")
        # generic table for the graph test harness
        h.append("typedef struct { const char *name; void (*run)(const void *const *, void *const *);"
                 " int n_in, n_out; const int32_t *in_bytes, *out_bytes; } tc_graph_info;")
        h.append("extern const tc_graph_info tc_graph_table[];")
        h.append(f"#define TC_NUM_GRAPHS {len(self.graphs)}")
        h.append("#endif")
        entries = []
        for name, gc in self.graphs.items():
            g = gc.g
            c.append(f"static const int32_t tc_{name}_in_bytes[] = {{{', '.join(str(g.tensors[i].nbytes) for i in g.inputs)}}};")
            c.append(f"static const int32_t tc_{name}_out_bytes[] = {{{', '.join(str(g.tensors[i].nbytes) for i in g.outputs)}}};")
            entries.append(f'  {{"{name}", tc_{name}_run, {len(g.inputs)}, {len(g.outputs)}, tc_{name}_in_bytes, tc_{name}_out_bytes}}')
        c.append("const tc_graph_info tc_graph_table[] = {\n" + ",\n".join(entries) + "\n};")
        (out_dir / "tc_graphs.h").write_text("\n".join(h) + "\n")
        (out_dir / "tc_graphs.c").write_text("\n".join(c) + "\n")


def _ctype(t):
    return {"int8": "int8_t", "int32": "int32_t"}.get(t.dtype, "int8_t")


def lut_from_tflm(op_name, x, y, opts):
    """The 256 outputs of an elementwise int8 op for inputs -128..127, computed by TFLM."""
    t = [dict(shape=(256,), dtype="int8", scale=x.scale[:1], zp=x.zero_point[:1]),
         dict(shape=(256,), dtype="int8", scale=y.scale[:1], zp=y.zero_point[:1])]
    model = build_model(t, [(op_name, [0], [1], opts)], [0], [1])
    return tflm_run(model, [np.arange(-128, 128, dtype=np.int8)])[0].astype(np.int8)


# ---------------------------------------------------------------------------------------------
# the MicroCap model: two graphs + decode-loop glue + vocabulary

POOLER_FILE, DECODER_FILE = "microcap_pooler_int8.tflite", "microcap_decoder_int8.tflite"
POOLER_IO = {"inputs": ["frames"], "outputs": ["h0", "context"]}  # + "weights" (attention pooling)
DECODER_IO = {"inputs": ["token", "h", "context"], "outputs": ["logits", "h_new"]}


def _io(quant, key, where):
    """quant.json's inputs/outputs of model `key`, checked to hold the names the loop needs."""
    try:
        entry = quant["models"][key]
        ios = {kind: [d["name"] for d in entry[kind]] for kind in ("inputs", "outputs")}
    except (KeyError, TypeError):
        raise TinyCapError(where, f"no models.{key} inputs/outputs with names") from None
    need = POOLER_IO if key.startswith("pooler") else DECODER_IO
    for kind in ("inputs", "outputs"):
        missing = [n for n in need[kind] if n not in ios[kind]]
        if missing:
            raise TinyCapError(where, f"models.{key}.{kind} lacks {', '.join(missing)}")
    return entry


def _check_io(graph, entry, where):
    """The .tflite graph's I/O (order, shape, type, quantisation) must be what quant.json says."""
    for kind, idx in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        if len(idx) != len(entry[kind]):
            raise TinyCapError(where, f"{len(idx)} {kind} in the graph, {len(entry[kind])} in quant.json")
        for i, d in zip(idx, entry[kind]):
            t = graph.tensors[i]
            if list(t.shape) != list(d["shape"]) or t.dtype != d["dtype"] or (
                t.dtype == "int8" and (abs(float(t.s) - d["scale"]) > 1e-12 * abs(d["scale"]) or t.zp != d["zero_point"])
            ):
                raise TinyCapError(where, f"{kind[:-1]} {d['name']} differs from quant.json ({t.dtype}{list(t.shape)})")


def _c_string(s):
    out = []
    for ch in s.encode("utf-8"):
        c = chr(ch)
        out.append(c if 32 <= ch < 127 and c not in '"\\?' else f"\\{ch:03o}")
    return '"' + "".join(out) + '"'


def generate(int8_dir, vocab_path, out_dir):
    """data/int8 + vocab.json -> C sources in out_dir (tc_graphs.c/.h, tc_model.c/.h).
    Returns a summary dict (sizes, ops, shapes)."""
    from tinycap.io import read_json
    from tinycap.vocab import Vocab

    int8_dir, out_dir = Path(int8_dir), Path(out_dir)
    quant_path = int8_dir / "quant.json"
    quant = read_json(quant_path)
    vocab = Vocab.load(vocab_path)
    entries = {"pooler": _io(quant, "pooler_int8", quant_path), "decoder": _io(quant, "decoder_int8", quant_path)}
    for key in ("max_steps", "bos", "eos"):
        if not isinstance(quant.get(key), int):
            raise TinyCapError(quant_path, f"missing integer '{key}'")
    cg = Codegen()
    graphs = {}
    for name, fname in (("pooler", POOLER_FILE), ("decoder", DECODER_FILE)):
        path = int8_dir / fname
        if not path.is_file():
            raise TinyCapError(path, "file not found (run quantize_int8)")
        graphs[name] = cg.add(name, path.read_bytes(), path)
        _check_io(graphs[name], entries[name], path)
    pin = {d["name"]: d for d in entries["pooler"]["inputs"]}
    pout = {d["name"]: d for d in entries["pooler"]["outputs"]}
    din = {d["name"]: d for d in entries["decoder"]["inputs"]}
    dout = {d["name"]: d for d in entries["decoder"]["outputs"]}
    # the loop copies int8 tensors between graphs unchanged: their quantisation must agree
    for a, b, what in ((pout["h0"], din["h"], "pooler h0 / decoder h"), (dout["h_new"], din["h"], "decoder h_new / h"),
                       (pout["context"], din["context"], "pooler context / decoder context")):
        if a["shape"] != b["shape"] or not same_quantisation(a, b):
            raise TinyCapError(quant_path, f"{what}: quantisation or shape differs; the device loop copies them unchanged")
    _, T, D = pin["frames"]["shape"]
    H = din["h"]["shape"][-1]
    C = din["context"]["shape"][-1]
    V = dout["logits"]["shape"][-1]
    if V != len(vocab):
        raise TinyCapError(quant_path, f"logits have {V} entries, {vocab_path} has {len(vocab)} tokens")
    if din["token"]["dtype"] != "int32" or any(d["dtype"] != "int8" for d in (pin["frames"], din["h"], din["context"], dout["logits"])):
        raise TinyCapError(quant_path, "expected int32 token and int8 frames/h/context/logits")
    cg.write(out_dir)

    def order(entry, kind, exprs):
        return ", ".join(exprs.get(d["name"], "0") for d in entry[kind])

    pool_out = {"h0": "h0", "context": "context", "weights": "tc_pool_weights"}
    step_in = {"token": "&token", "h": "h", "context": "context"}
    step_out = {"logits": "logits", "h_new": "h_new"}
    extra = [d for d in entries["pooler"]["outputs"] if d["name"] not in pool_out]
    if extra:
        raise TinyCapError(quant_path, f"unexpected pooler output {extra[0]['name']}")
    weights = pout.get("weights")
    words = list(vocab.tokens)
    text_bytes = sum(len(w.encode("utf-8")) + 1 for w in words)
    hdr = f"""/* Generated by tinycap/firmware.py from {int8_dir.name}/ and {Path(vocab_path).name} — do not edit. */
#ifndef TC_MODEL_H
#define TC_MODEL_H
#include <stdint.h>

#define TC_NUM_FRAMES {T}
#define TC_DIM {D}
#define TC_HIDDEN {H}
#define TC_CONTEXT {C}
#define TC_VOCAB_SIZE {V}
#define TC_MAX_LEN {quant["max_steps"]} /* decoder steps at most = tokens at most (EOS not written) */
#define TC_BOS {quant["bos"]}
#define TC_EOS {quant["eos"]}
#define TC_FRAMES_SCALE {float(np.float32(pin["frames"]["scale"])).hex()}f
#define TC_FRAMES_ZERO_POINT {pin["frames"]["zero_point"]}
#define TC_LOGITS_SCALE {float(np.float32(dout["logits"]["scale"])).hex()}f
#define TC_LOGITS_ZERO_POINT {dout["logits"]["zero_point"]}
#define TC_LOGITS_OFFSET {float(np.float32(quant["logits_window"]["float_range"][0])).hex()}f /* float logit = (q - zero point) * scale + offset; q = -128: at or below offset */

/* frames (T, D) int8 -> h0 (H), context (C): the pooler graph */
void tc_model_pool(const int8_t *frames, int8_t *h0, int8_t *context);
/* one decoder step: token, h (H), context (C) -> logits (V), h_new (H) */
void tc_model_step(int32_t token, const int8_t *h, const int8_t *context, int8_t *logits, int8_t *h_new);
/* vocabulary in flash: the word of each token id */
extern const char *const tc_vocab[TC_VOCAB_SIZE];
#endif
"""
    src = f"""/* Generated by tinycap/firmware.py — do not edit. */
#include "tc_graphs.h"
#include "tc_model.h"

{f"static int8_t tc_pool_weights[{int(np.prod(weights['shape']))}]; /* pooling weights: computed, unused by the loop */" if weights else ""}

void tc_model_pool(const int8_t *frames, int8_t *h0, int8_t *context) {{
  const void *in[1] = {{frames}};
  void *out[{len(entries["pooler"]["outputs"])}] = {{{order(entries["pooler"], "outputs", pool_out)}}};
  tc_pooler_run(in, out);
}}

void tc_model_step(int32_t token, const int8_t *h, const int8_t *context, int8_t *logits, int8_t *h_new) {{
  const void *in[3] = {{{order(entries["decoder"], "inputs", step_in)}}};
  void *out[2] = {{{order(entries["decoder"], "outputs", step_out)}}};
  tc_decoder_run(in, out);
}}

const char *const tc_vocab[TC_VOCAB_SIZE] = {{
  {("," + chr(10) + "  ").join(_c_string(w) for w in words)}
}};
"""
    (out_dir / "tc_model.h").write_text(hdr)
    (out_dir / "tc_model.c").write_text(src)
    vocab_bytes = text_bytes + 4 * len(words)  # words + one 32-bit pointer each on the M7
    return {
        "shapes": {"num_frames": T, "dim": D, "hidden": H, "context": C, "vocab_size": V, "max_len": quant["max_steps"]},
        "ops": sorted(cg.ops_used),
        "weight_bytes": cg.weight_bytes,
        "vocab_bytes": vocab_bytes,
        "arena_bytes": cg.arena_bytes,
        "fc_scratch_bytes": cg.fc_max_k4 * 2,
        "loop_buffer_bytes": 2 * H + C + V + (int(np.prod(weights["shape"])) if weights else 0),
    }


# ---------------------------------------------------------------------------------------------
# host build and parity against TFLM

HOST_DIR = ROOT / "firmware" / "host"
HOST_CFLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off"]


def build_host(gen_dir, out_path, main="host_main.c"):
    """gcc: firmware/runtime + generated sources + firmware/host/<main> -> out_path."""
    if shutil.which("gcc") is None:
        raise TinyCapError("gcc", "not found; install the Debian package gcc")
    gen_dir, out_path = Path(gen_dir), Path(out_path)
    # the portable reference kernels only (tc_kernels_cortexm.c is the M7 build's)
    srcs = [HOST_DIR / main, RUNTIME_DIR / "tc_kernels.c", RUNTIME_DIR / "tinycap.c", *sorted(gen_dir.glob("*.c"))]
    if main == "graph_main.c":  # graph-only builds (kernel tests) have no tc_model.c
        srcs = [HOST_DIR / main, RUNTIME_DIR / "tc_kernels.c", gen_dir / "tc_graphs.c"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", *HOST_CFLAGS, f"-I{RUNTIME_DIR}", f"-I{gen_dir}", *map(str, srcs), "-o", str(out_path)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        first = next((ln for ln in p.stderr.splitlines() if "error" in ln), p.stderr.strip()[:300])
        raise TinyCapError(out_path.name, f"host build failed: {first}")
    return out_path


def run_host(host_bin, clips_int8, logits=False):
    """Caption int8 clips (N, T, D) with the host binary -> (tokens per clip, logits per clip or None)."""
    clips = np.ascontiguousarray(clips_int8, np.int8)
    cmd = [str(host_bin)] + (["-l"] if logits else [])
    p = subprocess.run(cmd, input=clips.tobytes(), capture_output=True)
    if p.returncode != 0:
        raise TinyCapError(host_bin, f"exit status {p.returncode}: {p.stderr.decode(errors='replace').strip()[:200]}")
    tokens, steps, all_logits = [], [], []
    for line in p.stdout.decode().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "L":
            steps.append(np.array(parts[2:], np.int16))
        elif parts[0] == "T":
            tokens.append([int(v) for v in parts[2:]])
            all_logits.append(np.stack(steps) if steps else np.zeros((0, 0), np.int16))
            steps = []
    if len(tokens) != len(clips):
        raise TinyCapError(host_bin, f"printed {len(tokens)} captions for {len(clips)} clips")
    return tokens, (all_logits if logits else None)


def tflm_reference(int8_dir, frame_emb):
    """Token ids and per-step int8 logits of every clip from the TFLM runtime.

    Tokens come from tinycap.quantize.TflmCaptioner (the quantize stage's loop); the logits from
    the same graphs stepped here along the same tokens (and their tokens must agree)."""
    from tinycap.quantize import DECODER, TflmCaptioner

    cap = TflmCaptioner(int8_dir)
    bos, eos = cap.quant["bos"], cap.quant["eos"]
    tokens, logits = [], []
    for clip in frame_emb:
        ref = cap.caption(clip)
        enc = cap.encode(clip)
        h, ctx, tok, steps, mine = enc["h0"], enc["context"], bos, [], []
        for _ in range(cap.max_steps):
            res = cap.graphs[DECODER](token=np.array([tok], np.int32), h=h, context=ctx)
            h = res["h_new"]
            steps.append(res["logits"][0].astype(np.int16))
            tok = int(np.argmax(res["logits"][0]))
            if tok == eos:
                break
            mine.append(tok)
        if mine != ref:
            raise TinyCapError(int8_dir, "TflmCaptioner and the stepped TFLM graphs disagree")
        tokens.append(ref)
        logits.append(np.stack(steps))
    return tokens, logits, cap


def parity(host_bin, int8_dir, frame_emb):
    """Host build vs TFLM on float frame embeddings (N, T, D): identical token sequences, and the
    histogram of |logit difference| (LSB) over the steps both ran."""
    from tinycap.quantize import quantize_frames

    ref_tokens, ref_logits, cap = tflm_reference(int8_dir, frame_emb)
    clips = quantize_frames(np.asarray(frame_emb, np.float32), cap.frame_scale, cap.frame_zero_point)
    host_tokens, host_logits = run_host(host_bin, clips, logits=True)
    hist = {}
    mismatches = []
    for i, (a, b, la, lb) in enumerate(zip(host_tokens, ref_tokens, host_logits, ref_logits)):
        if a != b:
            mismatches.append(i)
        n = min(len(la), len(lb))
        d = np.abs(la[:n].astype(int) - lb[:n].astype(int)).ravel()
        for v, c in zip(*np.unique(d, return_counts=True)):
            hist[int(v)] = hist.get(int(v), 0) + int(c)
    total = sum(hist.values())
    return {
        "clips": len(ref_tokens),
        "token_sequences_identical": len(ref_tokens) - len(mismatches),
        "mismatched_clips": mismatches,
        "logit_abs_diff_histogram": {str(k): v for k, v in sorted(hist.items())},
        "logits_compared": total,
        "max_logit_abs_diff": max(hist) if hist else 0,
        "mean_tokens": float(np.mean([len(t) for t in ref_tokens])) if ref_tokens else 0.0,
        "hit_max_len": int(sum(len(t) == cap.max_steps for t in ref_tokens)),
    }


# ---------------------------------------------------------------------------------------------
# exported TFLM application (firmware/tflm_app + generated model sources)

_RESOLVER_NAMES = {"BATCH_MATMUL": "BatchMatMul", "SPLIT_V": "SplitV"}


def _resolver_method(op):
    return "Add" + _RESOLVER_NAMES.get(op, "".join(w.capitalize() for w in op.split("_")))


def _cc_bytes(name, data, align=16):
    rows = [", ".join(f"0x{b:02x}" for b in data[i: i + 16]) for i in range(0, len(data), 16)]
    return f"alignas({align}) const unsigned char {name}[] = {{\n  " + ",\n  ".join(rows) + "\n};\n"


def export_tflm_app(int8_dir, vocab_path, sample_clip, out_dir):
    """firmware/tflm_app templates + generated model_data.cc/.h, model_settings.h, op_resolver.h."""
    from tinycap.io import read_json
    from tinycap.vocab import Vocab

    int8_dir, out_dir = Path(int8_dir), Path(out_dir)
    quant = read_json(int8_dir / "quant.json")
    vocab = Vocab.load(vocab_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("main.cc", "Makefile", "README.md"):
        shutil.copy2(TFLM_APP_DIR / name, out_dir / name)
    entries = {k: quant["models"][f"{k}_int8"] for k in ("pooler", "decoder")}
    pos = {k: {kind: {d["name"]: i for i, d in enumerate(entries[k][kind])} for kind in ("inputs", "outputs")} for k in entries}
    ops = sorted(set(entries["pooler"]["ops"]) | set(entries["decoder"]["ops"]))
    data = {k: (int8_dir / entries[k]["file"]).read_bytes() for k in entries}
    clip = np.asarray(sample_clip, np.int8).ravel()
    words = ",\n  ".join(_c_string(w) for w in vocab.tokens)
    (out_dir / "model_data.h").write_text(
        "// Generated by tinycap/firmware.py — do not edit.\n#ifndef TINYCAP_MODEL_DATA_H_\n#define TINYCAP_MODEL_DATA_H_\n"
        "#include <cstdint>\n\nextern const unsigned char g_pooler_model[];\nextern const unsigned char g_decoder_model[];\n"
        "extern const int8_t g_sample_clip[];\nextern const char* const kVocab[];\n\n#endif\n"
    )
    (out_dir / "model_data.cc").write_text(
        "// Generated by tinycap/firmware.py from data/int8 and data/guide/vocab.json — do not edit.\n"
        '#include "model_data.h"\n\n'
        + _cc_bytes("g_pooler_model", data["pooler"]) + "\n" + _cc_bytes("g_decoder_model", data["decoder"]) + "\n"
        + "// a test clip, int8 frame embeddings quantised with the pooler's input parameters\n"
        + f"const int8_t g_sample_clip[] = {{{', '.join(map(str, clip))}}};\n\n"
        + f"const char* const kVocab[] = {{\n  {words}\n}};\n"
    )
    _, T, D = entries["pooler"]["inputs"][0]["shape"]
    H = next(d for d in entries["decoder"]["inputs"] if d["name"] == "h")["shape"][-1]
    C = next(d for d in entries["decoder"]["inputs"] if d["name"] == "context")["shape"][-1]
    consts = {
        "kNumFrames": T, "kDim": D, "kHidden": H, "kContext": C, "kVocabSize": len(vocab),
        "kMaxSteps": quant["max_steps"], "kBos": quant["bos"], "kEos": quant["eos"],
        "kPoolerArenaBytes": entries["pooler"]["arena_bytes"], "kDecoderArenaBytes": entries["decoder"]["arena_bytes"],
        "kPoolerFrames": pos["pooler"]["inputs"]["frames"], "kPoolerH0": pos["pooler"]["outputs"]["h0"],
        "kPoolerContext": pos["pooler"]["outputs"]["context"], "kDecoderToken": pos["decoder"]["inputs"]["token"],
        "kDecoderH": pos["decoder"]["inputs"]["h"], "kDecoderContext": pos["decoder"]["inputs"]["context"],
        "kDecoderLogits": pos["decoder"]["outputs"]["logits"], "kDecoderHNew": pos["decoder"]["outputs"]["h_new"],
    }
    (out_dir / "model_settings.h").write_text(
        "// Generated by tinycap/firmware.py — do not edit.\n#ifndef TINYCAP_MODEL_SETTINGS_H_\n#define TINYCAP_MODEL_SETTINGS_H_\n\n"
        "// arenas: quant.json arena_bytes, the smallest arena the host TFLM runtime allocates and invokes each graph with\n"
        + "".join(f"constexpr int {k} = {v};\n" for k, v in consts.items()) + "\n#endif\n"
    )
    adds = "".join(f"  TF_LITE_ENSURE_STATUS(resolver.{_resolver_method(op)}());\n" for op in ops)
    (out_dir / "op_resolver.h").write_text(
        "// Generated by tinycap/firmware.py — do not edit. Only the ops of the two TinyCap graphs:\n"
        f"// {' '.join(ops)}\n#ifndef TINYCAP_OP_RESOLVER_H_\n#define TINYCAP_OP_RESOLVER_H_\n\n"
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
        f"constexpr int kNumOps = {len(ops)};\nusing TinyCapOpResolver = tflite::MicroMutableOpResolver<kNumOps>;\n\n"
        f"inline TfLiteStatus RegisterTinyCapOps(TinyCapOpResolver& resolver) {{\n{adds}  return kTfLiteOk;\n}}\n\n#endif\n"
    )
    return {"ops": ops, "arena_bytes": consts["kPoolerArenaBytes"] + consts["kDecoderArenaBytes"], "built": False}


# ---------------------------------------------------------------------------------------------
# the build_tflm stage


def build(int8_dir, vocab_path, embeddings_path, out_dir, cfg):
    """data/int8 -> out_dir (gen/, host/tc_host, tflm_app/, elf/); returns metrics/firmware.json.

    Parity: every clip of cfg.parity_splits captioned by the host build and by the TFLM runtime
    must give the same token sequence, else the build fails (a mismatch is a bug, not a figure)."""
    from tinycap import m7
    from tinycap.quantize import load_embeddings, quantize_frames

    out_dir = Path(out_dir)
    log.info("generating C sources from %s", int8_dir)
    info = generate(int8_dir, vocab_path, out_dir / "gen")
    host = build_host(out_dir / "gen", out_dir / "host" / "tc_host")
    frames, vids, splits, _ = load_embeddings(embeddings_path)
    picked = np.flatnonzero(np.isin(splits, cfg.parity_splits))
    if len(picked) == 0:
        raise TinyCapError(embeddings_path, f"no clips in splits {', '.join(cfg.parity_splits)} for the parity check")
    log.info("parity host build vs TFLM on %d clips (%s)", len(picked), ", ".join(cfg.parity_splits))
    report = parity(host, int8_dir, frames[picked])
    bad = report["clips"] - report["token_sequences_identical"]
    if bad:
        first = vids[picked[report["mismatched_clips"][0]]]
        raise TinyCapError(host, f"host build and TFLM disagree on {bad} of {report['clips']} clips (first: {first}): a firmware bug")
    if report["max_logit_abs_diff"] > 1:
        raise TinyCapError(host, f"logits differ from TFLM by up to {report['max_logit_abs_diff']} LSB (> 1): a firmware bug")
    quant = read_json(Path(int8_dir) / "quant.json")
    frames_io = quant["models"]["pooler_int8"]["inputs"][0]
    sample = quantize_frames(frames[picked[0]], frames_io["scale"], frames_io["zero_point"])
    app = export_tflm_app(int8_dir, vocab_path, sample, out_dir / "tflm_app")
    log.info("firmware ELFs (QEMU mps2-an500, STM32H743)")
    elf_sizes = m7.build_elfs(out_dir / "gen", RUNTIME_DIR, out_dir / "elf", sample_clip=sample)
    static_bytes = info["arena_bytes"] + info["fc_scratch_bytes"] + info["loop_buffer_bytes"]
    return {
        "ops": info["ops"],
        "shapes": info["shapes"],
        "weight_bytes": {"value": info["weight_bytes"], "method": "generated const arrays (weights, biases, "
                         "quantisation parameters, lookup tables) in gen/tc_graphs.c"},
        "vocab_bytes": {"value": info["vocab_bytes"], "method": "generated: word strings + a 32-bit pointer per word (Cortex-M7)"},
        "static_buffer_bytes": {"value": static_bytes, "method": "generated: activation arena planned by lifetime "
                                f"({info['arena_bytes']}) + FC input scratch ({info['fc_scratch_bytes']}) + decode-loop "
                                f"buffers h, h_new, context, logits, pooling weights ({info['loop_buffer_bytes']}); no heap"},
        "elf_sizes": elf_sizes,
        "parity": {**{k: v for k, v in report.items() if k != "mismatched_clips"}, "splits": list(cfg.parity_splits),
                   "method": "host build (gcc, portable C kernels) vs tflite_micro.runtime (TFLM) via "
                   "tinycap.quantize.TflmCaptioner; logits of every decoder step compared"},
        "tflm_app": {**app, "method": "exported sources only: TFLM C++ is not installable here, not compiled"},
    }
