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
from rdt import cuda_ms  # bench/rdt.py (this folder is on the path when run as a script)

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
// The chain of 67-row products, written by hand: 128 blocks of 8 warps, one (128 columns, 256 of the inner
// dimension) tile each; weights pre-permuted into mma.m16n8k16's B fragments so each thread reads them with
// 16-byte coalesced loads straight into registers; with LOOKAHEAD the next layer's fragments are loaded before
// this layer's compute and barrier, so only the activations (read from L2 into shared memory) wait on the chain.
#define N_ 2048
#define K_ 2048
#define SPLITS 8
#define KS (K_ / SPLITS)
#define PAD 264
#define MT 5
#define SPIN_LIMIT 65536

__device__ __forceinline__ void add2(float* p, float a, float b) {
#if REDUCE == 0
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#elif REDUCE == 1
    asm volatile("red.relaxed.gpu.global.add.v2.f32 [%0], {%1, %2};" :: "l"(p), "f"(a), "f"(b) : "memory");
#else
    *reinterpret_cast<float2*>(p) = make_float2(a, b);  // timing only: a wrong sum
#endif
}

__device__ __forceinline__ void load_b(uint4 (&b)[2][8], const uint4* __restrict__ wf, int layer, int j0, int q0,
                                       int lane) {
#pragma unroll
    for (int jb = 0; jb < 2; ++jb)
#pragma unroll
        for (int q = 0; q < 8; ++q)
            b[jb][q] = __ldg(wf + (((size_t)layer * (N_ / 8) + j0 + jb) * (K_ / 32) + q0 + q) * 32 + lane);
}

__device__ __forceinline__ void phase(int layer, int layers, uint4 (&cur)[2][8], uint4 (&nxt)[2][8],
                                      float* buf, const uint4* __restrict__ wf, unsigned* sync, int M,
                                      unsigned short (*as)[PAD]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = (blockIdx.x / SPLITS) * 128, k0 = (blockIdx.x % SPLITS) * KS;
    const int j0 = n0 / 8 + 2 * warp, q0 = k0 / 32;
#if !LOOKAHEAD
    load_b(cur, wf, layer, j0, q0, lane);
#endif
    const float* src = buf + (size_t)layer * M * K_;
    constexpr int LOADS = (M_ * (KS / 4) + 255) / 256;  // float4s a thread: all issued before any is used
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
        if (i < M_ * (KS / 4)) {
            unsigned lo, hi;
            asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(lo) : "f"(v[it].y), "f"(v[it].x));
            asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(hi) : "f"(v[it].w), "f"(v[it].z));
            *reinterpret_cast<uint2*>(&as[i / (KS / 4)][(i % (KS / 4)) * 4]) = make_uint2(lo, hi);
        }
    }
#if LOOKAHEAD
    if (layer + 1 < layers) load_b(nxt, wf, layer + 1, j0, q0, lane);
#endif
    __syncthreads();
    float acc[MT][2][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int jb = 0; jb < 2; ++jb)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][jb][e] = 0.f;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
