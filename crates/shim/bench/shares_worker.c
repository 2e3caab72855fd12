/* A busy GPU process for the shares benchmark (bench/shares.py), through the CUDA driver API
 * only (libcuda.so.1 is dlopen'ed like the runtime does, so LD_PRELOAD=libgvm_cuda.so sees
 * every call). Each iteration launches one fixed-WORK kernel (a dependent FMA chain of LOOPS
 * steps in every thread of 1024 x 256 threads: its GPU time is the same whether or not other
 * contexts time-slice with it, unlike a %globaltimer spin) and synchronises, so the shim's
 * `ended` counter moves every iteration and a freeze holds the next launch.
 *   shares_worker calibrate TARGET_US     doubles LOOPS until one iteration takes TARGET_US
 *                                          alone; prints `loops=N iter_us=X`
 *   shares_worker run LOOPS SECS OUT GO    prints `ready` after a warm-up, waits for the file
 *                                          GO to exist, runs SECS seconds, writes one
 *                                          iteration end time (CLOCK_MONOTONIC ns) a line to OUT
 * Build: cc -O2 -o shares_worker shares_worker.c -ldl
 * Check the PTX without a GPU: extract it and run `ptxas -arch=sm_90` (pip's
 * nvidia-cuda-nvcc-cu12 wheel has ptxas): the fake libcuda used in CI ignores it. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef void *H;
static CUresult (*cuInit)(unsigned);
static CUresult (*cuDeviceGet)(int *, int);
static CUresult (*cuDevicePrimaryCtxRetain)(H *, int);
static CUresult (*cuCtxSetCurrent)(H);
static CUresult (*cuModuleLoadData)(H *, const void *);
static CUresult (*cuModuleGetFunction)(H *, H, const char *);
static CUresult (*cuMemAlloc_v2)(unsigned long long *, size_t);
static CUresult (*cuLaunchKernel)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  unsigned, H, void **, void **);
static CUresult (*cuCtxSynchronize)(void);

#define BLOCKS 1024
#define THREADS 256

static const char PTX[] =
    ".version 8.0\n.target sm_90\n.address_size 64\n"
    ".visible .entry work(.param .u32 n, .param .u64 out) {\n"
    "  .reg .u32 %i, %n, %rt, %rc, %rn, %g; .reg .f32 %x, %a, %b; .reg .u64 %o, %off;\n"
    "  .reg .pred %p;\n"
    "  ld.param.u32 %n, [n];\n"
    "  mov.u32 %rt, %tid.x; mov.u32 %rc, %ctaid.x; mov.u32 %rn, %ntid.x;\n"
    "  mad.lo.u32 %g, %rc, %rn, %rt;\n"
    "  cvt.rn.f32.u32 %x, %g;\n"
    "  mov.f32 %a, 0f3F7FFFEF;\n"
    "  mov.f32 %b, 0f3A83126F;\n"
    "  mov.u32 %i, 0;\n"
    "LOOP:\n"
    "  setp.ge.u32 %p, %i, %n;\n"
    "  @%p bra DONE;\n"
    "  fma.rn.f32 %x, %x, %a, %b;\n"
    "  fma.rn.f32 %x, %x, %a, %b;\n"
    "  fma.rn.f32 %x, %x, %a, %b;\n"
    "  fma.rn.f32 %x, %x, %a, %b;\n"
    "  add.u32 %i, %i, 1;\n"
    "  bra LOOP;\n"
    "DONE:\n"
    "  ld.param.u64 %o, [out];\n"
    "  mul.wide.u32 %off, %g, 4;\n"
    "  add.u64 %o, %o, %off;\n"
    "  st.global.f32 [%o], %x;\n"
    "  ret;\n"
    "}\n";

#define CK(x) do { CUresult r_ = (x); if (r_) { fprintf(stderr, "%s failed: %d\n", #x, r_); exit(1); } } while (0)
#define SYM(n) do { *(void **)&n = dlsym(h, #n); if (!n) { fprintf(stderr, "no %s\n", #n); exit(1); } } while (0)

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static H fwork;
static unsigned long long dout;

static void iteration(unsigned loops) {
    void *params[] = {&loops, &dout};
    CK(cuLaunchKernel(fwork, BLOCKS, 1, 1, THREADS, 1, 1, 0, 0, params, 0));
    CK(cuCtxSynchronize());
}

/* Median time of `reps` iterations, in ns. */
static long long timed(unsigned loops, int reps) {
    long long t[64];
    if (reps > 64) reps = 64;
    for (int r = 0; r < reps; r++) {
        long long s = now_ns();
        iteration(loops);
        t[r] = now_ns() - s;
    }
    for (int i = 1; i < reps; i++)
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) {
            long long x = t[j]; t[j] = t[j - 1]; t[j - 1] = x;
        }
    return t[reps / 2];
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: shares_worker calibrate TARGET_US | run LOOPS SECS OUT GO\n");
        return 2;
    }
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    SYM(cuInit); SYM(cuDeviceGet); SYM(cuDevicePrimaryCtxRetain); SYM(cuCtxSetCurrent);
    SYM(cuModuleLoadData); SYM(cuModuleGetFunction); SYM(cuMemAlloc_v2); SYM(cuLaunchKernel);
    SYM(cuCtxSynchronize);
    int dev;
    H ctx, mod;
    CK(cuInit(0)); CK(cuDeviceGet(&dev, 0)); CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx)); CK(cuModuleLoadData(&mod, PTX));
    CK(cuModuleGetFunction(&fwork, mod, "work"));
    CK(cuMemAlloc_v2(&dout, (size_t)BLOCKS * THREADS * 4));
    if (!strcmp(argv[1], "calibrate")) {
        long long target = atoll(argv[2]) * 1000ll;
        unsigned loops = 64;
        timed(loops, 5); /* JIT, clocks up */
        long long t = timed(loops, 9);
        while (t < target && loops < (1u << 30)) {
            loops *= 2;
            t = timed(loops, 9);
        }
        /* Scale back linearly from the first power of two past the target. */
        if (t > target && t > 0) {
            unsigned scaled = (unsigned)((double)loops * (double)target / (double)t);
            if (scaled > 0) { loops = scaled; t = timed(loops, 15); }
        }
        printf("loops=%u iter_us=%.1f\n", loops, t / 1e3);
        return 0;
    }
    if (!strcmp(argv[1], "run") && argc > 5) {
        unsigned loops = (unsigned)strtoul(argv[2], 0, 10);
        double secs = atof(argv[3]);
        size_t cap = (size_t)(secs * 1e6) + 16; /* at most one iteration per microsecond */
        long long *ends = malloc(cap * sizeof *ends);
        if (!ends) return 1;
        for (int i = 0; i < 5; i++) iteration(loops);
        printf("ready\n");
        fflush(stdout);
        while (access(argv[5], F_OK) != 0) usleep(500);
        long long end = now_ns() + (long long)(secs * 1e9);
        size_t n = 0;
        while (n < cap) {
            iteration(loops);
            long long t = now_ns();
            ends[n++] = t;
            if (t >= end) break;
        }
        FILE *f = fopen(argv[4], "w");
        if (!f) return 1;
        for (size_t k = 0; k < n; k++) fprintf(f, "%lld\n", ends[k]);
        fclose(f);
        printf("iterations=%zu\n", n);
        return 0;
    }
    return 2;
}
