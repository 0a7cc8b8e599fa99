"""C code generation for the firmware runtime: int8 .tflite graphs -> tc_graphs.c/.h.

Codegen turns each graph into one C function: weights, biases and quantisation parameters as
const arrays (flash), every intermediate tensor in one static arena planned by lifetime (no heap),
multipliers/shifts computed exactly as TFLM's Prepare() (tinycap.fixedpoint). Elementwise int8 ->
int8 ops (LOGISTIC, TANH, QUANTIZE, a DEQUANTIZE -> QUANTIZE pair) become 256-entry tables computed
by running TFLM itself on all 256 inputs: bit-exact by construction. LOWERINGS maps each op the
runtime supports to the method that lowers it: it is also the supported-op list, so an op missing
from it fails the build naming the op. CONV_2D / DEPTHWISE_CONV_2D call the tc_conv.h kernels with
tinycap.conv_prepare's parameters; tc_conv.h and the conv scratch appear only in code that uses them.
"""

import math
from pathlib import Path

import numpy as np

from tinycap import conv_prepare
from tinycap.errors import TinyCapError
from tinycap.fixedpoint import activation_range, multiply_by_quantized_multiplier, quantize_multiplier
from tinycap.int8 import tflm_run
from tinycap.tflite import build_model, load_graph

ADD_TABLE_MIN = 64  # ADD/SUB of at least this many elements read their input terms from 2 x 1 KB tables


def check_ops(graph):
    """Fail naming the first op the runtime lacks (bad input caught at build time)."""
    for op in graph.ops:
        if op.name not in LOWERINGS:
            raise TinyCapError(
                graph.path,
                f"op {op.name} (op #{op.index}) is not supported by the firmware runtime (supported: {', '.join(LOWERINGS)})",
            )


