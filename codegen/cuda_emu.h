// cuda_emu.h — just enough CUDA to compile dlc's generated kernels with the host C++ compiler.
//
// The generated module (`extern "C" __global__ void ...` kernels) is included unchanged after
// this header; the emu backend then calls `dlc_emu::launch(...)` for each launch of the plan.
//
// Execution model:
//   * blocks of a grid run in parallel, one block per OpenMP thread (`omp parallel for`);
//   * the threads of one block run on that OpenMP thread as cooperative fibers:
//     `__syncthreads()` switches back to the block's scheduler, which resumes every other
//     thread of the block up to the same barrier before any thread passes it. This is the
//     barrier's meaning in CUDA, without one OS thread per CUDA thread;
//   * `__syncwarp(mask)` is a barrier of one warp (32 consecutive linear thread ids): a thread
//     waits there until every lane of the mask that has not exited has reached a `__syncwarp`,
//     while the other warps go on;
//   * a kernel that never synchronises (the code generator says so) skips the fibers: its
//     threads simply run one after the other;
//   * `__shared__` is `static thread_local`: one copy per OpenMP thread, i.e. per running block;
//   * warp shuffles go through a per-block scratch array and a warp barrier, so every live lane
//     of the warp must execute them (the generated code always does; on the GPU the mask is full);
//   * atomics are real atomics, since blocks run concurrently;
//   * the order in which a block's threads run between barriers, and the blocks of a grid, is
//     selectable (`dlc_emu_set_order`, or DLC_EMU_ORDER=forward|reverse|shuffle[:seed] when the
//     library is loaded): a race-free kernel computes the same bits in every order, one missing a
//     `__syncthreads` or `__syncwarp` between a write and another thread's read does not.
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <ucontext.h>

#include <functional>
#include <utility>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __align__(n) alignas(n)
struct alignas(16) float4 { float x, y, z, w; };
#define __launch_bounds__(...)