#pragma unroll
        for (int sp = 0; sp < 2; ++sp) {
            const int kk = q * 32 + sp * 16;
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const unsigned addr = (unsigned)__cvta_generic_to_shared(&as[mt * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                             : "=r"(a[mt][0]), "=r"(a[mt][1]), "=r"(a[mt][2]), "=r"(a[mt][3]) : "r"(addr));
            }
#pragma unroll
            for (int jb = 0; jb < 2; ++jb) {
                const unsigned b0 = sp ? cur[jb][q].z : cur[jb][q].x;
                const unsigned b1 = sp ? cur[jb][q].w : cur[jb][q].y;
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
    float* dst = buf + (size_t)(layer + 1) * M * N_;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int jb = 0; jb < 2; ++jb) {
            const int col = n0 + (2 * warp + jb) * 8 + 2 * t, r0 = mt * 16 + g;
            if (r0 < M) add2(dst + (size_t)r0 * N_ + col, acc[mt][jb][0], acc[mt][jb][1]);
            if (r0 + 8 < M) add2(dst + (size_t)(r0 + 8) * N_ + col, acc[mt][jb][2], acc[mt][jb][3]);
        }
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(sync, 1u);
        const unsigned target = (unsigned)(layer + 1) * gridDim.x;
        unsigned seen;
        int polls = 0;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(sync) : "memory");
        } while (seen < target && ++polls < SPIN_LIMIT);
        if (polls >= SPIN_LIMIT) atomicAdd(sync + 1, 1u);
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(256, 1)
chain(float* buf, const uint4* __restrict__ wf, unsigned* sync, int layers, int M) {
    __shared__ __align__(16) unsigned short as[MT * 16][PAD];
    for (int i = threadIdx.x; i < (MT * 16 - M) * PAD; i += blockDim.x) as[M + i / PAD][i % PAD] = 0;
    uint4 b0[2][8], b1[2][8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = (blockIdx.x / SPLITS) * 128, k0 = (blockIdx.x % SPLITS) * KS;
#if LOOKAHEAD
    load_b(b0, wf, 0, n0 / 8 + 2 * warp, k0 / 32, lane);
#endif
    for (int layer = 0; layer < layers; layer += 2) {
        phase(layer, layers, b0, b1, buf, wf, sync, M, as);
        if (layer + 1 < layers) phase(layer + 1, layers, b1, b0, buf, wf, sync, M, as);
    }
}
"""



CLUSTER_SOURCE = r"""
// The same chain with the split-K partials summed inside a thread-block cluster: the S blocks of a cluster are
// the S slices of the inner dimension of one column tile; each leaves its fp32 partial in its shared memory, and
// after a cluster barrier each block sums its share of the tile's columns over the S blocks' shared memory (DSMEM)
// in a fixed order, rounds to bf16 and stores it. No atomics, no zeroing; the activations are bf16 in memory and
// are copied into shared memory with cp.async.
#define N_ 2048
#define K_ 2048
#define KS (K_ / S)
#define NT (N_ * S / 128)
#define JB (NT / 64)
#define PAD (KS + 8)
#define MT 5
#define SPIN_LIMIT 65536

__device__ __forceinline__ void load_b(uint4 (&b)[JB][KS / 32], const uint4* __restrict__ wf, int layer, int j0,
                                       int q0, int lane) {
#pragma unroll
    for (int jb = 0; jb < JB; ++jb)
#pragma unroll
        for (int q = 0; q < KS / 32; ++q)
            b[jb][q] = __ldg(wf + (((size_t)layer * (N_ / 8) + j0 + jb) * (K_ / 32) + q0 + q) * 32 + lane);
}

extern "C" __global__ void __cluster_dims__(S, 1, 1) __launch_bounds__(256, 1)
chain_cluster(unsigned short* ys, const uint4* __restrict__ wf, unsigned* sync, int layers) {
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned short (*as)[PAD] = reinterpret_cast<unsigned short (*)[PAD]>(smem);
    float (*part)[NT] = reinterpret_cast<float (*)[NT]>(smem);  // the same memory, once the products are done
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned rank;
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    const int n0 = (blockIdx.x / S) * NT, k0 = rank * KS;
    const int j0 = n0 / 8 + JB * warp, q0 = k0 / 32;
    const int g = lane >> 2, t = lane & 3;
    uint4 b[JB][KS / 32];
    for (int layer = 0; layer < layers; ++layer) {
        load_b(b, wf, layer, j0, q0, lane);
        const unsigned short* src = ys + (size_t)layer * M_ * N_;
        for (int i = threadIdx.x; i < MT * 16 * (KS / 8); i += 256) {
            const int r = i / (KS / 8), c8 = i % (KS / 8);
            const unsigned dst = (unsigned)__cvta_generic_to_shared(&as[r][c8 * 8]);
            if (r < M_)
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst),
                             "l"(src + (size_t)r * N_ + k0 + c8 * 8) : "memory");
            else
                *reinterpret_cast<uint4*>(&as[r][c8 * 8]) = make_uint4(0, 0, 0, 0);
        }
        asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
        __syncthreads();
        float acc[MT][JB][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int jb = 0; jb < JB; ++jb)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mt][jb][e] = 0.f;
