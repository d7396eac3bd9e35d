"""SIMD building blocks for the 8-bit integer dot products, as Numba intrinsics.

Vector types live in registers inside jitted code: u8x32 (32 bytes: weights as
unsigned values, or int8 activations), i16x16 (scales), i32x8 (integer partial sums),
f32x8 (float accumulators) and, on the VNNI path only, 512-bit i32x16 (partial sums),
u8x64 (two chunks of weights) and i16x32 (their scales).
Each intrinsic below emits a few lines of LLVM IR, inlined where it is called;
`dpbusd`, `dot_i8`, `dpwssd` and `zero_sum` depend on the instruction
set, chosen by a path name that must be a compile-time string literal ("vnni" or
"avx2", see cpu.py). Bit fields of the weights come out through `_fields`, by GFNI
where the CPU has it.

Byte offsets are unchecked: callers index whole blocks inside C-contiguous arrays.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .cpu import host_features

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_F32 = ir.FloatType()


class Vec(types.Type):
    """A SIMD register of `lanes` elements of LLVM type `elem` ("i8", "i32", "f32")."""

    def __init__(self, elem: str, lanes: int):
        self.elem, self.lanes = elem, lanes
        super().__init__(name=f"{elem}x{lanes}")


_ELEM = {"i8": _I8, "i16": _I16, "i32": _I32, "f32": _F32}


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_ELEM[fe_type.elem], fe_type.lanes))


u8x32 = Vec("i8", 32)
i16x16 = Vec("i16", 16)
i32x8 = Vec("i32", 8)
f32x8 = Vec("f32", 8)
u8x64, i16x32, i32x16 = Vec("i8", 64), Vec("i16", 32), Vec("i32", 16)  # vnni only: 512 bits
_V8, _V16, _V32, _VF = (ir.VectorType(t, n) for t, n in
                        ((_I8, 32), (_I16, 16), (_I32, 8), (_F32, 8)))
_V512, _W512 = ir.VectorType(_I32, 16), ir.VectorType(_I16, 32)


def _consts(vtype, values):
    return ir.Constant(vtype, list(values))


def _splat(builder, value, vtype):
    v = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, _I32(0))
    zeros = _consts(ir.VectorType(_I32, vtype.count), [0] * vtype.count)
    return builder.shuffle_vector(v, v, zeros)


def _at(context, builder, arrty, arr, offset, ptype):
    """Pointer of LLVM type ptype* to element `offset` of an array's data."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [offset]), ptype.as_pointer())


