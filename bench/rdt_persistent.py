"""Can one persistent kernel run act's 67-row products faster than one cuBLAS launch each? A probe for issue 17.

    PYTHONPATH=. python bench/rdt_persistent.py [--cuda] [--layers 28] [--configs 128,8,64,8,3 ...] [--tma ...]

act's sampling graph at batch 1 is ~1,700 kernels (28 blocks, 5 solver steps), each with a floor of 5-10 us in a
CUDA graph whatever its work: cuBLAS takes ~6.2 us for 67 x 2048 -> 2048 (8 MB of weights, 1.75 us at the
memory's speed). The design the docs named is one kernel that keeps every SM and walks a block's phases with grid
barriers in between. This probe measures its core on a chain of `--layers` distinct 2048 x 2048 products
(y <- bf16(y W_l^T), 28 x 8 MB, beyond L2), in one CUDA graph each way, printing microseconds a product:

- cuBLAS: one F.linear a product (the baseline act runs today), measured first in the same process;
- per-layer: one launch of the Triton kernel below a product, no barrier;
- persistent: one launch for the whole chain, a grid barrier (an atomic count, spun on) after each product;
- the barriers alone (the same launch with no products): what a phase costs at the least;
- persistent with plain stores in place of the atomics (a wrong sum, for timing only): what the reduction costs;
- `--tma`: the persistent kernel reading the weights, then also the activations, by TMA descriptors;
- `--cuda`: kernels written by hand in CUDA C++ and built by NVRTC (torch.cuda._compile_kernel): 128 blocks of 8
  warps on mma.sync, the weights pre-permuted into the B fragments' order and read straight into registers, the
  split-K partials added by scalar atomics, by two-wide `red`, or stored (a wrong sum, timing only), once with the
  next layer's weights loaded before the barrier; and the splits summed inside thread-block clusters of 8 or 4
  through distributed shared memory (bf16 out, no atomics), a launch a product and as one persistent launch.

The kernel: each program takes (column tile, slice of the inner dimension) tiles, multiplies the 67 rows (padded
to a 128-row tile, masked) by its weight tile on tensor cores and adds its fp32 partial into the next layer's fp32
buffer with atomics; the next layer reads that buffer rounded to bf16, as a bf16 product's output is rounded. A
configuration is (columns a tile, splits of the inner dimension, inner step, warps, stages); the grid is
min(SMs, tiles), so every program is resident and the barrier cannot deadlock (a spin limit guards it anyway and
the configuration is reported and skipped). Each row prints its largest difference from the cuBLAS chain relative
to its scale. Results: docs/rdt.md, twenty-second session.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from rdt import graph_us  # bench/rdt.py (this folder is on the path when run as a script)

from policies.triton_import import tl, triton

SPIN = 1 << 16  # polls before a barrier gives up and flags it (a resident grid passes in a few hundred)
ROWS = 128  # the 67 rows' tile

if triton is not None:
    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _grid_barrier(sync_ptr, target, SPIN_LIMIT: tl.constexpr):  # type: ignore[no-untyped-def]
        """Count this program in and wait until `target` programs have been; sync_ptr[1] counts give-ups."""
        tl.debug_barrier()
        tl.atomic_add(sync_ptr, 1, sem="release")
        seen = tl.atomic_add(sync_ptr, 0, sem="acquire")
        polls = 0
        while (seen < target) & (polls < SPIN_LIMIT):
            seen = tl.atomic_add(sync_ptr, 0, sem="acquire")
            polls += 1
        if polls >= SPIN_LIMIT:
            tl.atomic_add(sync_ptr + 1, 1)
        tl.debug_barrier()

    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _chain_kernel(buf_ptr, w_ptr, w_desc, a_desc, sync_ptr, M,  # type: ignore[no-untyped-def]
                      LAYERS: tl.constexpr, PROGS: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                      SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      WORK: tl.constexpr, BARRIER: tl.constexpr, STORE: tl.constexpr, TMA: tl.constexpr,
                      SPIN_LIMIT: tl.constexpr):
        """buf (LAYERS + 1, M, K) fp32: layer l reads buf[l] and adds into buf[l + 1]; w (LAYERS, N, K).

        TMA: 0 plain loads, 1 the weights by w_desc, 2 the activations by a_desc as well."""
        pid = tl.program_id(0)
        rows = tl.arange(0, BLOCK_M)
        rmask = rows < M
        KS: tl.constexpr = K // SPLITS
        TILES: tl.constexpr = (N // BLOCK_N) * SPLITS
        for layer in range(0, LAYERS):
            if WORK:
                for i in range(0, (TILES + PROGS - 1) // PROGS):
                    t = pid + i * PROGS
                    if t < TILES:
                        col0 = (t // SPLITS) * BLOCK_N
                        cols = col0 + tl.arange(0, BLOCK_N)
                        k0 = (t % SPLITS) * KS
                        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
                        for kk in range(0, KS, BLOCK_K):
                            ks = k0 + kk + tl.arange(0, BLOCK_K)
                            if TMA >= 1:
                                b = w_desc.load([layer * N + col0, k0 + kk])
                            else:
                                b = tl.load(w_ptr + layer * N * K + cols[:, None] * K + ks[None, :])
                            if TMA == 2:  # rows past M are the next buffer's: their outputs are masked below
                                a = a_desc.load([layer * M, k0 + kk])
                            else:
                                a = tl.load(buf_ptr + layer * M * K + rows[:, None] * K + ks[None, :],
                                            mask=rmask[:, None], other=0.0, cache_modifier=".cg")
                            acc = tl.dot(a.to(b.dtype), tl.trans(b), acc)
                        out = buf_ptr + (layer + 1) * M * N + rows[:, None] * N + cols[None, :]
                        if STORE:  # timing only: this split's partial stored, not added (wrong when SPLITS > 1)
                            tl.store(out, acc, mask=rmask[:, None])
                        else:
                            tl.atomic_add(out, acc, mask=rmask[:, None], sem="relaxed")
            if BARRIER:
                _grid_barrier(sync_ptr, (layer + 1) * PROGS, SPIN_LIMIT)


CUDA_SOURCE = r"""
// act's 67-row products by hand: 128 blocks of 8 warps on mma.sync, each block one (NT columns, KS of the inner
// dimension) tile, S slices of the inner dimension a column tile. The weights are pre-permuted into
// mma.m16n8k16's B fragments (`fragments` below), so each thread reads its own with 16-byte coalesced loads
// straight into registers; the activations go through shared memory (ldmatrix).
// Defines given: M_ (rows), S, REDUCE, LOOKAHEAD, PERSIST.
//   REDUCE 0/1/2: fp32 activations in memory; a block's partial is added into the next layer's buffer by scalar
//     atomics (0) or two-wide `red` (1), or stored (2: a wrong sum, timing only); the next layer reads the sums
//     rounded to bf16.
//   REDUCE 3: bf16 activations (cp.async); the S blocks of a column tile form a thread-block cluster: each leaves
//     its fp32 partial in its shared memory and, after a cluster barrier, sums its share of the tile's columns over
//     the S blocks' shared memory in a fixed order, rounds to bf16 and stores it. No atomics, no zeroing.
//   LOOKAHEAD: the next layer's weights are loaded before this layer's products and barrier.
//   PERSIST: one launch for every layer, a grid barrier after each; else one launch a layer.
#define N_ 2048
#define K_ 2048
#define KS (K_ / S)
#define NT (N_ * S / 128)
#define JB (NT / 64)
#define Q (KS / 32)
#define PAD (KS + 8)
#define MT 5
#define SPIN_LIMIT 65536
#if REDUCE == 3
typedef unsigned short act_t;
#else
typedef float act_t;
#endif

