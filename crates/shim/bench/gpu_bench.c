/* GPU micro-benchmarks of libgvm_cuda.so through the CUDA driver API only (no CUDA headers:
 * the few declarations needed are below; libcuda.so.1 is dlopen'ed like the runtime does).
 *   gpu_bench overhead N REPS          N empty-kernel launches, REPS times; prints the
 *                                      median ns per launch (launch + final synchronise).
 *   gpu_bench freeze DUR_US SECS OUT [MAX] spin kernels (at most MAX) of DUR_US back to back for SECS seconds;
 *                                      a watcher thread stamps (CLOCK_MONOTONIC) when each
 *                                      kernel's host-mapped "done" flag flips; writes one
 *                                      end time (ns) per line to OUT.
 * Build: cc -O2 -o gpu_bench gpu_bench.c -ldl -lpthread */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef void *H;
static CUresult (*cuInit)(unsigned);
static CUresult (*cuDeviceGet)(int *, int);
static CUresult (*cuDevicePrimaryCtxRetain)(H *, int);
static CUresult (*cuCtxSetCurrent)(H);
static CUresult (*cuModuleLoadData)(H *, const void *);
static CUresult (*cuModuleGetFunction)(H *, H, const char *);
static CUresult (*cuLaunchKernel)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  unsigned, H, void **, void **);
static CUresult (*cuCtxSynchronize)(void);
static CUresult (*cuMemHostAlloc)(void **, size_t, unsigned);
static CUresult (*cuMemHostGetDevicePointer)(unsigned long long *, void *, unsigned);

static const char PTX[] =
    ".version 8.0\n.target sm_90\n.address_size 64\n"
    ".visible .entry empty() { ret; }\n"
    ".visible .entry spin(.param .u64 ns, .param .u64 flags, .param .u32 idx) {\n"
    "  .reg .u64 %t0, %t1, %d, %fl, %a; .reg .u32 %i, %one; .reg .pred %p;\n"
    "  ld.param.u64 %d, [ns];\n"
    "  mov.u64 %t0, %globaltimer;\n"
    "LOOP:\n"
    "  mov.u64 %t1, %globaltimer;\n"
    "  sub.u64 %t1, %t1, %t0;\n"
    "  setp.lt.u64 %p, %t1, %d;\n"
    "  @%p bra LOOP;\n"
    "  ld.param.u64 %fl, [flags];\n"
    "  ld.param.u32 %i, [idx];\n"
    "  mul.wide.u32 %a, %i, 4;\n"
    "  add.u64 %a, %fl, %a;\n"
    "  mov.u32 %one, 1;\n"
    "  st.volatile.global.u32 [%a], %one;\n"
    "  membar.sys;\n"
    "  ret;\n"
    "}\n";

#define CK(x) do { CUresult r_ = (x); if (r_) { fprintf(stderr, "%s failed: %d\n", #x, r_); exit(1); } } while (0)
#define SYM(n) do { *(void **)&n = dlsym(h, #n); if (!n) { fprintf(stderr, "no %s\n", #n); exit(1); } } while (0)

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define MAXK 200000
static volatile unsigned *flags;
static long long ends[MAXK];
static volatile int launched, stop;

static void *watch(void *arg) {
    (void)arg;
    int next = 0;
    while (!stop || next < launched) {
        if (next < launched && flags[next]) { ends[next++] = now_ns(); continue; }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    SYM(cuInit); SYM(cuDeviceGet); SYM(cuDevicePrimaryCtxRetain); SYM(cuCtxSetCurrent);
    SYM(cuModuleLoadData); SYM(cuModuleGetFunction); SYM(cuLaunchKernel);
    *(void **)&cuCtxSynchronize = dlsym(h, "cuCtxSynchronize");
    *(void **)&cuMemHostAlloc = dlsym(h, "cuMemHostAlloc");
    *(void **)&cuMemHostGetDevicePointer = dlsym(h, "cuMemHostGetDevicePointer_v2");
    int dev; H ctx, mod, fempty, fspin;
    CK(cuInit(0)); CK(cuDeviceGet(&dev, 0)); CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx)); CK(cuModuleLoadData(&mod, PTX));
    CK(cuModuleGetFunction(&fempty, mod, "empty")); CK(cuModuleGetFunction(&fspin, mod, "spin"));
    if (!strcmp(argv[1], "overhead")) {
        int n = argc > 2 ? atoi(argv[2]) : 100000, reps = argc > 3 ? atoi(argv[3]) : 5;
        double per[64];
        if (reps > 64) reps = 64;
        for (int i = 0; i < 2000; i++) CK(cuLaunchKernel(fempty, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0));
        CK(cuCtxSynchronize());
        for (int r = 0; r < reps; r++) {
            long long t = now_ns();
            for (int i = 0; i < n; i++) CK(cuLaunchKernel(fempty, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0));
            CK(cuCtxSynchronize());
            per[r] = (double)(now_ns() - t) / n;
        }
        qsort(per, reps, sizeof per[0], cmp);
        printf("%.1f\n", per[reps / 2]);
        return 0;
    }
    if (!strcmp(argv[1], "freeze") && argc > 4) {
        unsigned long long dur = strtoull(argv[2], 0, 10) * 1000ull, dflags;
        double secs = atof(argv[3]);
        void *hp;
        CK(cuMemHostAlloc(&hp, MAXK * 4, 0x1 | 0x2)); /* PORTABLE | DEVICEMAP */
        memset(hp, 0, MAXK * 4);
        flags = hp;
        CK(cuMemHostGetDevicePointer(&dflags, hp, 0));
        pthread_t w;
        pthread_create(&w, 0, watch, 0);
        printf("running\n");
        fflush(stdout);
        long long end = now_ns() + (long long)(secs * 1e9);
        unsigned i = 0;
        unsigned cap = argc > 5 ? (unsigned)atoi(argv[5]) : MAXK;
        if (cap > MAXK) cap = MAXK;
        while (now_ns() < end && i < cap) {
            void *params[] = {&dur, &dflags, &i};
            CK(cuLaunchKernel(fspin, 1, 1, 1, 1, 1, 1, 0, 0, params, 0));
            launched = ++i;
        }
        CK(cuCtxSynchronize());
        stop = 1;
        pthread_join(w, 0);
        FILE *f = fopen(argv[4], "w");
        if (!f) return 1;
        for (int k = 0; k < launched; k++) fprintf(f, "%lld\n", ends[k]);
        fclose(f);
        printf("kernels=%d\n", launched);
        return 0;
    }
    return 2;
}