def _call(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


# One GF(2) affine transform of every byte (GFNI's gf2p8affineqb) takes a bit field out
# of it, where a 16-bit shift and a mask take two instructions: matvec from DRAM on one
# thread 1.05-1.12x on Q4_K, 1.04x on Q4_0, 1.06x on Q3_K and Q5_K. Used when Numba
# compiles for a CPU that has it (Numba's cache keys on the CPU's features).
GFNI = "gfni" in host_features()
# AVX512-VBMI's vpmultishiftqb picks eight bit fields from each quadword in one
# instruction (k4_scales); where the CPU lacks it, callers decode with scalar operations.
VBMI = {"avx512vbmi", "avx512vl"} <= host_features()
_I64 = ir.IntType(64)


def _as_i64(builder, v):
    return v if v.type == _I64 else builder.zext(v, _I64)


def _field_matrix(builder, shift, mask):
    """gf2p8affineqb's bit matrix (an i64) for byte -> (byte >> shift) & mask: its byte
    7 - i picks input bit shift + i for output bit i."""
    shift, mask = _as_i64(builder, shift), _as_i64(builder, mask)
    matrix = _I64(0)
    for i in range(8):
        bit = builder.and_(builder.lshr(mask, _I64(i)), _I64(1))
        matrix = builder.or_(matrix, builder.shl(bit, builder.add(shift, _I64(8 * (7 - i) + i))))
    return matrix


def _fields(builder, v, shifts, mask, gfni=GFNI):
    """(byte >> shifts[k]) & mask in every byte of v (32 or 64 bytes) in its k-th of
    len(shifts) equal parts (mask < 1 << (8 - shift))."""
    n = v.type.count
    part = n // len(shifts)
    # 16-bit shifts (x86 has no 8-bit ones); the mask drops what crosses bytes
    words = ir.VectorType(_I16, n // 2)
    amounts = ir.Constant(words, ir.Undefined)
    for k in range(n // 2):
        amounts = builder.insert_element(amounts, builder.trunc(shifts[2 * k // part], _I16),
                                         _I32(k))
    shifted = builder.bitcast(builder.lshr(builder.bitcast(v, words), amounts), v.type)
    masked = builder.and_(shifted, _splat(builder, builder.trunc(mask, _I8), v.type))
    if not gfni:
        return masked
    matrices = ir.Constant(ir.VectorType(_I64, n // 8), ir.Undefined)
    for q in range(n // 8):
        matrices = builder.insert_element(
            matrices, _field_matrix(builder, shifts[8 * q // part], mask), _I32(q))
    affine = _call(builder, f"llvm.x86.vgf2p8affineqb.{8 * n}", v.type,
                   [v, builder.bitcast(matrices, v.type), _I8(0)])
    # With no shift at all the mask alone, which any vector pipe runs, where GFNI shares
    # Zen 4's two multiply pipes with the dot products (the shifts are constants once
    # inlined, so LLVM keeps one side)
    unshifted = ir.Constant(ir.IntType(1), 1)
    for shift in shifts:
        unshifted = builder.and_(unshifted, builder.icmp_unsigned(
            "==", _as_i64(builder, shift), _I64(0)))
    return builder.select(unshifted, masked, affine)


@intrinsic
def zeros_i32(typingctx):
    return i32x8(), lambda context, builder, sig, args: ir.Constant(_V32, [0] * 8)


@intrinsic
def zeros_f32(typingctx):
    return f32x8(), lambda context, builder, sig, args: ir.Constant(_VF, [0.0] * 8)


@intrinsic
def at(typingctx, arr, i):
    """arr.flat[i] without the negative-index check (i >= 0)."""
    def codegen(context, builder, sig, args):
        ptr = _at(context, builder, sig.args[0], args[0], args[1],
                  context.get_value_type(sig.return_type))
        return builder.load(ptr)
    return arr.dtype(arr, i), codegen


@intrinsic
def f16_at(typingctx, arr, offset):
    """The IEEE half at byte `offset` of a uint8 array, as float32 (exact)."""
    def codegen(context, builder, sig, args):
        ptr = _at(context, builder, sig.args[0], args[0], args[1], ir.HalfType())
        return builder.fpext(builder.load(ptr, align=1), _F32)
    return types.float32(arr, offset), codegen


def _prefetcher(locality: int):
    """An intrinsic (arr, offset, nbytes) asking for the cache lines of bytes offset..
    offset + nbytes (a constant) ahead of use, at LLVM's locality (3: into L1, 2: L2);
    it never faults, even past the array's end. One prefetch per 64 bytes, unrolled: a
    loop of them took a fifth of the Q4_K matvec's instructions."""
    @intrinsic
    def prefetch(typingctx, arr, offset, nbytes):
        if not isinstance(nbytes, types.IntegerLiteral):
            return None  # Numba retries with the literal

        def codegen(context, builder, sig, args):
            for line in range(0, nbytes.literal_value, 64):
                ptr = _at(context, builder, sig.args[0], args[0],
                          builder.add(args[1], args[1].type(line)), _I8)
                _call(builder, "llvm.prefetch.p0", ir.VoidType(),
                      [ptr, _I32(0), _I32(locality), _I32(1)])
            return context.get_dummy_value()
        return types.none(arr, offset, nbytes), codegen
    return prefetch


# Into L2: a matvec's stream of weights then does not push the activations out of L1
prefetch_l2 = _prefetcher(2)
# Into L1: a GEMM tile's next weights, read a few hundred cycles later
prefetch_l1 = _prefetcher(3)


def _load(result, ptype, align):
    """An intrinsic loading `result` (LLVM type ptype) from element `i` of an array."""
    @intrinsic
    def load(typingctx, arr, i):
        def codegen(context, builder, sig, args):
            return builder.load(_at(context, builder, sig.args[0], args[0], args[1], ptype),
                                align=align)
        return result(arr, i), codegen
    return load


u32_at = _load(types.uint32, _I32, 1)  # the little-endian uint32 at byte i of a uint8 array
load_i16x16 = _load(i16x16, _V16, 2)   # 16 values of an int16 array from element i
load_f32x8 = _load(f32x8, _VF, 4)      # 8 values of a float32 array from element i
load_u8x32 = _load(u8x32, _V8, 1)      # 32 bytes from byte i of a uint8 or int8 array


@intrinsic
def store_f32x8(typingctx, arr, i, v):
    """v into elements i..i + 7 of a float32 array."""
    def codegen(context, builder, sig, args):
        builder.store(args[2], _at(context, builder, sig.args[0], args[0], args[1], _VF), align=4)
        return context.get_dummy_value()
    return types.none(arr, i, v), codegen


@intrinsic
def load_nibbles(typingctx, arr, offset):
    """16 bytes at `offset` as 32 values: the low nibbles, then the high nibbles."""
    def codegen(context, builder, sig, args):
        v16 = ir.VectorType(_I8, 16)
        v = builder.load(_at(context, builder, sig.args[0], args[0], args[1], v16), align=1)
        both = builder.shuffle_vector(v, v, _consts(ir.VectorType(_I32, 32), list(range(16)) * 2))
        return _fields(builder, both, [_I64(0), _I64(4)], _I64(15))
    return u8x32(arr, offset), codegen


def _load_pair(context, builder, arrty, arr, o0, o1, size=32):
    """The `size` bytes at o0, then the `size` at o1, as one vector."""
    part = ir.VectorType(_I8, size)
    halves = [builder.load(_at(context, builder, arrty, arr, o, part), align=1) for o in (o0, o1)]
    return builder.shuffle_vector(*halves, _consts(ir.VectorType(_I32, 2 * size), range(2 * size)))


@intrinsic
def load_pair(typingctx, arr, o0, o1):
    """The 16 bytes at o0, then the 16 at o1 (u8x32)."""
    def codegen(context, builder, sig, args):
        return _load_pair(context, builder, sig.args[0], *args, size=16)
    return u8x32(arr, o0, o1), codegen


def _nibble_pair(shift: int):
    @intrinsic
    def pair(typingctx, arr, o0, o1):
        """(byte >> shift) & 15 of the 16 bytes at o0, then of the 16 at o1: a mask and
        a 16-bit shift, off the pipes GFNI shares with the dot products."""
        def codegen(context, builder, sig, args):
            both = _load_pair(context, builder, sig.args[0], *args, size=16)
            return _fields(builder, both, [_I64(shift)], _I64(15), gfni=False)
        return u8x32(arr, o0, o1), codegen
    return pair


low_nibble_pair, high_nibble_pair = _nibble_pair(0), _nibble_pair(4)


@intrinsic
def bit_bytes(typingctx, arr, offset, value):
    """Byte j = value where bit j of the little-endian uint32 at `offset` is set, else 0."""
    def codegen(context, builder, sig, args):
        bits = builder.load(_at(context, builder, sig.args[0], args[0], args[1], _I32), align=1)
        v32 = ir.VectorType(_I32, 32)
        hit = builder.icmp_unsigned("!=", builder.and_(_splat(builder, bits, v32),
                                                       _consts(v32, [1 << j for j in range(32)])),
                                    ir.Constant(v32, [0] * 32))
        byte = _splat(builder, builder.trunc(args[2], _I8), _V8)
        return builder.select(hit, byte, ir.Constant(_V8, [0] * 32))
    return u8x32(arr, offset, value), codegen


@intrinsic
def or_bits(typingctx, v, bits, value):
    """Byte j of v (u8x32), or `value` into it where bit j of the 32-bit `bits` is set:
    on AVX-512 the bits become a mask register for one masked instruction."""
    def codegen(context, builder, sig, args):
        hit = builder.bitcast(builder.trunc(args[1], _I32), ir.VectorType(ir.IntType(1), 32))
        byte = _splat(builder, builder.trunc(args[2], _I8), _V8)
        return builder.select(hit, builder.or_(args[0], byte), args[0])
    return u8x32(v, bits, value), codegen


@intrinsic
def shr_and(typingctx, v, shift, mask):
    """(v >> shift) & mask in every byte (mask < 1 << (8 - shift))."""
    def codegen(context, builder, sig, args):
        return _fields(builder, args[0], [args[1]], args[2])
    return u8x32(v, shift, mask), codegen


@intrinsic
def or_shl(typingctx, a, b, shift):
    """a | (b << shift) in every byte."""
    def codegen(context, builder, sig, args):
        shift = _splat(builder, builder.trunc(args[2], _I8), args[0].type)
        return builder.or_(args[0], builder.shl(args[1], shift))
    return a(a, b, shift), codegen


def _dpbusd(builder, path, acc, u, s):
    """acc[i] + sum of u[4i+k] * s[4i+k] (u unsigned, s signed) for k in 0..3."""
    if path == "vnni":
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", _V32,
                     [acc, builder.bitcast(u, _V32), builder.bitcast(s, _V32)])
    if path == "avx2":  # pairs saturate at int16: callers keep u * |s| * 2 < 32768
        pairs = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16, [u, s])
        return _dpwssd(builder, path, acc, pairs, ir.Constant(_V16, [1] * 16))
    raise ValueError(f"no SIMD dot product for path {path!r}")


def _dpwssd(builder, path, acc, a, b):
    """acc[i] + a[2i] b[2i] + a[2i+1] b[2i+1] (int16 a, b)."""
    if path == "vnni":
        return _call(builder, "llvm.x86.avx512.vpdpwssd.256", _V32,
                     [acc, builder.bitcast(a, _V32), builder.bitcast(b, _V32)])
    if path == "avx2":
        return builder.add(acc, _call(builder, "llvm.x86.avx2.pmadd.wd", _V32, [a, b]))
    raise ValueError(f"no SIMD multiply-add for path {path!r}")


def _dot_i8(builder, path, acc, w, s):
    """_dpbusd for two signed operands: |w| times s with w's sign (|s| <= 127)."""
    zero = ir.Constant(_V8, [0] * 32)
    neg = builder.icmp_signed("<", w, zero)
    absw = builder.select(neg, builder.sub(zero, w), w)
    signed = builder.select(neg, builder.sub(zero, s),
                            builder.select(builder.icmp_signed("==", w, zero), zero, s))
    return _dpbusd(builder, path, acc, absw, signed)


def _dot_i8_plus_128(builder, path, acc, w, s):
    """acc + (w + 128) . s for signed w and s (|s| <= 127), as _dpbusd sums them. On
    VNNI, w with its sign bit flipped is w + 128 unsigned: one instruction before the
    dot product where _dot_i8 takes four. On AVX2, whose int16 pairs would saturate,
    _dot_i8 plus 128 times the sums of s."""
    if path == "vnni":
        return _dpbusd(builder, path, acc, builder.xor(w, ir.Constant(_V8, [0x80] * 32)), s)
    sums = _dpbusd(builder, path, ir.Constant(_V32, [0] * 8), ir.Constant(_V8, [1] * 32), s)
    return _dot_i8(builder, path, builder.add(acc, builder.shl(sums, _consts(_V32, [7] * 8))),
                   w, s)


def _path_op(emit):
    """The intrinsic (path, acc, a, b) -> i32x8 whose IR, emit(builder, path, acc, a, b),
    depends on the path: a string literal, so each path compiles its own code."""
    def typer(typingctx, path, acc, a, b):
        if not isinstance(path, types.StringLiteral):
            return None  # Numba retries with the literal
        name = path.literal_value

        def codegen(context, builder, sig, args):
            return emit(builder, name, *args[1:])
        return i32x8(path, acc, a, b), codegen
    typer.__name__ = typer.__qualname__ = emit.__name__.lstrip("_")
    typer.__doc__ = emit.__doc__
    return intrinsic(typer)


dpbusd = _path_op(_dpbusd)
dpwssd = _path_op(_dpwssd)
dot_i8 = _path_op(_dot_i8)
dot_i8_plus_128 = _path_op(_dot_i8_plus_128)


def _packed_dot(builder, acc, qs, xs, scales):
    """acc (i32x16) + two sums of 512-bit u8 x s8 dot products (weights qs, activations
    xs: two tuples of 64-byte vectors each, of one or two vectors), 16-weight half k
    scaled by int16 scales[_HALF_OF_LANE[k]].

    The dot products give int32 lanes of 4 weights each, or of 8 where two chain into
    one sum; a sum (|sum| <= 8 * 31 * 127, Q5_K's chained) fits in int16, so both pack
    into one vector (packssdw interleaves by 128 bits) for one multiply-add with the
    scales: three 512-bit multiplies per 128 weights where 256-bit pair sums take eight
    256-bit, and chained, six per 256."""
    sums = []
    for chain, x_chain in zip(qs, xs):
        total = ir.Constant(_V512, [0] * 16)
        for q, x in zip(chain, x_chain):
            total = _call(builder, "llvm.x86.avx512.vpdpbusd.512", _V512,
                          [total, builder.bitcast(q, _V512), builder.bitcast(x, _V512)])
        sums.append(total)
    packed = _call(builder, "llvm.x86.avx512.packssdw.512", _W512, sums)
    return _call(builder, "llvm.x86.avx512.vpdpwssd.512", _V512,
                 [acc, builder.bitcast(packed, _V512), builder.bitcast(scales, _V512)])


# The half of the 128 weights whose packed sum int16 lane k of _packed_dot holds:
# 128-bit lane L has 4 sums of half L, then 4 of half 4 + L.
_HALF_OF_LANE = [lane // 8 + 4 * (lane % 8 // 4) for lane in range(32)]


def _scaled_quad(builder, path, acc, sc, halves, qs, x):
    """acc + the dot products of the 32-weight chunks qs (4) with the 128 bytes x, each
    16-weight half scaled by its int16 scale sc[halves[k]] (k: chunk 0's halves, ...)."""
    picked = [builder.extract_element(sc, builder.trunc(builder.extract_value(halves, k), _I32))
              for k in range(8)]
    for k, q in enumerate(qs):
        xk = builder.shuffle_vector(x, x, _consts(ir.VectorType(_I32, 32),
                                                  range(32 * k, 32 * k + 32)))
        scales = ir.Constant(_V16, ir.Undefined)
        for lane in range(16):  # int16 pair sums: 8 per half
            scales = builder.insert_element(scales, picked[2 * k + lane // 8], _I32(lane))
        pairs = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16, [q, xk])
        acc = _dpwssd(builder, path, acc, pairs, scales)
    return acc


def _sum_type(path):
    return i32x16 if path == "vnni" else i32x8


@intrinsic
def scaled_quad(typingctx, path, acc, sc, halves, q0, q1, q2, q3, arr, offset):
    """_scaled_quad with x the 128 bytes at `offset` of arr (int8): the AVX2 path's
    super-block sums (VNNI's take scaled_pairs)."""
    if not isinstance(path, types.StringLiteral):
        return None  # Numba retries with the literal
    name = path.literal_value

    def codegen(context, builder, sig, args):
        x = builder.load(_at(context, builder, sig.args[8], args[8], args[9],
                             ir.VectorType(_I8, 128)), align=1)
        return _scaled_quad(builder, name, args[1], args[2], args[3], args[4:8], x)
    return i32x8(path, acc, sc, halves, q0, q1, q2, q3, arr, offset), codegen


@intrinsic
def zero_sum(typingctx, path):
    """Zeros in the int32 accumulator of this path's super-block sums (scaled_pairs'
    i32x16 on VNNI, scaled_quad's i32x8 on AVX2)."""
    if not isinstance(path, types.StringLiteral):
        return None
    ty = _sum_type(path.literal_value)

    def codegen(context, builder, sig, args):
        return context.get_constant_null(ty)
    return ty(path), codegen


@intrinsic
def sum_i32x8(typingctx, a, b):
    """a + b folded into 8 int32 lanes (a, b: scaled_quad accumulators)."""
    def codegen(context, builder, sig, args):
        v = builder.add(*args)
        if sig.args[0].lanes == 16:
            v = builder.add(*(builder.shuffle_vector(v, v, _consts(ir.VectorType(_I32, 8),
                                                                   range(h, h + 8)))
                              for h in (0, 8)))
        return v
    return i32x8(a, b), codegen


@intrinsic
def block_sums(typingctx, p0, p1, p2, p3):
    """The sums of eight blocks' lanes, as one i32x8 (block k in lane k): p_k holds
    block k in lanes 0-3 and block k + 4 in lanes 4-7, each of magnitude below 16384.
    Two rounds of pairwise adds through int16: a pack, then a multiply-add by ones
    (1.09-1.11x over block_sums_i32's horizontal adds on Zen 4)."""
    def codegen(context, builder, sig, args):
        ones = ir.Constant(_V16, [1] * 16)

        def pair_sums(a, b):
            # [a0+a1, a2+a3, b0+b1, b2+b3] in each 128-bit half
            packed = _call(builder, "llvm.x86.avx2.packssdw", _V16, [a, b])
            return _call(builder, "llvm.x86.avx2.pmadd.wd", _V32, [packed, ones])
        return pair_sums(pair_sums(args[0], args[1]), pair_sums(args[2], args[3]))
    return i32x8(p0, p1, p2, p3), codegen


@intrinsic
def block_sums_i32(typingctx, p0, p1, p2, p3):
    """As block_sums, for int32 lanes of any size: two rounds of horizontal adds."""
    def codegen(context, builder, sig, args):
        def pair_sums(a, b):
            return _call(builder, "llvm.x86.avx2.phadd.d", _V32, [a, b])
        return pair_sums(pair_sums(args[0], args[1]), pair_sums(args[2], args[3]))
    return i32x8(p0, p1, p2, p3), codegen


def strided_halves(stride: int, heads: int = 1):
    """An intrinsic (arr, offset) -> f32x8, or a tuple of `heads` f32x8: the IEEE halves
    at bytes offset + stride k + 2 h of a uint8 array, k < 8, h < heads (the f16 heading
    each of 8 consecutive blocks of `stride` bytes: Q4_0's d, Q4_1's d and m), by one
    shuffle: of the span's first and last 64 bytes where they hold every half (Q4_1's
    144-byte span 1.05x over loading all of it), else of the whole span."""
    span = 7 * stride + 2 * heads
    starts = [stride * k + 2 * h for h in range(heads) for k in range(8)]
    last = span - 64
    if all(b + 2 <= 64 or (b >= last and (b - last) % 2 == 0) for b in starts):
        loads = ((0, 32), (last, 32))  # (byte offset, 16-bit words)
        picks = [b // 2 if b + 2 <= 64 else 32 + (b - last) // 2 for b in starts]
    else:
        loads = ((0, (span + 1) // 2),)
        picks = [b // 2 for b in starts]

    @intrinsic
    def halves(typingctx, arr, offset):
        def codegen(context, builder, sig, args):
            parts = [builder.load(_at(context, builder, sig.args[0], args[0],
                                      builder.add(args[1], args[1].type(start)),
                                      ir.VectorType(_I16, words)), align=1)
                     for start, words in loads]
            picked = builder.shuffle_vector(parts[0], parts[-1],
                                            _consts(ir.VectorType(_I32, 8 * heads), picks))
            wide = builder.fpext(builder.bitcast(picked, ir.VectorType(ir.HalfType(), 8 * heads)),
                                 ir.VectorType(_F32, 8 * heads))
            if heads == 1:
                return wide
            return context.make_tuple(builder, sig.return_type, [
                builder.shuffle_vector(wide, wide, _consts(_V32, range(8 * h, 8 * h + 8)))
                for h in range(heads)])
        result = f32x8 if heads == 1 else types.UniTuple(f32x8, heads)
        return result(arr, offset), codegen
    return halves


@intrinsic
def bytes_i16(typingctx, a0, a1, a2, a3, sub):
    """The 16 bytes of four uint32 (little-endian) as int8, widened to int16, minus sub."""
    def codegen(context, builder, sig, args):
        words = ir.Constant(ir.VectorType(_I32, 4), ir.Undefined)
        for k in range(4):
            words = builder.insert_element(words, builder.trunc(args[k], _I32), _I32(k))
        wide = builder.sext(builder.bitcast(words, ir.VectorType(_I8, 16)), _V16)
        return builder.sub(wide, _splat(builder, builder.trunc(args[4], _I16), _V16))
    return i16x16(a0, a1, a2, a3, sub), codegen


# vpmultishiftqb control and masks for Q4_K's and Q5_K's 12 bytes of scales and
# minimums (get_scale_min_k4): byte c < 4 of scales and minimums is the low 6 bits of
# byte c or 4 + c; c >= 4 takes its low 4 bits from byte 8 + j (j = c - 4: its low
# nibble for the scales, high for the minimums) and its top 2 from bits 6-7 of byte j
# or 4 + j, picked from bit 8 j + 2 so that they land in bits 4-5.
def _k4_controls(order):
    a, b, ma, mb = [], [], [], []
    for half, base in ((0, 0), (1, 32)):  # scales (in `order`), minimums (in x's)
        for c in (order if half == 0 else range(8)):
            if c < 4:
                a.append(base + 8 * c), b.append(0), ma.append(0x3F), mb.append(0)
            else:
                j = c - 4
                a.append(base + 8 * j + 2), b.append(8 * j + 4 * half)
                ma.append(0x30), mb.append(0x0F)
    return a, b, ma, mb


def k4_scales(order):
    """An intrinsic: (scales in the chunks' `order`, minimums in x's order), each in
    lanes 0-7 of an i16x16, of the Q4_K / Q5_K super-block whose 12 bytes of 6-bit
    scales and minimums start at byte `offset` of arr (it reads 16 bytes: 4 of the
    quants after them). Two vpmultishiftqb where a scalar decode takes some 20
    instructions; call only where VBMI."""
    ctrl_a, ctrl_b, mask_a, mask_b = (_consts(ir.VectorType(_I8, 16), c)
                                      for c in _k4_controls(order))

    @intrinsic
    def scales(typingctx, arr, offset):
        def codegen(context, builder, sig, args):
            v = builder.load(_at(context, builder, sig.args[0], args[0], args[1],
                                 ir.VectorType(_I8, 16)), align=1)
            q = builder.bitcast(v, ir.VectorType(_I64, 2))
            picked = []
            for k, ctrl in ((0, ctrl_a), (1, ctrl_b)):
                data = builder.bitcast(builder.shuffle_vector(q, q, _consts(
                    ir.VectorType(_I32, 2), [k, k])), ir.VectorType(_I8, 16))
                picked.append(_call(builder, "llvm.x86.avx512.pmultishift.qb.128",
                                    ir.VectorType(_I8, 16), [ctrl, data]))
            both = builder.or_(builder.and_(picked[0], mask_a), builder.and_(picked[1], mask_b))
            halves = [builder.zext(builder.shuffle_vector(both, both, _consts(
                ir.VectorType(_I32, 8), range(h, h + 8))), ir.VectorType(_I16, 8))
                for h in (0, 8)]
            zero = ir.Constant(ir.VectorType(_I16, 8), [0] * 8)
            out = [builder.shuffle_vector(h, zero, _consts(ir.VectorType(_I32, 16), range(16)))
                   for h in halves]
            return context.make_tuple(builder, sig.return_type, out)
        return types.UniTuple(i16x16, 2)(arr, offset), codegen
    return scales


@intrinsic
def mul_i16(typingctx, v, k):
    """v * k in every int16 lane."""
    def codegen(context, builder, sig, args):
        return builder.mul(args[0], _splat(builder, builder.trunc(args[1], _I16), _V16))
    return i16x16(v, k), codegen


@intrinsic
def low_i32(typingctx, t):
    """The first 8 int16 lanes, widened to int32."""
    def codegen(context, builder, sig, args):
        low = builder.shuffle_vector(args[0], args[0], _consts(_V32, range(8)))
        return builder.sext(low, _V32)
    return i32x8(t), codegen


def chunk_order(chunks, per_chunk: int):
    """An intrinsic putting the values of a super-block's eight 32-weight chunks
    (per_chunk int16 lanes each, lanes 0 to 8 per_chunk - 1 of an i16x16) in the order
    `chunks` (the rest of the lanes as they are)."""
    order = [per_chunk * c + k for c in chunks for k in range(per_chunk)]
    order += list(range(len(order), 16))

    @intrinsic
    def reorder(typingctx, t):
        def codegen(context, builder, sig, args):
            return builder.shuffle_vector(args[0], args[0],
                                          _consts(ir.VectorType(_I32, 16), order))
        return i16x16(t), codegen
    return reorder


@intrinsic
def spread_pairs(typingctx, t):
    """t[j] in lanes 2j and 2j + 1, j < 8: one value per pair of int16 sums."""
    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], args[0], _consts(ir.VectorType(_I32, 16),
                                                                [j // 2 for j in range(16)]))
    return i16x16(t), codegen


def _f32x8(context, builder, ty, value):
    """An f32x8 as it is, an i32x8 converted, or a number in all 8 lanes."""
    if isinstance(ty, Vec):
        return value if ty.elem == "f32" else builder.sitofp(value, _VF)
    return _splat(builder, context.cast(builder, value, ty, types.float32), _VF)


@intrinsic
def fma(typingctx, acc, p, scale):
    """acc + float(p) * scale, fused (p: i32x8 or f32x8; scale: a number or an f32x8)."""
    def codegen(context, builder, sig, args):
        acc, p, scale = (_f32x8(context, builder, ty, v) for ty, v in zip(sig.args, args))
        return _call(builder, "llvm.fma.v8f32", _VF, [p, scale, acc])
    return f32x8(acc, p, scale), codegen


@intrinsic
def fmul(typingctx, p, scale):
    """float(p) * scale (p: i32x8 or f32x8; scale: a number or an f32x8)."""
    def codegen(context, builder, sig, args):
        return builder.fmul(*(_f32x8(context, builder, ty, v) for ty, v in zip(sig.args, args)))
    return f32x8(p, scale), codegen


@intrinsic
def fma_less(typingctx, acc, p, sub, scale):
    """acc + (float(p) - sub) * scale, fused (scale: a number or an f32x8)."""
    def codegen(context, builder, sig, args):
        sub = _f32x8(context, builder, sig.args[2], args[2])
        scale = _f32x8(context, builder, sig.args[3], args[3])
        return _call(builder, "llvm.fma.v8f32", _VF,
                     [builder.fsub(builder.sitofp(args[1], _VF), sub), scale, args[0]])
    return f32x8(acc, p, sub, scale), codegen


@intrinsic
def f16_times(typingctx, arr, offset, factor):
    """The IEEE half at byte `offset` of a uint8 array times a float, in all 8 lanes:
    converting a broadcast half costs one instruction less than a scalar and a splat."""
    def codegen(context, builder, sig, args):
        ptr = _at(context, builder, sig.args[0], args[0], args[1], _I16)
        half = _splat(builder, builder.load(ptr, align=1), ir.VectorType(_I16, 8))
        d = builder.fpext(builder.bitcast(half, ir.VectorType(ir.HalfType(), 8)), _VF)
        return builder.fmul(d, _f32x8(context, builder, sig.args[2], args[2]))
    return f32x8(arr, offset, factor), codegen


@intrinsic
def fadd(typingctx, a, b):
    return f32x8(a, b), lambda context, builder, sig, args: builder.fadd(*args)


@intrinsic
def hsum(typingctx, v):
    """The sum of the 8 lanes, as float32."""
    def codegen(context, builder, sig, args):
        v = args[0]
        for half in (4, 2, 1):  # fold the upper half onto the lower
            upper = builder.shuffle_vector(v, v, _consts(_V32, [(i + half) % 8 for i in range(8)]))
            v = builder.fadd(v, upper)
        return builder.extract_element(v, _I32(0))
    return types.float32(v), codegen


# --- 512-bit pieces of the K-quant and Q8_0 kernels (vnni only) -----------------------

@intrinsic
def load_u8x64(typingctx, arr, o0, o1):
    """Two chunks of 32 bytes, those at o0 then those at o1."""
    def codegen(context, builder, sig, args):
        return _load_pair(context, builder, sig.args[0], *args)
    return u8x64(arr, o0, o1), codegen


@intrinsic
def bits_u8x64(typingctx, arr, o0, o1, s0, s1, mask):
    """Two chunks of 32 weights, (byte >> s0) & mask of the 32 bytes at o0, then
    (byte >> s1) & mask of those at o1 (mask < 1 << (8 - shift))."""
    def codegen(context, builder, sig, args):
        both = _load_pair(context, builder, sig.args[0], *args[:3])
        return _fields(builder, both, args[3:5], args[5])
    return u8x64(arr, o0, o1, s0, s1, mask), codegen


@intrinsic
def group_scales(typingctx, sc, first):
    """The int16 scales of 16-weight groups first..first + 7 (sc: i16x16, one per
    group) in the lanes of _packed_dot, for scaled_pairs."""
    def codegen(context, builder, sig, args):
        base = builder.trunc(args[1], _I32)
        out = ir.Constant(_W512, ir.Undefined)
        for lane, half in enumerate(_HALF_OF_LANE):
            g = builder.add(base, _I32(half))
            out = builder.insert_element(out, builder.extract_element(args[0], g), _I32(lane))
        return out
    return i16x32(sc, first), codegen


def _x512(context, builder, arrty, arr, offset, count):
    """`count` 64-byte vectors of int8 activations from byte `offset` of arr."""
    return [builder.load(_at(context, builder, arrty, arr,
                             builder.add(offset, offset.type(64 * k)), _V512), align=1)
            for k in range(count)]


@intrinsic
def scaled_pairs(typingctx, acc, p0, p1, arr, offset, scales):
    """acc + the four 32-weight chunks of p0 and p1 (u8x64) dotted with the 128 int8
    activations at `offset` of arr, each 16-weight group scaled by group_scales."""
    def codegen(context, builder, sig, args):
        acc, p0, p1, arr, offset, scales = args
        x0, x1 = _x512(context, builder, sig.args[3], arr, offset, 2)
        return _packed_dot(builder, acc, ((p0,), (p1,)), ((x0,), (x1,)), scales)
    return i32x16(acc, p0, p1, arr, offset, scales), codegen


@intrinsic
def chain_lanes(typingctx, low, high):
    """Two u8x64 of 32-weight chunks c0, c1 (low) and c0', c1' (high) as (first halves,
    second halves): the 16-byte lanes [low 0, low 2, high 0, high 2] and [low 1, low 3,
    high 1, high 3], so that lane k of both holds one chunk (chained_quad)."""
    def codegen(context, builder, sig, args):
        quads = [builder.bitcast(a, ir.VectorType(_I64, 8)) for a in args]
        parts = [builder.bitcast(builder.shuffle_vector(*quads, _consts(
                     ir.VectorType(_I32, 8), [2 * lane + k for lane in lanes for k in (0, 1)])),
                     args[0].type)
                 for lanes in ((0, 2, 4, 6), (1, 3, 5, 7))]
        return context.make_tuple(builder, sig.return_type, parts)
    return types.UniTuple(u8x64, 2)(low, high), codegen


@intrinsic
def chained_quad(typingctx, acc, a0, b0, a1, b1, arr, offset, scales):
    """acc + a super-block's chain_lanes halves (a0, b0: its first 128 weights; a1, b1:
    the rest) dotted with the 256 int8 activations at `offset` of arr, in that order;
    the chunk in lane k of a0 and b0 (a1 and b1) scaled by scales' chunk k (4 + k) in
    the lanes of group_scales."""
    def codegen(context, builder, sig, args):
        acc, a0, b0, a1, b1, arr, offset, scales = args
        x = _x512(context, builder, sig.args[5], arr, offset, 4)
        return _packed_dot(builder, acc, ((a0, b0), (a1, b1)), ((x[0], x[1]), (x[2], x[3])),
                           scales)
    return i32x16(acc, a0, b0, a1, b1, arr, offset, scales), codegen


@intrinsic
def plus_128(typingctx, v):
    """int8 bytes plus 128, as unsigned bytes (u8x64): the operand VNNI wants unsigned."""
    def codegen(context, builder, sig, args):
        return builder.xor(args[0], ir.Constant(args[0].type, [0x80] * 64))
    return u8x64(v), codegen


@intrinsic
def block_dots(typingctx, acc, q0, q1, q2, q3, arr, offset, d, xd, i):
    """acc + the eight 32-byte blocks of q0..q3 (u8x64, two blocks each) dotted with the
    256 int8 activations at `offset` of arr, block j scaled by d[j] xd[i + j] (d: f32x8,
    xd: a float32 array): 512-bit dot products, their int32 lanes scaled in float."""
    def codegen(context, builder, sig, args):
        acc, *qs = args[:5]
        arr, offset, d, xd, i = args[5:]
        v16 = ir.VectorType(_F32, 16)
        scales = builder.fmul(d, builder.load(_at(context, builder, sig.args[8], xd, i, _VF),
                                              align=4))
        total = None
        for k, q in enumerate(qs):
            x = builder.load(_at(context, builder, sig.args[5], arr,
                                 builder.add(offset, offset.type(64 * k)), _V512), align=1)
            p = _call(builder, "llvm.x86.avx512.vpdpbusd.512", _V512,
                      [ir.Constant(_V512, [0] * 16), builder.bitcast(q, _V512), x])
            sc = builder.shuffle_vector(scales, scales,
                                        _consts(_V512, [2 * k] * 8 + [2 * k + 1] * 8))
            f = builder.sitofp(p, v16)
            total = builder.fmul(f, sc) if total is None else _call(
                builder, "llvm.fma.v16f32", v16, [f, sc, total])
        halves = [builder.shuffle_vector(total, total, _consts(_V32, range(h, h + 8)))
                  for h in (0, 8)]
        return builder.fadd(acc, builder.fadd(*halves))
    return f32x8(acc, q0, q1, q2, q3, arr, offset, d, xd, i), codegen