__device__ __forceinline__ unsigned bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ void load_b(uint4 (&b)[JB][Q], const uint4* __restrict__ wf, int layer, int j0, int q0,
                                       int lane) {
#pragma unroll
    for (int jb = 0; jb < JB; ++jb)
#pragma unroll
        for (int q = 0; q < Q; ++q)
            b[jb][q] = __ldg(wf + (((size_t)layer * (N_ / 8) + j0 + jb) * (K_ / 32) + q0 + q) * 32 + lane);
}

__device__ __forceinline__ void load_a(unsigned short (*as)[PAD], const act_t* src, int k0) {
#if REDUCE == 3
    for (int i = threadIdx.x; i < M_ * (KS / 8); i += 256) {
        const unsigned dst = (unsigned)__cvta_generic_to_shared(&as[i / (KS / 8)][(i % (KS / 8)) * 8]);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst),
                     "l"(src + (size_t)(i / (KS / 8)) * K_ + k0 + (i % (KS / 8)) * 8) : "memory");
    }
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
#else
    constexpr int LOADS = (M_ * (KS / 4) + 255) / 256;  // every float4 a thread reads is issued before any is used
    float4 v[LOADS];
#pragma unroll
    for (int it = 0; it < LOADS; ++it) {
        const int i = threadIdx.x + it * 256;
        if (i < M_ * (KS / 4))
            v[it] = __ldcg(reinterpret_cast<const float4*>(src + (size_t)(i / (KS / 4)) * K_ + k0) + i % (KS / 4));
    }