#pragma unroll
        for (int q = 0; q < KS / 32; ++q) {
#pragma unroll
            for (int sp = 0; sp < 2; ++sp) {
                const int kk = q * 32 + sp * 16;
                unsigned a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const unsigned addr = (unsigned)__cvta_generic_to_shared(&as[mt * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
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
        __syncthreads();  // every warp is done with the activations: the memory now takes the partials
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int jb = 0; jb < JB; ++jb) {
                const int col = (JB * warp + jb) * 8 + 2 * t, r0 = mt * 16 + g;
                if (r0 < M_) *reinterpret_cast<float2*>(&part[r0][col]) = make_float2(acc[mt][jb][0], acc[mt][jb][1]);
                if (r0 + 8 < M_)
                    *reinterpret_cast<float2*>(&part[r0 + 8][col]) = make_float2(acc[mt][jb][2], acc[mt][jb][3]);
            }
        asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
        unsigned short* out = ys + (size_t)(layer + 1) * M_ * N_;
        for (int i = threadIdx.x; i < M_ * (NT / S / 4); i += 256) {  // this block's NT / S columns, 4 a thread
            const int r = i / (NT / S / 4), c = rank * (NT / S) + (i % (NT / S / 4)) * 4;
            const unsigned local = (unsigned)__cvta_generic_to_shared(&part[r][c]);
            float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int src_rank = 0; src_rank < S; ++src_rank) {
                unsigned remote;
                float4 v;
                asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(src_rank));
                asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];"
                             : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(remote) : "memory");
                sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
            }
            unsigned lo, hi;
            asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(lo) : "f"(sum.y), "f"(sum.x));
            asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(hi) : "f"(sum.w), "f"(sum.z));
            *reinterpret_cast<uint2*>(out + (size_t)r * N_ + n0 + c) = make_uint2(lo, hi);
        }
#if PERSIST
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(sync, 1u);
            const unsigned target = (unsigned)(layer + 1) * gridDim.x;
            unsigned seen;
            int polls = 0;
            do {
                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(sync) : "memory");
            } while (seen < target && ++polls < SPIN_LIMIT);
            if (polls >= SPIN_LIMIT) atomicAdd(sync + 1, 1u);
        }
        __syncthreads();