// Everything below has internal linkage (an unnamed namespace, `static` functions): each loaded
// library keeps its own scheduler state, whatever other emu libraries the process has loaded.
namespace dlc_emu {
namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 64 * 1024;
// Fiber stacks are kStackStride apart: not a power of two, so that the hot tops of the stacks
// do not all fall into the same cache sets.
constexpr size_t kStackStride = kStackBytes + 13 * 64;
constexpr long kParallelThreads = 16384;  // CUDA threads in a launch before blocks go to OpenMP

// The CUDA built-in variables of the thread now running on this OS thread.
thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

// -- the order in which threads and blocks run ------------------------------------------------
// forward: threads (between barriers) and blocks in increasing index; reverse: decreasing;
// shuffle: a permutation drawn from the seed, the block and the barrier round. A kernel whose
// threads communicate only across barriers computes the same bits in every order.
enum { kForward = 0, kReverse = 1, kShuffle = 2 };

struct Order {
    int mode = kForward;
    unsigned long long seed = 0;
};

Order order_from_env() {
    Order o;
    const char* s = getenv("DLC_EMU_ORDER");
    if (!s || !*s || !strcmp(s, "forward")) return o;
    if (!strcmp(s, "reverse")) {
        o.mode = kReverse;
    } else if (!strncmp(s, "shuffle", 7) && (s[7] == 0 || s[7] == ':')) {
        o.mode = kShuffle;
        o.seed = s[7] ? strtoull(s + 8, nullptr, 10) : 0;
    } else {
        fprintf(stderr, "cuda_emu: DLC_EMU_ORDER=%s: expected forward, reverse or shuffle[:seed]\n", s);
        abort();
    }
    return o;
}

Order order = order_from_env();  // set between launches (dlc_emu_set_order), read by every block

uint64_t mix64(uint64_t x) {  // splitmix64's finaliser: a well-spread hash of x
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t gcd64(uint64_t a, uint64_t b) {
    while (b) a %= b, std::swap(a, b);
    return a;
}

// The i-th block to run of n: a fixed affine permutation i -> (a i + c) mod n when shuffled
// (a coprime to n), so no table of n entries is needed for a grid of millions of blocks.
struct BlockOrder {
    int mode;
    uint64_t n, a = 1, c = 0;
    BlockOrder(const Order& o, uint64_t n_) : mode(o.mode), n(n_) {
        if (mode != kShuffle || n < 2) return;
        const uint64_t h = mix64(o.seed ^ mix64(n));
        a = 1 + h % (n - 1);
        while (gcd64(a, n) != 1) a = a % (n - 1) + 1;
        c = mix64(h) % n;
    }
    long at(long i) const {
        if (mode == kForward) return i;
        if (mode == kReverse) return (long)n - 1 - i;
        return (long)(((unsigned __int128)a * (uint64_t)i + c) % n);
    }
};

// Where a fiber stands after its last turn: ready to run on, waiting at a barrier of the block
// or of its warp, or done.
enum : char { kReady, kAtSyncthreads, kAtSyncwarp, kDone };

struct Fiber {
    ucontext_t ctx;    // only to start the fiber on its own stack, once
    jmp_buf resume;    // where it waits: at a barrier, or done and ready for its next thread
    bool started;
    char state;
    unsigned warp_mask;  // at a __syncwarp: the lanes it waits for
    int shuffles;      // shuffles this thread has made: picks the scratch half (see below)
    int mmas;          // warp matrix products this thread has joined: picks the mma scratch half
};

// Per OS thread: fiber t runs CUDA thread t of whichever block this OS thread is running.
// Fibers are made once and reused for every block and launch; switching uses _setjmp/_longjmp
// (no signal-mask system call, unlike swapcontext; compile without _FORTIFY_SOURCE, whose
// longjmp check rejects jumps between stacks).
struct BlockRunner {
    jmp_buf scheduler;
    Fiber fibers[kMaxThreads];
    char* stacks = nullptr;
    const std::function<void()>* body = nullptr;
    int current = -1;
    bool in_fibers = false;
    float shfl_scratch[2][kMaxThreads];
    unsigned mma_a[2][kMaxThreads][4], mma_b[2][kMaxThreads][2];  // each lane's A and B registers
    int mode = kForward;       // the order of this block's threads (a copy of `order`)
    int perm[kMaxThreads];     // shuffle: the permutation of the current round
    int place_of[kMaxThreads]; // and its inverse

    static BlockRunner& self() {
        static thread_local BlockRunner* runner = new BlockRunner();  // lives as long as its thread
        return *runner;
    }

    static void entry() {
        for (;;) {
            BlockRunner& r = self();
            (*r.body)();
            Fiber& fb = r.fibers[r.current];
            fb.state = kDone;
            if (!_setjmp(fb.resume)) _longjmp(r.scheduler, 1);
        }
    }

    void set_thread(int t) {
        thread_idx = dim3(t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y));
    }

    // The order of the threads for one round (the stretch between two __syncthreads): the i-th
    // thread to run is pick(i); thread t runs at place(t).
    void arrange(const Order& o, int nthreads, long block, int round) {
        mode = o.mode;
        if (mode != kShuffle) return;
        uint64_t h = mix64(o.seed ^ mix64((uint64_t)block * 0x10001ull + (uint64_t)round));
        for (int i = 0; i < nthreads; ++i) perm[i] = i;
        for (int i = nthreads - 1; i > 0; --i) {  // Fisher-Yates
            h = mix64(h);
            std::swap(perm[i], perm[h % (uint64_t)(i + 1)]);
        }
        for (int i = 0; i < nthreads; ++i) place_of[perm[i]] = i;
    }
    int pick(int i, int nthreads) const {
        return mode == kForward ? i : mode == kReverse ? nthreads - 1 - i : perm[i];
    }
    int place(int t, int nthreads) const {
        return mode == kForward ? t : mode == kReverse ? nthreads - 1 - t : place_of[t];
    }

    // Run the threads of block number `block` to completion, honouring __syncthreads and
    // __syncwarp, in the order `o` says.
    void run_block(const std::function<void()>& f, int nthreads, bool fibers_needed, const Order& o, long block) {
        if (!fibers_needed) {
            arrange(o, nthreads, block, 0);
            for (int i = 0; i < nthreads; ++i) {
                set_thread(pick(i, nthreads));
                f();
            }
            return;
        }
        if (!stacks) stacks = (char*)malloc((size_t)kMaxThreads * kStackStride);  // touched lazily
        body = &f;
        for (int t = 0; t < nthreads; ++t) fibers[t].state = kReady, fibers[t].shuffles = 0, fibers[t].mmas = 0;
        in_fibers = true;
        // One round runs every thread up to its next __syncthreads (or its end), in the round's
        // order. A warp whose __syncwarp opens goes on at once, ahead of the threads after its
        // lanes in the order: warps drift apart between __syncthreads, as on the GPU, so a
        // __syncwarp standing where a __syncthreads is needed shows.
        int live = nthreads;
        for (int round = 0; live > 0; ++round) {
            arrange(o, nthreads, block, round);
            for (int i = 0; i < nthreads; ++i) {
                const int t = pick(i, nthreads);
                Fiber& fb = fibers[t];
                if (fb.state != kReady) continue;
                current = t;
                set_thread(t);
                if (!_setjmp(scheduler)) {
                    if (fb.started) _longjmp(fb.resume, 1);
                    fb.started = true;
                    getcontext(&fb.ctx);
                    fb.ctx.uc_stack.ss_sp = stacks + (size_t)t * kStackStride;
                    fb.ctx.uc_stack.ss_size = kStackBytes;
                    fb.ctx.uc_link = nullptr;
                    makecontext(&fb.ctx, (void (*)())entry, 0);
                    ucontext_t here;
                    swapcontext(&here, &fb.ctx);  // never resumed: fibers come back by _longjmp
                }
                live -= fb.state == kDone;
                if (fb.state != kAtSyncthreads) {  // at a __syncwarp, or done: its warp's barrier may open
                    const int first = open_warp(t - t % 32, nthreads);
                    if (first <= i) i = first - 1;  // run the warp's lanes next
                }
            }
            if (live == 0) break;
            // No thread is ready: each waits at a barrier that cannot open before __syncthreads does.
            for (int t = 0; t < nthreads; ++t)
                if (fibers[t].state == kAtSyncwarp) deadlock(nthreads);
            for (int t = 0; t < nthreads; ++t)
                if (fibers[t].state == kAtSyncthreads) fibers[t].state = kReady;
        }
        in_fibers = false;
        current = -1;
    }

    // The __syncwarp of the warp starting at thread w opens when every lane its waiters name
    // (the union of their masks) that has not exited waits at one: its waiters become ready.
    // Returns the first place in the order of a thread let through, or nthreads if none.
    int open_warp(int w, int nthreads) {
        const int lanes = nthreads - w < 32 ? nthreads - w : 32;
        unsigned waiting = 0, wanted = 0, live_lanes = 0;
        for (int l = 0; l < lanes; ++l) {
            const Fiber& fb = fibers[w + l];
            if (fb.state != kDone) live_lanes |= 1u << l;
            if (fb.state == kAtSyncwarp) waiting |= 1u << l, wanted |= fb.warp_mask;
        }
        int first = nthreads;
        if (!waiting || (wanted & live_lanes & ~waiting)) return first;
        for (int l = 0; l < lanes; ++l)
            if (waiting >> l & 1) {
                fibers[w + l].state = kReady;
                const int at = place(w + l, nthreads);
                first = at < first ? at : first;
            }
        return first;
    }

    [[noreturn]] void deadlock(int nthreads) {
        fprintf(stderr, "cuda_emu: block (%u, %u, %u) can never go on (a GPU would hang or fail):\n",
                block_idx.x, block_idx.y, block_idx.z);
        for (int t = 0, shown = 0; t < nthreads && shown < 8; ++t) {
            const Fiber& fb = fibers[t];
            if (fb.state != kAtSyncwarp && fb.state != kAtSyncthreads) continue;
            fprintf(stderr, "  thread %d waits at %s\n", t, fb.state == kAtSyncwarp ? "__syncwarp" : "__syncthreads");
            ++shown;
        }
        fprintf(stderr, "  (threads of one warp wait at different barriers: __syncthreads and __syncwarp, or a "
                        "shuffle, reached in divergent code)\n");
        abort();
    }

    // Wait at a barrier: __syncthreads (kAtSyncthreads) or __syncwarp(mask) (kAtSyncwarp).
    void wait(char barrier, unsigned mask) {
        if (!in_fibers) {
            fprintf(stderr, "cuda_emu: __syncthreads(), __syncwarp() or a warp shuffle in a kernel launched "
                            "without fibers (its launch must say that it synchronises)\n");
            abort();
        }
        Fiber& fb = fibers[current];
        fb.state = barrier;
        fb.warp_mask = mask;
        if (!_setjmp(fb.resume)) _longjmp(scheduler, 1);
    }
};

inline int linear_tid() {
    return (int)(thread_idx.x + block_dim.x * (thread_idx.y + block_dim.y * thread_idx.z));
}

// Launch `kernel_call` (a closure calling the kernel with its arguments) over grid x block.
inline void launch(dim3 grid, dim3 block, bool uses_barriers, const std::function<void()>& kernel_call) {
    const long nblocks = (long)grid.x * grid.y * grid.z;
    const int nthreads = (int)(block.x * block.y * block.z);
    if (nthreads > kMaxThreads) {
        fprintf(stderr, "cuda_emu: %d threads per block (at most %d)\n", nthreads, kMaxThreads);
        abort();
    }
    // Small launches run on the calling thread: waking the team costs more than they do.
    const bool parallel = nblocks > 1 && (long)nblocks * nthreads >= kParallelThreads;
    const Order o = order;
    const BlockOrder blocks(o, (uint64_t)nblocks);
#pragma omp parallel for schedule(dynamic) if (parallel)
    for (long i = 0; i < nblocks; ++i) {
        const long b = blocks.at(i);
        grid_dim = grid;
        block_dim = block;
        block_idx = dim3(b % grid.x, (b / grid.x) % grid.y, b / ((long)grid.x * grid.y));
        BlockRunner::self().run_block(kernel_call, nthreads, uses_barriers, o, b);
    }
}

}  // namespace
}  // namespace dlc_emu

