"""Throughput of the vector instructions the kernels are made of, alone and in pairs.

Each test runs 12 independent chains of one instruction (or of two, alternating) in a
jitted loop and reports instructions per cycle at a nominal clock (--ghz). A pair that
runs no faster than its members alone shares their execution pipes: on Zen 4 the int8
dot products, the int16 multiply-adds, GFNI and float FMAs all share two pipes, one
512-bit instruction per cycle among them, which bounds the kernels (see README.md).

    python benchmarks/pipes.py [--ghz 3.7] [dpbusd@512 dpbusd+gfni@512 ...]
"""

from __future__ import annotations

import argparse
import time

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

I32, I64 = ir.IntType(32), ir.IntType(64)
CHAINS, UNROLL = 12, 4


def _call(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _vec(elem, bits, v, builder):
    width = 32 if isinstance(elem, ir.FloatType) else elem.width
    return builder.bitcast(v, ir.VectorType(elem, bits // width))


def _dpbusd(b, acc, x, bits):
    return _call(b, f"llvm.x86.avx512.vpdpbusd.{bits}", acc.type, [acc, x, x])


def _dpwssd(b, acc, x, bits):
    return _call(b, f"llvm.x86.avx512.vpdpwssd.{bits}", acc.type, [acc, x, x])


def _packssdw(b, acc, x, bits):
    name = "llvm.x86.avx512.packssdw.512" if bits == 512 else "llvm.x86.avx2.packssdw"
    return b.bitcast(_call(b, name, ir.VectorType(ir.IntType(16), bits // 16), [acc, x]),
                     acc.type)


def _gfni(b, acc, x, bits):
    i8 = ir.IntType(8)
    out = _call(b, f"llvm.x86.vgf2p8affineqb.{bits}", ir.VectorType(i8, bits // 8),
                [_vec(i8, bits, acc, b), _vec(i8, bits, x, b), i8(0)])
    return b.bitcast(out, acc.type)


def _fma(b, acc, x, bits):
    f = ir.FloatType()
    out = _call(b, f"llvm.fma.v{bits // 32}f32", ir.VectorType(f, bits // 32),
                [_vec(f, bits, acc, b), _vec(f, bits, x, b), _vec(f, bits, x, b)])
    return b.bitcast(out, acc.type)


def _cvt(b, acc, x, bits):
    return b.bitcast(b.sitofp(acc, ir.VectorType(ir.FloatType(), bits // 32)), acc.type)


OPS = {"dpbusd": _dpbusd, "dpwssd": _dpwssd, "packssdw": _packssdw, "gfni": _gfni,
       "fma": _fma, "cvt": _cvt}


def loop(names: list[str], bits: int):
    """A jitted function of reps running CHAINS chains of the instructions `names`."""
    vt = ir.VectorType(I32, bits // 32)

    @intrinsic
    def body(typingctx, reps):
        def codegen(context, builder, sig, args):
            # a splat of reps: a value the compiler cannot fold
            x = builder.insert_element(ir.Constant(vt, ir.Undefined), builder.trunc(args[0], I32),
                                       I32(0))
            x = builder.shuffle_vector(x, x, ir.Constant(vt, [0] * vt.count))
            starts = [builder.add(x, ir.Constant(vt, [k] * vt.count)) for k in range(CHAINS)]
            entry, block = builder.block, builder.append_basic_block("chains")
            done = builder.append_basic_block("done")
            builder.branch(block)
            builder.position_at_end(block)
            i = builder.phi(I64)
            chains = [builder.phi(vt) for _ in range(CHAINS)]
            i.add_incoming(I64(0), entry)
            for chain, start in zip(chains, starts):
                chain.add_incoming(start, entry)
            values = list(chains)
            for _ in range(UNROLL):
                for name in names:
                    values = [OPS[name](builder, v, x, bits) for v in values]
            for chain, v in zip(chains, values):
                chain.add_incoming(v, block)
            i_next = builder.add(i, I64(1))
            i.add_incoming(i_next, block)
            builder.cbranch(builder.icmp_signed("<", i_next, args[0]), block, done)
            builder.position_at_end(done)
            total = values[0]
            for v in values[1:]:
                total = builder.xor(total, v)
            return builder.sext(builder.extract_element(total, I32(0)), I64)
        return types.int64(reps), codegen

    @njit
    def run(reps):
        return body(reps)
    return run


def per_cycle(spec: str, ghz: float, reps: int = 2_000_000) -> float:
    """Instructions per cycle of `spec` ("dpbusd+gfni@512": names, then register bits)."""
    names, bits = spec.split("@")
    run = loop(names.split("+"), int(bits))
    run(10)
    best = min(_timed(run, reps) for _ in range(5))
    return reps * CHAINS * UNROLL * len(names.split("+")) / (best * ghz * 1e9)


def _timed(run, reps):
    start = time.perf_counter()
    run(reps)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=[
        "dpbusd@512", "dpbusd@256", "dpwssd@512", "gfni@512", "fma@512", "packssdw@512",
        "dpbusd+dpwssd@512", "dpbusd+gfni@512", "dpbusd+fma@512", "dpbusd+packssdw@512",
        "dpbusd+cvt@256"])
    parser.add_argument("--ghz", type=float, default=3.7, help="the core's clock")
    args = parser.parse_args()
    for spec in args.specs:
        names, _, bits = spec.partition("@")
        if bits not in ("256", "512") or not set(names.split("+")) <= OPS.keys():
            parser.error(f"unknown test {spec!r}: instructions of {', '.join(OPS)} joined "
                         "by +, then @256 or @512")
    for spec in args.specs:
        print(f"{spec:24} {per_cycle(spec, args.ghz):5.2f} per cycle")


if __name__ == "__main__":
    main()
