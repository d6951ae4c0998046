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
//   * a kernel that never synchronises (the code generator says so) skips the fibers: its
//     threads simply run one after the other;
//   * `__shared__` is `static thread_local`: one copy per OpenMP thread, i.e. per running block;
//   * warp shuffles go through a per-block scratch array and a barrier, so every thread of
//     the block must execute them (the generated code always does; on the GPU the mask is full);
//   * atomics are real atomics, since blocks run concurrently.
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <ucontext.h>

#include <functional>

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

struct Fiber {
    ucontext_t ctx;    // only to start the fiber on its own stack, once
    jmp_buf resume;    // where it waits: at a barrier, or done and ready for its next thread
    bool started, done;
    int shuffles;      // shuffles this thread has made: picks the scratch half (see below)
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

    static BlockRunner& self() {
        static thread_local BlockRunner* runner = new BlockRunner();  // lives as long as its thread
        return *runner;
    }

    static void entry() {
        for (;;) {
            BlockRunner& r = self();
            (*r.body)();
            Fiber& fb = r.fibers[r.current];
            fb.done = true;
            if (!_setjmp(fb.resume)) _longjmp(r.scheduler, 1);
        }
    }

    void set_thread(int t) {
        thread_idx = dim3(t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y));
    }

    // Run the threads of one block to completion, honouring __syncthreads.
    void run_block(const std::function<void()>& f, int nthreads, bool fibers_needed) {
        if (!fibers_needed) {
            for (int t = 0; t < nthreads; ++t) {
                set_thread(t);
                f();
            }
            return;
        }
        if (!stacks) stacks = (char*)malloc((size_t)kMaxThreads * kStackStride);  // touched lazily
        body = &f;
        for (int t = 0; t < nthreads; ++t) fibers[t].done = false, fibers[t].shuffles = 0;
        in_fibers = true;
        // One round runs every live thread up to its next barrier (or its end).
        for (bool live = true; live;) {
            live = false;
            for (int t = 0; t < nthreads; ++t) {
                Fiber& fb = fibers[t];
                if (fb.done) continue;
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
                live |= !fb.done;
            }
        }
        in_fibers = false;
        current = -1;
    }

    void barrier() {
        if (!in_fibers) {
            fprintf(stderr, "cuda_emu: __syncthreads() in a kernel launched without fibers\n");
            abort();
        }
        if (!_setjmp(fibers[current].resume)) _longjmp(scheduler, 1);
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
#pragma omp parallel for schedule(dynamic) if (parallel)
    for (long b = 0; b < nblocks; ++b) {
        grid_dim = grid;
        block_dim = block;
        block_idx = dim3(b % grid.x, (b / grid.x) % grid.y, b / ((long)grid.x * grid.y));
        BlockRunner::self().run_block(kernel_call, nthreads, uses_barriers);
    }
}

}  // namespace
}  // namespace dlc_emu

#define threadIdx (dlc_emu::thread_idx)
#define blockIdx (dlc_emu::block_idx)
#define blockDim (dlc_emu::block_dim)
#define gridDim (dlc_emu::grid_dim)
#define warpSize 32

static inline void __syncthreads() { dlc_emu::BlockRunner::self().barrier(); }

// Warp shuffles: publish the value, barrier, read the partner lane's. Successive shuffles use
// alternate halves of the scratch, so the next shuffle's barrier also guarantees that every
// read of this half is over before it is written again: one barrier per shuffle.
template <class Lane>
static inline float dlc_emu_shuffle(float v, Lane partner) {
    dlc_emu::BlockRunner& r = dlc_emu::BlockRunner::self();
    const int t = dlc_emu::linear_tid();
    float* scratch = r.shfl_scratch[r.fibers[r.current].shuffles++ & 1];
    scratch[t] = v;
    __syncthreads();
    const int lane = t & 31, src = partner(lane);
    const int src_t = t - lane + src;
    const int nthreads = (int)(blockDim.x * blockDim.y * blockDim.z);
    return (src >= 0 && src < 32 && src_t < nthreads) ? scratch[src_t] : v;
}

static inline float __shfl_down_sync(unsigned, float v, int delta, int width = 32) {
    return dlc_emu_shuffle(v, [&](int lane) {
        int base = lane - lane % width;
        return lane + delta < base + width ? lane + delta : lane;
    });
}

static inline float __shfl_up_sync(unsigned, float v, int delta, int width = 32) {
    return dlc_emu_shuffle(v, [&](int lane) {
        int base = lane - lane % width;
        return lane - delta >= base ? lane - delta : lane;
    });
}

static inline float __shfl_xor_sync(unsigned, float v, int mask, int width = 32) {
    return dlc_emu_shuffle(v, [&](int lane) {
        int base = lane - lane % width, src = lane ^ mask;
        return src >= base && src < base + width ? src : lane;
    });
}

static inline float __shfl_sync(unsigned, float v, int src_lane, int width = 32) {
    return dlc_emu_shuffle(v, [&](int lane) { return lane - lane % width + src_lane % width; });
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