#pragma unroll
    for (int it = 0; it < LOADS; ++it) {
        const int i = threadIdx.x + it * 256;
        if (i < M_ * (KS / 4))
            *reinterpret_cast<uint2*>(&as[i / (KS / 4)][(i % (KS / 4)) * 4]) =
                make_uint2(bf16x2(v[it].x, v[it].y), bf16x2(v[it].z, v[it].w));
    }
#endif
}

__device__ __forceinline__ void products(float (&acc)[MT][JB][4], const uint4 (&b)[JB][Q],
                                         unsigned short (*as)[PAD], int lane) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int jb = 0; jb < JB; ++jb)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][jb][e] = 0.f;
#pragma unroll
    for (int q = 0; q < Q; ++q) {
#pragma unroll
        for (int sp = 0; sp < 2; ++sp) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const unsigned addr = (unsigned)__cvta_generic_to_shared(
                    &as[mt * 16 + (lane & 15)][q * 32 + sp * 16 + (lane >> 4) * 8]);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                             : "=r"(a[mt][0]), "=r"(a[mt][1]), "=r"(a[mt][2]), "=r"(a[mt][3]) : "r"(addr));
            }
#pragma unroll
            for (int jb = 0; jb < JB; ++jb) {
                const unsigned b0 = sp ? b[jb][q].z : b[jb][q].x;
                const unsigned b1 = sp ? b[jb][q].w : b[jb][q].y;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                                 : "+f"(acc[mt][jb][0]), "+f"(acc[mt][jb][1]), "+f"(acc[mt][jb][2]),
                                   "+f"(acc[mt][jb][3])
                                 : "r"(a[mt][0]), "r"(a[mt][1]), "r"(a[mt][2]), "r"(a[mt][3]), "r"(b0), "r"(b1));
            }
        }
    }
}

__device__ __forceinline__ void put2(float* p, float a, float b) {
#if REDUCE == 0
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#elif REDUCE == 1
    asm volatile("red.relaxed.gpu.global.add.v2.f32 [%0], {%1, %2};" :: "l"(p), "f"(a), "f"(b) : "memory");
#else  // 2: a plain store into global memory (timing only); 3: into the block's shared memory
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
#endif
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ void grid_sync(unsigned* sync, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(sync, 1u);
        unsigned seen;
        int polls = 0;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(sync) : "memory");
        } while (seen < target && ++polls < SPIN_LIMIT);
        if (polls >= SPIN_LIMIT) atomicAdd(sync + 1, 1u);  // the flag the host reads
    }
    __syncthreads();
}