#define threadIdx (dlc_emu::thread_idx)
#define blockIdx (dlc_emu::block_idx)
#define blockDim (dlc_emu::block_dim)
#define gridDim (dlc_emu::grid_dim)
#define warpSize 32

static inline void __syncthreads() { dlc_emu::BlockRunner::self().wait(dlc_emu::kAtSyncthreads, 0); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    dlc_emu::BlockRunner::self().wait(dlc_emu::kAtSyncwarp, mask);
}

// The emulation's own entry points, exported by every library that includes this header (each
// library has its own state; Python reaches them through ctypes on the loaded library).
// dlc_emu_set_order(mode, seed): 0 forward, 1 reverse, 2 shuffle (drawn from seed); returns 0,
// or -1 (nothing changed) for an unknown mode. dlc_emu_order(): the current mode.
extern "C" int dlc_emu_set_order(int mode, unsigned long long seed) {
    if (mode < dlc_emu::kForward || mode > dlc_emu::kShuffle) return -1;
    dlc_emu::order.mode = mode;
    dlc_emu::order.seed = seed;
    return 0;
}
extern "C" int dlc_emu_order() { return dlc_emu::order.mode; }

// Warp shuffles: publish the value, wait at the warp's barrier, read the partner lane's.
// Successive shuffles use alternate halves of the scratch, so the next shuffle's barrier also
// guarantees that every read of this half is over before it is written again: one barrier per
// shuffle. Lanes of one warp only ever read each other's slots, so warps need not wait for
// each other.
template <class Lane>
static inline float dlc_emu_shuffle(unsigned members, float v, Lane partner) {
    dlc_emu::BlockRunner& r = dlc_emu::BlockRunner::self();
    const int t = dlc_emu::linear_tid();
    float* scratch = r.shfl_scratch[r.fibers[r.current].shuffles++ & 1];
    scratch[t] = v;
    __syncwarp(members);
    const int lane = t & 31, src = partner(lane);
    const int src_t = t - lane + src;
    const int nthreads = (int)(blockDim.x * blockDim.y * blockDim.z);
    return (src >= 0 && src < 32 && src_t < nthreads) ? scratch[src_t] : v;
}