def _c_array(ctype, name, values, align=4, per_line=24):
    vals = [str(int(v)) for v in np.asarray(values).ravel()]
    lines = [", ".join(vals[i : i + per_line]) for i in range(0, len(vals), per_line)] or ["0"]
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
        self.conv_scratch = None  # (bytes, C expression) of the convolution needing the most scratch, if any

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
            if LOWERINGS[op.name] is Codegen._alias:
                parent[find(op.outputs[0])] = find(op.inputs[0])
        groups = {}
        for t in g.tensors:
            groups.setdefault(find(t.index), []).append(t.index)
        gc.copies = []  # (src tensor, dst tensor) for alias groups touching both an input and an output
        where = {}  # tensor -> C expression of its base pointer (int8_t* or const)
        arena_groups = []
        for members in groups.values():
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
                for o2, s2, f2, l2 in sorted(placed):
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
                    raise TinyCapError(
                        f"{g.path}: op #{op.index} DEQUANTIZE",
                        "float tensors are not supported (only DEQUANTIZE feeding QUANTIZE fuses)",
                    )
                gc.fused[f] = op
        self._storage(gc)
        gc.pending = []
        for op in gc.g.ops:
            gc.pending.append((op, LOWERINGS[op.name](self, gc, op)))

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
        return gc.tensor_const(t) if t.data is not None else f"{{t{i}}}"

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
        return [
            f"tc_k_fully_connected(&{gc.p}_{name}, {batches}, {self._ref(gc, x.index)}, {self._ref(gc, y.index)}, tc_fc_scratch);"
        ]

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
                    terms = [multiply_by_quantized_multiplier((q - zp) * (1 << 20), m, s) for q in range(-128, 128)]
                    gc.luts[key] = gc.const("int32_t", f"addterm{len(gc.luts)}", terms)
                tables.append(gc.luts[key])
            return [
                f"tc_k_add_tables(&{name}, {tables[0]}, {tables[1]}, {y.size}, {self._ref(gc, a.index)}, "
                f"{self._ref(gc, b.index)}, {self._ref(gc, y.index)});"
            ]
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
            t = [
                dict(shape=(256,), dtype="int8", scale=src.scale[:1], zp=src.zero_point[:1]),
                dict(shape=(256,), dtype="float32"),
                dict(shape=(256,), dtype="int8", scale=y.scale[:1], zp=y.zero_point[:1]),
            ]
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
        """MEAN over contiguous axes (global average pooling: (1, 2) of NHWC) or SUM over one axis:
        tc_k_mean with conv_prepare.mean_kernel's parameters (TFLM's Prepare)."""
        k = conv_prepare.mean_kernel(gc.g, op)
        name = f"{gc.p}_op{op.index}"
        gc.data.append(
            f"static const tc_mean_params {name} = {{{k.outer}, {k.axis}, {k.inner}, {k.in_zp}, {k.mult}, {k.shift}, {k.out_zp}}};\n"
        )
        return [f"tc_k_mean(&{name}, {self._ref(gc, op.inputs[0])}, {self._ref(gc, op.outputs[0])});"]

    def _op_conv(self, gc, op):
        """CONV_2D / DEPTHWISE_CONV_2D: parameters from conv_prepare (TFLM's Prepare), kernels of tc_conv.h;
        their scratch is the generated code's tc_conv_scratch, sized for the op needing the most (ConvKernel.scratch)."""
        k = conv_prepare.conv_kernel(gc.g, op)
        w = self._t(gc, op.inputs[1])
        wn = gc.tensor_const(w)  # OHWI / 1HWC, as stored in the .tflite
        bn = gc.tensor_const(self._t(gc, op.inputs[2])) if k.bias is not None else "0"
        name = f"op{op.index}"
        mn = gc.const("int32_t", f"{name}_mult", k.mult)
        sn = gc.const("int32_t", f"{name}_shift", k.shift)
        dims = [k.in_h, k.in_w, k.in_c, k.out_h, k.out_w, k.out_c, k.k_h, k.k_w, k.stride_h, k.stride_w, k.pad_h, k.pad_w]
        dims += [k.in_offset, k.out_offset, k.act_min, k.act_max]
        words = conv_prepare.cortexm_words(k)
        pk = "0" if words is None else gc.const("int32_t", f"{name}_packed", words)
        gc.data.append(
            f"static const tc_conv_params {gc.p}_{name} = {{{', '.join(map(str, dims))}, {wn}, {bn}, {mn}, {sn}, {pk}}};\n"
        )
        x, y = self._ref(gc, op.inputs[0]), self._ref(gc, op.outputs[0])
        if self.conv_scratch is None or k.scratch[0] > self.conv_scratch[0]:
            self.conv_scratch = k.scratch
        kernel = "tc_k_depthwise_conv2d" if k.kind == conv_prepare.KIND_DEPTHWISE else "tc_k_conv2d"
        return [f"{kernel}(&{gc.p}_{name}, {k.batches}, {x}, {y}, tc_conv_scratch);"]

    def _op_l2_normalization(self, gc, op):
        x, y = self._t(gc, op.inputs[0]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} L2_NORMALIZATION"
        if not (x.dtype == y.dtype == "int8") or y.zp != 0 or float(y.s) != 1.0 / 128:
            raise TinyCapError(where, "needs int8 in/out with output scale 1/128, zero point 0 (as TFLM)")
        if getattr(op.options, "fusedActivationFunction", 0):
            raise TinyCapError(where, "fused activation not supported (nor by TFLM)")
        depth = x.shape[-1]
        return [f"tc_k_l2_normalization({x.size // depth}, {depth}, {x.zp}, {self._ref(gc, x.index)}, {self._ref(gc, y.index)});"]

    def _op_gather(self, gc, op):
        p, idx, y = self._t(gc, op.inputs[0]), self._t(gc, op.inputs[1]), self._t(gc, op.outputs[0])
        where = f"{gc.g.path}: op #{op.index} GATHER"
        axis = getattr(op.options, "axis", 0) if op.options is not None else 0
        if axis != 0 or p.dtype != "int8" or idx.dtype != "int32":
            raise TinyCapError(where, "only axis 0 of an int8 table with int32 indices is supported")
        rows = p.shape[0]
        row_len = p.size // rows
        table = self._ref(gc, p.index) if p.data is None else gc.tensor_const(p)
        return [
            f"tc_k_gather({table}, {rows}, {row_len}, {p.zp}, {self._ref(gc, idx.index)}, {idx.size}, {self._ref(gc, y.index)});"
        ]

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
                raise TinyCapError(
                    f"{gc.g.path}: op #{op.index} CONCATENATION",
                    "inputs must share the output's type and quantisation (as TFLM requires)",
                )
        outer = int(np.prod(y.shape[:axis]))
        dst_step = int(np.prod(y.shape[axis:])) * y.nbytes // y.size
        stmts, off = [], 0
        for i in op.inputs:
            t = self._t(gc, i)
            ln = int(np.prod(t.shape[axis:])) * t.nbytes // t.size
            src = self._ref(gc, i) if t.data is None else gc.tensor_const(t)
            stmts.append(
                f"tc_k_copy({outer}, {ln}, (const int8_t *){src}, {ln}, (int8_t *){self._ref(gc, y.index)} + {off}, {dst_step});"
            )
            off += ln
        return stmts

    def _slice(self, gc, op, x, y, begin, where):
        """Copy y = x[begin : begin + y.shape] when only one axis is cut."""
        cut = [a for a in range(len(x.shape)) if y.shape[a] != x.shape[a] if len(y.shape) == len(x.shape)]
        if len(y.shape) != len(x.shape) or len(cut) > 1:
            raise TinyCapError(where, f"slice {x.shape} -> {y.shape} not supported (one axis only)")
        axis = cut[0] if cut else 0
        item = x.nbytes // x.size
        inner = int(np.prod(x.shape[axis + 1 :])) * item
        outer = int(np.prod(x.shape[:axis]))
        ln = y.shape[axis] * inner
        return (
            f"tc_k_copy({outer}, {ln}, (const int8_t *){self._ref(gc, x.index)} + {begin[axis] * inner}, "
            f"{x.shape[axis] * inner}, (int8_t *){self._ref(gc, y.index)}, {ln});"
        )

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

    # -- output ------------------------------------------------------------------------------

    def write(self, out_dir):
        self._place()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        h = [
            "/* Generated by tinycap/firmware.py — do not edit. */",
            "#ifndef TC_GRAPHS_H",
            "#define TC_GRAPHS_H",
            "#include <stdint.h>",
            "",
            f"#define TC_ARENA_BYTES {max(self.arena_bytes, 16)}",
            f"#define TC_FC_SCRATCH_BYTES {self.fc_max_k4 * 2}",
            "",
        ]
        conv = bool(self.ops_used & {"CONV_2D", "DEPTHWISE_CONV_2D"})
        c = [
            "/* Generated by tinycap/firmware.py — do not edit. */",
            "#include <string.h>",
            '#include "tc_kernels.h"',
            *(['#include "tc_conv.h"'] if conv else []),
            '#include "tc_graphs.h"',
            "",
            "static int8_t tc_arena[TC_ARENA_BYTES] __attribute__((aligned(16), unused));",
            f"static uint32_t tc_fc_scratch[{self.fc_max_k4 // 2}] __attribute__((unused)); /* FC scratch, passed in */",
            "",
        ]
        if conv:
            nbytes, expr = self.conv_scratch
            h[-1:-1] = [f"#define TC_CONV_SCRATCH_BYTES {nbytes}"]
            c[-1:-1] = [
                f"static uint32_t tc_conv_scratch[({expr} + 3) / 4] __attribute__((unused)); /* CONV_2D scratch, passed in */"
            ]
        for name, gc in self.graphs.items():
            g = gc.g
            ins = [g.tensors[i] for i in g.inputs]
            outs = [g.tensors[i] for i in g.outputs]
            h.append(
                f"/* {name}: inputs {', '.join(f'{t.name} {t.dtype}{list(t.shape)}' for t in ins)}; "
                f"outputs {', '.join(f'{t.name} {t.dtype}{list(t.shape)}' for t in outs)} */"
            )
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
        h.append(
            "typedef struct { const char *name; void (*run)(const void *const *, void *const *);"
            " int n_in, n_out; const int32_t *in_bytes, *out_bytes; } tc_graph_info;"
        )
        h.append("extern const tc_graph_info tc_graph_table[];")
        h.append(f"#define TC_NUM_GRAPHS {len(self.graphs)}")
        h.append("#endif")
        entries = []
        for name, gc in self.graphs.items():
            g = gc.g
            c.append(f"static const int32_t tc_{name}_in_bytes[] = {{{', '.join(str(g.tensors[i].nbytes) for i in g.inputs)}}};")
            c.append(
                f"static const int32_t tc_{name}_out_bytes[] = {{{', '.join(str(g.tensors[i].nbytes) for i in g.outputs)}}};"
            )
            entries.append(
                f'  {{"{name}", tc_{name}_run, {len(g.inputs)}, {len(g.outputs)}, tc_{name}_in_bytes, tc_{name}_out_bytes}}'
            )
        c.append("const tc_graph_info tc_graph_table[] = {\n" + ",\n".join(entries) + "\n};")
        (out_dir / "tc_graphs.h").write_text("\n".join(h) + "\n")
        (out_dir / "tc_graphs.c").write_text("\n".join(c) + "\n")