__device__ __forceinline__ void phase(int layer, int layers, uint4 (&cur)[JB][Q], uint4 (&nxt)[JB][Q], act_t* buf,
                                      const uint4* __restrict__ wf, unsigned* sync, unsigned char* smem) {
    unsigned short (*as)[PAD] = reinterpret_cast<unsigned short (*)[PAD]>(smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int rank = blockIdx.x % S, n0 = (blockIdx.x / S) * NT, k0 = rank * KS;
    const int j0 = n0 / 8 + JB * warp, q0 = k0 / 32;
#if !LOOKAHEAD
    load_b(cur, wf, layer, j0, q0, lane);
#endif
    load_a(as, buf + (size_t)layer * M_ * K_, k0);
#if LOOKAHEAD
    if (layer + 1 < layers) load_b(nxt, wf, layer + 1, j0, q0, lane);
#endif
    __syncthreads();
    float acc[MT][JB][4];
    products(acc, cur, as, lane);
#if REDUCE == 3
    __syncthreads();  // every warp is done with the activations: the memory now takes the partials
    float* part = reinterpret_cast<float*>(smem);  // (M_, NT)
    const int col_base = 0, stride = NT;
#else
    float* part = buf + (size_t)(layer + 1) * M_ * N_;
    const int col_base = n0, stride = N_;
#endif
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int jb = 0; jb < JB; ++jb) {
            const int col = col_base + (JB * warp + jb) * 8 + 2 * t, r0 = mt * 16 + g;
            if (r0 < M_) put2(part + (size_t)r0 * stride + col, acc[mt][jb][0], acc[mt][jb][1]);
            if (r0 + 8 < M_) put2(part + (size_t)(r0 + 8) * stride + col, acc[mt][jb][2], acc[mt][jb][3]);
        }
#if REDUCE == 3
    cluster_sync();
    act_t* out = buf + (size_t)(layer + 1) * M_ * N_;
    for (int i = threadIdx.x; i < M_ * (NT / S / 4); i += 256) {  // this block's NT / S columns, 4 a thread
        const int r = i / (NT / S / 4), c = rank * (NT / S) + (i % (NT / S / 4)) * 4;
        const unsigned local = (unsigned)__cvta_generic_to_shared(part + r * NT + c);
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int from = 0; from < S; ++from) {
            unsigned remote;
            float4 v;
            asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(from));
            asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];"
                         : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(remote) : "memory");
            sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
        }
        *reinterpret_cast<uint2*>(out + (size_t)r * N_ + n0 + c) = make_uint2(bf16x2(sum.x, sum.y), bf16x2(sum.z, sum.w));
    }
#endif
#if PERSIST
    grid_sync(sync, (unsigned)(layer + 1) * gridDim.x);
#elif REDUCE == 3
    cluster_sync();  // no block may leave while its cluster still reads its shared memory
#endif
}

extern "C" __global__ void
#if REDUCE == 3
__cluster_dims__(S, 1, 1)
#endif
__launch_bounds__(256, 1) chain(act_t* buf, const uint4* __restrict__ wf, unsigned* sync, int layers) {
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned short (*as)[PAD] = reinterpret_cast<unsigned short (*)[PAD]>(smem);
    for (int i = threadIdx.x; i < (MT * 16 - M_) * PAD; i += blockDim.x) as[M_ + i / PAD][i % PAD] = 0;
    uint4 b0[JB][Q], b1[JB][Q];
#if LOOKAHEAD
    load_b(b0, wf, 0, (blockIdx.x / S) * NT / 8 + JB * (threadIdx.x >> 5), (blockIdx.x % S) * KS / 32, threadIdx.x & 31);
#endif
    for (int layer = 0; layer < layers; layer += 2) {
        phase(layer, layers, b0, b1, buf, wf, sync, smem);
        if (layer + 1 < layers) phase(layer + 1, layers, b1, b0, buf, wf, sync, smem);
    }
}
"""

CUDA_ROWS = ((8, 0, False, True), (8, 1, False, True), (8, 2, False, True), (8, 1, True, True),
             (8, 3, False, False), (4, 3, False, False), (8, 3, False, True), (4, 3, False, True))
"""(splits, reduce, lookahead, persist) of each CUDA row, as CUDA_SOURCE's defines."""


def cuda_row_name(splits: int, reduce: int, lookahead: bool, persist: bool) -> str:
    how = ("scalar atomics", "two-wide red", "stores (a wrong sum)", f"clusters of {splits} summing in shared memory")
    return (f"CUDA by hand, {how[reduce]}, next weights {'loaded ahead' if lookahead else 'loaded in the phase'}, "
            f"{'one launch' if persist else 'a launch a product'}")