static inline float __shfl_down_sync(unsigned members, float v, int delta, int width = 32) {
    return dlc_emu_shuffle(members, v, [&](int lane) {
        int base = lane - lane % width;
        return lane + delta < base + width ? lane + delta : lane;
    });
}

static inline float __shfl_up_sync(unsigned members, float v, int delta, int width = 32) {
    return dlc_emu_shuffle(members, v, [&](int lane) {
        int base = lane - lane % width;
        return lane - delta >= base ? lane - delta : lane;
    });
}

static inline float __shfl_xor_sync(unsigned members, float v, int mask, int width = 32) {
    return dlc_emu_shuffle(members, v, [&](int lane) {
        int base = lane - lane % width, src = lane ^ mask;
        return src >= base && src < base + width ? src : lane;
    });
}

static inline float __shfl_sync(unsigned members, float v, int src_lane, int width = 32) {
    return dlc_emu_shuffle(members, v, [&](int lane) { return lane - lane % width + src_lane % width; });
}

static inline float atomicAdd(float* addr, float v) {
    float old, want;
    __atomic_load(addr, &old, __ATOMIC_RELAXED);
    do {
        want = old + v;
    } while (!__atomic_compare_exchange(addr, &old, &want, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return old;
}

static inline int atomicAdd(int* addr, int v) { return __atomic_fetch_add(addr, v, __ATOMIC_SEQ_CST); }

static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}

// -- the tensor cores' warp-level matrix products (mma.sync), as the PTX ISA defines them -------
// The 32 lanes of a warp compute D (16x8) = A (16xK) B (Kx8) + C together; each lane holds the
// fragment of A, B and C/D that the ISA's fragment layout tables assign it (groupID = lane / 4,
// tig = lane % 4, below). Each lane publishes its A and B registers in the block's scratch, waits
// at its warp's barrier, then computes its own four elements of D from every lane's registers,
// reading the operands as the hardware does: a .tf32 operand is the top 19 bits of its .b32
// register (the low 13 ignored, not rounded), a pair of .bf16 operands the two halves of one
// (the lower-numbered element in the low half). The products of such operands are exact in fp32;
// they are added to C in increasing k, in fp32 (the hardware's order is unspecified: results may
// differ from a GPU's by the rounding of a K-term fp32 sum). As with the shuffles, successive
// products alternate halves of the scratch, so one barrier per product suffices. Every lane of
// the warp must call it (`.aligned`: the generated code always does).
enum { kMmaTf32 = 0, kMmaBf16 = 1 };

static inline float dlc_emu_operand(const unsigned* regs, int kind, int element) {
    if (kind == kMmaTf32) return __uint_as_float(regs[element] & 0xffffe000u);
    const unsigned r = regs[element >> 1];
    return __uint_as_float(element & 1 ? r & 0xffff0000u : r << 16);
}

static inline void dlc_emu_mma(int kind, float d[4], const unsigned a[4], const unsigned b[2]) {
    dlc_emu::BlockRunner& r = dlc_emu::BlockRunner::self();
    const int t = dlc_emu::linear_tid(), half = r.fibers[r.current].mmas++ & 1;
    memcpy(r.mma_a[half][t], a, sizeof r.mma_a[half][t]);
    memcpy(r.mma_b[half][t], b, sizeof r.mma_b[half][t]);
    __syncwarp();
    const int warp0 = t - (t & 31), K = kind == kMmaTf32 ? 8 : 16;
    const int lane = t & 31, group = lane >> 2, tig = lane & 3;
    for (int i = 0; i < 4; ++i) {  // d[i] is D[row][col]: rows group, group + 8; columns 2 tig, 2 tig + 1
        const int row = group + (i >= 2) * 8, col = tig * 2 + (i & 1);
        float acc = d[i];
        for (int k = 0; k < K; ++k) {
            // the lane and element of A that hold A[row][k], of B that hold B[k][col]
            int a_lane, a_elem, b_lane, b_elem;
            if (kind == kMmaTf32) {  // A: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); B: b0 (t, g), b1 (t+4, g)
                a_lane = (row & 7) * 4 + (k & 3), a_elem = (row >> 3) + (k >> 2) * 2;
                b_lane = col * 4 + (k & 3), b_elem = k >> 2;
            } else {  // A: a0,a1 (g, 2t..2t+1), a2,a3 (g+8, ..), a4..a7 the same 8 columns on; B: b0,b1 (2t..2t+1, g), b2,b3 (+8)
                a_lane = (row & 7) * 4 + ((k & 7) >> 1), a_elem = (k & 1) + (row >> 3) * 2 + (k >> 3) * 4;
                b_lane = col * 4 + ((k & 7) >> 1), b_elem = (k & 1) + (k >> 3) * 2;
            }
            acc += dlc_emu_operand(r.mma_a[half][warp0 + a_lane], kind, a_elem) *
                   dlc_emu_operand(r.mma_b[half][warp0 + b_lane], kind, b_elem);
        }
        d[i] = acc;
    }
}

// cp.async (global -> shared, 4, 8 or 16 bytes; the bytes past src_bytes are filled with zeros): on
// the emulator an immediate copy, so commit_group and wait_group have nothing to wait for. The
// generated code waits and synchronises before it reads what it staged, as the GPU needs.
static inline void dlc_emu_cp_async(void* dst, const void* src, int bytes, int src_bytes) {
    memcpy(dst, src, (size_t)src_bytes);
    memset((char*)dst + src_bytes, 0, (size_t)(bytes - src_bytes));
}