# op name -> the Codegen method that lowers it: the ops the firmware runtime supports
LOWERINGS = {
    "FULLY_CONNECTED": Codegen._op_fully_connected,
    "BATCH_MATMUL": Codegen._op_batch_matmul,
    "ADD": Codegen._op_add,
    "SUB": Codegen._op_sub,
    "MUL": Codegen._op_mul,
    "LOGISTIC": Codegen._lut,
    "TANH": Codegen._lut,
    "QUANTIZE": Codegen._op_quantize,
    "DEQUANTIZE": Codegen._op_dequantize,  # fused into the QUANTIZE that reads it
    "GATHER": Codegen._op_gather,
    "CONV_2D": Codegen._op_conv,
    "DEPTHWISE_CONV_2D": Codegen._op_conv,
    "L2_NORMALIZATION": Codegen._op_l2_normalization,
    "SOFTMAX": Codegen._op_softmax,
    "MEAN": Codegen._op_mean,
    "SUM": Codegen._op_mean,
    "CONCATENATION": Codegen._op_concatenation,
    "RESHAPE": Codegen._alias,  # aliases: the output shares the input's storage
    "SQUEEZE": Codegen._alias,
    "EXPAND_DIMS": Codegen._alias,
    "SPLIT": Codegen._op_split,
    "SPLIT_V": Codegen._op_split_v,
    "STRIDED_SLICE": Codegen._op_strided_slice,
    "SLICE": Codegen._op_slice,
}


def conv_scratch_bytes(cg):
    """Bytes of the generated convolution scratch (tc_conv_scratch) of a Codegen, 0 without a convolution."""
    return cg.conv_scratch[0] if cg.conv_scratch else 0


def _ctype(t):
    return {"int8": "int8_t", "int32": "int32_t"}.get(t.dtype, "int8_t")


def lut_from_tflm(op_name, x, y, opts):
    """The 256 outputs of an elementwise int8 op for inputs -128..127, computed by TFLM."""
    t = [
        dict(shape=(256,), dtype="int8", scale=x.scale[:1], zp=x.zero_point[:1]),
        dict(shape=(256,), dtype="int8", scale=y.scale[:1], zp=y.zero_point[:1]),
    ]
    model = build_model(t, [(op_name, [0], [1], opts)], [0], [1])
    return tflm_run(model, [np.arange(-128, 128, dtype=np.int8)])[0].astype(np.int8)