#else  // one launch a product: no block may leave while its cluster still reads its shared memory
        asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
    }
}
"""


def cuda_cluster_chain(rows: int, splits: int, persist: bool) -> Callable[..., None]:
    """CLUSTER_SOURCE through NVRTC, `splits` blocks a cluster, its shared memory configured; persist: one launch
    for the chain with grid barriers, else one launch a product."""
    defines = f"#define M_ {rows}\n#define S {splits}\n#define PERSIST {int(persist)}\n"
    kernel = torch.cuda._compile_kernel(defines + CLUSTER_SOURCE, "chain_cluster")
    kernel.set_shared_memory_config(cluster_smem(splits))
    return kernel  # type: ignore[no-any-return]


def cluster_smem(splits: int) -> int:
    """Bytes of shared memory a block of the cluster kernel: 80 rows of its slice of the inner dimension, bf16."""
    return 80 * (2048 // splits + 8) * 2

def fragments(weights: torch.Tensor) -> torch.Tensor:
    """(L, N, K) bf16 weights -> mma.m16n8k16 B fragments: [L][N/8][K/32][lane][8], a thread's 16 bytes for two
    16-deep steps (b0 b1 of the first, then of the second; each the pair (k, k+1) at k = 2 (lane % 4) and + 8)."""
    layers, n, k = weights.shape
    w = weights.view(layers, n // 8, 8, k // 32, 2, 2, 4, 2)  # L, j, g, s2, sp, h, t, p
    return w.permute(0, 1, 3, 2, 6, 4, 5, 7).contiguous()  # L, j, s2, g, t, sp, h, p: lane = 4 g + t


def cuda_chain(lookahead: bool, rows: int, reduce: int) -> Callable[..., None]:
    """The hand-written kernel above through NVRTC (torch.cuda._compile_kernel). reduce: 0 scalar atomics, 1
    two-wide red, 2 plain stores (timing only)."""
    defines = f"#define LOOKAHEAD {int(lookahead)}\n#define M_ {rows}\n#define REDUCE {reduce}\n"
    kernel = torch.cuda._compile_kernel(defines + CUDA_SOURCE, "chain")
    return kernel  # type: ignore[no-any-return]

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


def replay_us(body: Callable[[], None], per: int) -> float:
    """Median microseconds per `per` over 50 replays of `body` captured in one CUDA graph."""
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return cuda_ms(graph.replay, reps=50, warm=5) / per * 1000


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
    dev = torch.device("cuda")
    weights = (torch.randn(layers, d, d, device=dev) / d**0.5).to(torch.bfloat16)
    x = torch.randn(m, d, device=dev).to(torch.bfloat16)
    outs: list[torch.Tensor] = []

    def cublas() -> None:
        y = x
        for w in weights:
            y = torch.nn.functional.linear(y, w)
        outs[:] = [y]

    base_us = replay_us(cublas, layers)
    ref = outs[0].float()
    print(f"cuBLAS F.linear, {m} x {d} -> {d}, {layers} distinct weights: {base_us:.2f} us a product", flush=True)
    buf = torch.zeros(layers + 1, m, d, device=dev)
    sync = torch.zeros(2, dtype=torch.int32, device=dev)

    def setup() -> None:
        buf[1:].zero_()
        sync.zero_()
        buf[0].copy_(x)

    def measure(text: str, modes: tuple[str, ...]) -> None:
        config = tuple(int(v) for v in text.split(","))
        cells = []
        for mode in modes:
            def body(mode: str = mode) -> None:
                setup()
                chain(buf, weights, sync, config, mode)
            try:
                body()  # once outside a graph: a barrier that gave up skips the configuration
                torch.cuda.synchronize()
                if int(sync[1]):
                    cells.append(f"{mode}: a barrier gave up (programs not all resident?), skipped")
                    break
                us = replay_us(body, layers)
            except Exception as exc:  # noqa: BLE001  # a configuration Triton cannot build is reported, not fatal
                cells.append(f"{mode}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                break
            err = float((buf[layers].to(torch.bfloat16).float() - ref).abs().max()) / float(ref.abs().max())
            exact = mode not in ("barriers", "stores")
            cells.append(f"{mode} {us:.2f} us ({us / base_us:.2f}x cuBLAS" + (f", rel. diff {err:.1e})" if exact
                                                                             else ")"))
        print(f"{text}: " + "; ".join(cells), flush=True)

    if args.cuda:
        if d != 2048:
            raise SystemExit("--cuda is written for --width 2048")
        wf = fragments(weights)
        for lookahead, reduce in ((False, 0), (False, 1), (False, 2), (True, 1)):
            try:
                kernel = cuda_chain(lookahead, m, reduce)

                def hand(kernel: Callable[..., None] = kernel) -> None:
                    setup()
                    kernel(grid=(128, 1, 1), block=(256, 1, 1), args=[buf, wf, sync, layers, m])
                hand()
                torch.cuda.synchronize()
                if int(sync[1]):
                    print(f"CUDA lookahead={lookahead} reduce={reduce}: a barrier gave up; skipped", flush=True)
                    continue
                us = replay_us(hand, layers)
                err = float((buf[layers].to(torch.bfloat16).float() - ref).abs().max()) / float(ref.abs().max())
                print(f"CUDA by hand, 128 x (128 columns, 256 deep), 8 warps, next weights "
                      f"{'loaded ahead' if lookahead else 'loaded in the phase'}, "
                      f"{('scalar atomics', 'two-wide red', 'stores (wrong sum)')[reduce]}: {us:.2f} us "
                      f"({us / base_us:.2f}x cuBLAS, rel. diff {err:.1e})", flush=True)
            except Exception as exc:  # noqa: BLE001  # a compiler failure is reported, not fatal
                print(f"CUDA lookahead={lookahead} reduce={reduce}: failed: {type(exc).__name__}: {str(exc)[:1500]}", flush=True)
        ys = torch.zeros(layers + 1, m, d, dtype=torch.bfloat16, device=dev)
        for splits, persist in ((8, False), (4, False), (8, True), (4, True)):
            name = f"clusters of {splits}, {'one launch' if persist else 'a launch a product'}"
            try:
                kernel = cuda_cluster_chain(m, splits, persist)

                def clustered(kernel: Callable[..., None] = kernel, splits: int = splits,
                              persist: bool = persist) -> None:
                    sync.zero_()
                    ys[0].copy_(x)
                    for layer in [0] if persist else range(layers):
                        kernel(grid=(128, 1, 1), block=(256, 1, 1), shared_mem=cluster_smem(splits),
                               args=[ys[layer:], wf[layer:], sync, layers if persist else 1])
                clustered()
                torch.cuda.synchronize()
                if int(sync[1]):
                    print(f"CUDA {name}: a barrier gave up (clusters not all resident?); skipped", flush=True)
                    continue
                us = replay_us(clustered, layers)
                err = float((ys[layers].float() - ref).abs().max()) / float(ref.abs().max())
                print(f"CUDA by hand, {name} (the splits summed in shared memory, bf16 out): {us:.2f} us "
                      f"({us / base_us:.2f}x cuBLAS, rel. diff {err:.1e})", flush=True)
            except Exception as exc:  # noqa: BLE001  # a compiler failure is reported, not fatal
                print(f"CUDA {name}: failed: {type(exc).__name__}: {str(exc)[:1500]}", flush=True)
    for text in args.configs:
        measure(text, ("per-layer", "persistent", "barriers", "stores"))
    for text in args.tma:
        measure(text, ("tma", "tma-a"))
    print(f"(the buffers' zeroing and the input's copy, in every Triton row: {replay_us(setup, layers):.2f} us a "
          "product)")


if __name__ == "__main__":
    main()
