"""simd._fields, the bit-field extraction that every kernel's weight decoding goes through:
its GFNI form (one affine transform per byte) and its shift-and-mask form, each against
numpy, for every shift and mask the formats use and more. The kernel tests run only the
form this CPU compiles."""

from __future__ import annotations

import numpy as np
import pytest
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from mixlocal.quant import simd
from mixlocal.quant.cpu import host_features


def _extractor(nbytes: int, parts: int, gfni: bool):
    """A jitted (src, dst, s0, s1, mask): dst = _fields of src's first nbytes, in `parts`
    parts shifted by s0 (and s1); the shifts and mask are run-time values."""
    vtype = ir.VectorType(ir.IntType(8), nbytes)

    @intrinsic
    def fields(typingctx, src, dst, s0, s1, mask):
        def codegen(context, builder, sig, args):
            def pointer(ty, arr):
                data = context.make_array(ty)(context, builder, arr).data
                return builder.bitcast(data, vtype.as_pointer())
            v = builder.load(pointer(sig.args[0], args[0]), align=1)
            out = simd._fields(builder, v, [args[2], args[3]][:parts], args[4], gfni=gfni)
            builder.store(out, pointer(sig.args[1], args[1]), align=1)
            return context.get_dummy_value()
        return types.none(src, dst, s0, s1, mask), codegen

    @njit
    def run(src, dst, s0, s1, mask):
        fields(src, dst, s0, s1, mask)
    return run


def _cases():
    for mask in (1, 3, 15, 63, 255):
        top = 8 - mask.bit_length()  # the largest shift whose field stays in the byte
        for s0 in range(top + 1):
            yield s0, top - s0, mask


@pytest.mark.parametrize("gfni", [False, True], ids=["shifts", "gfni"])
@pytest.mark.parametrize("nbytes,parts", [(32, 1), (32, 2), (64, 2)])
def test_fields_match_numpy(nbytes, parts, gfni):
    have = host_features()
    if gfni and "gfni" not in have:
        pytest.skip("this CPU has no GFNI")
    if nbytes == 64 and not {"avx512f", "avx512bw"} <= have:
        pytest.skip("512-bit fields are for AVX-512 CPUs")
    run = _extractor(nbytes, parts, gfni)
    src = np.random.default_rng(nbytes + parts).integers(0, 256, nbytes, dtype=np.uint8)
    half = nbytes // parts
    for s0, s1, mask in _cases():
        dst = np.zeros(nbytes, np.uint8)
        run(src, dst, s0, s1, mask)
        shifts = np.repeat([s0, s1][:parts], half)
        np.testing.assert_array_equal(dst, (src >> shifts) & mask, err_msg=f"{s0} {s1} {mask}")