def cuda_kernel(rows: int, splits: int, reduce: int, lookahead: bool, persist: bool) -> Callable[..., None]:
    """CUDA_SOURCE through NVRTC (torch.cuda._compile_kernel) with its defines, its shared memory configured."""
    defines = "".join(f"#define {k} {int(v)}\n" for k, v in
                      dict(M_=rows, S=splits, REDUCE=reduce, LOOKAHEAD=lookahead, PERSIST=persist).items())
    kernel = torch.cuda._compile_kernel(defines + CUDA_SOURCE, "chain")
    kernel.set_shared_memory_config(cuda_smem(splits))
    return kernel  # type: ignore[no-any-return]


def cuda_smem(splits: int) -> int:
    """Bytes of shared memory a block: 80 rows of its slice of the inner dimension in bf16 (the fp32 partials of
    the cluster rows fit in the same memory)."""
    return 80 * (2048 // splits + 8) * 2


def fragments(weights: torch.Tensor) -> torch.Tensor:
    """(L, N, K) bf16 weights -> mma.m16n8k16 B fragments: [L][N/8][K/32][lane][8], a thread's 16 bytes for two
    16-deep steps (b0 b1 of the first, then of the second; each the pair (k, k+1) at k = 2 (lane % 4) and + 8)."""
    layers, n, k = weights.shape
    w = weights.view(layers, n // 8, 8, k // 32, 2, 2, 4, 2)  # L, j, g, s2, sp, h, t, p
    return w.permute(0, 1, 3, 2, 6, 4, 5, 7).contiguous()  # L, j, s2, g, t, sp, h, p: lane = 4 g + t


def chain(buf: torch.Tensor, weights: torch.Tensor, sync: torch.Tensor, config: tuple[int, ...], mode: str) -> None:
    """y <- y W_l^T for every layer, reading buf[0] and leaving each layer's fp32 output in buf[l + 1].

    buf (layers + 1, M, K) fp32 with buf[1:] zero; sync (2,) int32 zero; weights (layers, N, K). mode: per-layer,
    persistent, barriers, stores, tma (weights by TMA) or tma-a (activations too)."""
    block_n, splits, block_k, warps, stages = config
    layers, n, k = weights.shape
    m = buf.shape[1]
    tiles = (n // block_n) * splits
    sms = torch.cuda.get_device_properties(buf.device).multi_processor_count if buf.is_cuda else 8
    progs = min(sms, tiles)
    w_desc = a_desc = None
    tma = {"tma": 1, "tma-a": 2}.get(mode, 0)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor  # type: ignore[import-not-found,unused-ignore]

        w_desc = TensorDescriptor.from_tensor(weights.view(layers * n, k), [block_n, block_k])
        a_desc = TensorDescriptor.from_tensor(buf.view(-1, k), [ROWS, block_k])
    args = dict(PROGS=progs, N=n, K=k, SPLITS=splits, BLOCK_M=ROWS, BLOCK_N=block_n, BLOCK_K=block_k,
                WORK=mode != "barriers", STORE=mode == "stores", TMA=tma, SPIN_LIMIT=SPIN, num_warps=warps,
                num_stages=stages)
    if mode == "per-layer":  # layer l's launch sees buf from l and weights from l as its layer 0
        for layer in range(layers):
            _chain_kernel[(progs,)](buf[layer:], weights[layer], None, None, sync, m, LAYERS=1, BARRIER=False,
                                    **args)
    else:
        _chain_kernel[(progs,)](buf, weights, w_desc, a_desc, sync, m, LAYERS=layers, BARRIER=True, **args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--rows", type=int, default=67)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--configs", nargs="*", default=[
        "128,8,64,4,3", "128,8,64,4,4", "128,8,64,8,3", "64,4,64,4,3", "64,4,128,4,3", "64,8,64,4,3",
        "128,4,64,4,3", "256,16,64,8,3", "256,8,64,8,3", "32,2,128,4,4", "16,1,128,4,4"],
        help="columns a tile, splits of the inner dimension, inner step, warps, stages")
    ap.add_argument("--tma", nargs="*", default=["128,8,64,8,3", "128,8,64,4,4", "64,4,64,4,4", "128,8,128,8,2",
                                                 "256,16,64,8,2"], help="as --configs, for the TMA rows")
    ap.add_argument("--cuda", action="store_true", help="also the hand-written CUDA kernel (NVRTC)")
    args = ap.parse_args()
    torch.manual_seed(0)
    layers, m, d = args.layers, args.rows, args.width
    most = 80 if args.cuda else ROWS  # the rows' tile: CUDA's 5 x 16, Triton's 128
    if not 1 <= m <= most:
        raise SystemExit(f"--rows must be 1..{most}: the rows' tile{' in the CUDA rows' if args.cuda else ''}")
    dev = torch.device("cuda")
    weights = (torch.randn(layers, d, d, device=dev) / d**0.5).to(torch.bfloat16)
    x = torch.randn(m, d, device=dev).to(torch.bfloat16)
    outs: list[torch.Tensor] = []

    def cublas() -> None:
        y = x
        for w in weights:
            y = torch.nn.functional.linear(y, w)
        outs[:] = [y]

    base_us, _ = graph_us(cublas, layers)
    ref = outs[0].float()
    print(f"cuBLAS F.linear, {m} x {d} -> {d}, {layers} distinct weights: {base_us:.2f} us a product", flush=True)
    buf = torch.zeros(layers + 1, m, d, device=dev)  # fp32 sums (Triton, CUDA's atomic rows)
    ys = torch.zeros(layers + 1, m, d, dtype=torch.bfloat16, device=dev)  # bf16 (CUDA's cluster rows)
    sync = torch.zeros(2, dtype=torch.int32, device=dev)

    def setup() -> None:
        buf[1:].zero_()
        sync.zero_()
        buf[0].copy_(x)
        ys[0].copy_(x)

    def timed(body: Callable[[], None], out: torch.Tensor, exact: bool = True) -> str:
        """body once outside a graph (a barrier that gave up is reported, not timed), then in one; its cell."""
        try:
            body()
            torch.cuda.synchronize()
            if int(sync[1]):
                return "a barrier gave up (not every block resident at once), skipped"
            us, _ = graph_us(body, layers)
        except Exception as exc:  # noqa: BLE001  # a configuration that cannot build is reported, not fatal
            return f"failed: {type(exc).__name__}: {str(exc)[:1500]}"
        err = float((out[layers].to(torch.bfloat16).float() - ref).abs().max()) / float(ref.abs().max())
        return f"{us:.2f} us ({us / base_us:.2f}x cuBLAS" + (f", rel. diff {err:.1e})" if exact else ")")

    if args.cuda:
        if d != 2048:
            raise SystemExit("--cuda is written for --width 2048 (CUDA_SOURCE's N_ and K_)")
        wf = fragments(weights)
        for splits, reduce, lookahead, persist in CUDA_ROWS:
            out = ys if reduce == 3 else buf
            try:
                kernel = cuda_kernel(m, splits, reduce, lookahead, persist)
            except Exception as exc:  # noqa: BLE001  # a compiler failure is reported, not fatal
                print(f"{cuda_row_name(splits, reduce, lookahead, persist)}: failed to build: {exc}", flush=True)
                continue

            def hand(kernel: Callable[..., None] = kernel, splits: int = splits, persist: bool = persist,
                     out: torch.Tensor = out) -> None:
                setup()
                for layer in [0] if persist else range(layers):
                    kernel(grid=(128, 1, 1), block=(256, 1, 1), shared_mem=cuda_smem(splits),
                           args=[out[layer:], wf[layer:], sync, layers if persist else 1])
            print(f"{cuda_row_name(splits, reduce, lookahead, persist)}: {timed(hand, out, reduce != 2)}", flush=True)
    for text, modes in [(t, ("per-layer", "persistent", "barriers", "stores")) for t in args.configs] + [
            (t, ("tma", "tma-a")) for t in args.tma]:
        config = tuple(int(v) for v in text.split(","))
        cells = []
        for mode in modes:
            def body(mode: str = mode, config: tuple[int, ...] = config) -> None:
                setup()
                chain(buf, weights, sync, config, mode)
            cells.append(f"{mode} {timed(body, buf, mode not in ('barriers', 'stores'))}")
        print(f"{text}: " + "; ".join(cells), flush=True)
    print(f"(the buffers' zeroing and the input's copy, in every row but cuBLAS's: {graph_us(setup, layers)[0]:.2f} us "
          "a product)")


if __name__ == "__main__":
    main()
