/* A stand-in for libcuda.so.1 in CI (no GPU): every entry point only records that it was
 * called. Built by tests/preload.rs with -Wl,-Bsymbolic so that, like the real driver, its
 * own references are not redirected to the preloaded shim's exports. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
#define GIB (1ull << 30)

static void run_kernel(void);
static CUdeviceptr next_ptr = 0x100000;
static int n_alloc, n_free, n_managed, n_advise, n_launch, n_launch_ptsz, n_launch_ex, n_sync,
    n_gpa, n_gpa2;

static CUdeviceptr take(size_t s) {
    CUdeviceptr p = next_ptr;
    next_ptr += (s + 0xfff) & ~0xfffull;
    return p;
}

/* Contexts: one primary context per device (handle CTX_BASE + device * CTX_STEP); each
 * thread starts with device 0's current, as a program that never switches devices sees. */
#define CTX_BASE 0x5ca1ab1eul
#define CTX_STEP 0x100ul
#define MAX_DEV 8
static __thread int cur_dev;
CUresult cuInit(unsigned flags) { (void)flags; return 0; }
CUresult cuCtxGetDevice(int *d) { *d = cur_dev; return 0; }
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t s) { n_alloc++; *p = take(s); return 0; }
CUresult cuMemAllocManaged(CUdeviceptr *p, size_t s, unsigned f) { (void)f; n_managed++; *p = take(s); return 0; }
CUresult cuMemFree_v2(CUdeviceptr p) { (void)p; n_free++; return 0; }
CUresult cuMemGetInfo_v2(size_t *f, size_t *t) { *f = 70 * GIB; *t = 80 * GIB; return 0; }
CUresult cuDeviceTotalMem_v2(size_t *b, int d) { (void)d; *b = 80 * GIB; return 0; }
CUresult cuMemAdvise(CUdeviceptr p, size_t s, int a, int d) { (void)p; (void)s; (void)a; (void)d; n_advise++; return 0; }
CUresult cuLaunchKernel(void *f, unsigned a, unsigned b, unsigned c, unsigned d, unsigned e,
                        unsigned g, unsigned sh, void *st, void **pa, void **x) {
    (void)f; (void)a; (void)b; (void)c; (void)d; (void)e; (void)g; (void)sh; (void)st; (void)pa; (void)x;
    n_launch++;
    run_kernel();
    return 0;
}
CUresult cuLaunchKernel_ptsz(void *f, unsigned a, unsigned b, unsigned c, unsigned d, unsigned e,
                             unsigned g, unsigned sh, void *st, void **pa, void **x) {
    (void)f; (void)a; (void)b; (void)c; (void)d; (void)e; (void)g; (void)sh; (void)st; (void)pa; (void)x;
    n_launch_ptsz++;
    return 0;
}
CUresult cuLaunchKernelEx(const void *cfg, void *f, void **pa, void **x) {
    (void)cfg; (void)f; (void)pa; (void)x;
    n_launch_ex++;
    return 0;
}
static void wait_idle(void);
CUresult cuCtxSynchronize(void) { n_sync++; wait_idle(); return 0; }
CUresult cuCtxSynchronize_v2(void *ctx) { (void)ctx; n_sync++; wait_idle(); return 0; }
/* Enough of the module API for driver-API benchmarks (bench/shares_worker.c) to run here. */
CUresult cuDeviceGet(int *d, int o) { *d = o; return 0; }
/* The devices the process sees: FAKE_PCI_BUS_IDS="0000:3B:00.0,0000:AF:00.0" (CUDA's upper-case
 * form, one per ordinal); one device at 0000:3B:00.0 by default. */
static const char *fake_pci(int d) {
    static char ids[8][16];
    static int n = -1;
    if (n < 0) {
        const char *env = getenv("FAKE_PCI_BUS_IDS");
        n = 0;
        if (!env) env = "0000:3B:00.0";
        while (*env && n < 8) {
            size_t len = strcspn(env, ",");
            if (len < sizeof ids[0]) { memcpy(ids[n], env, len); ids[n][len] = 0; n++; }
            env += len;
            if (*env == ',') env++;
        }
    }
    return d >= 0 && d < n ? ids[d] : NULL;
}
CUresult cuDeviceGetCount(int *c) { int n = 0; while (fake_pci(n)) n++; *c = n; return 0; }
CUresult cuDeviceGetPCIBusId(char *buf, int len, int d) {
    const char *id = fake_pci(d);
    if (!id) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    if (len < 13) return 1;
    strcpy(buf, id);
    return 0;
}
CUresult cuDevicePrimaryCtxRetain(void **c, int d) {
    if (!fake_pci(d) || d >= MAX_DEV) return 101;
    *c = (void *)(CTX_BASE + (unsigned long)d * CTX_STEP);
    return 0;
}
CUresult cuModuleLoadData(void **m, const void *img) { (void)img; *m = (void *)0x30d; return 0; }
CUresult cuModuleGetFunction(void **f, void *m, const char *n) { (void)m; (void)n; *f = (void *)0xf00; return 0; }

/* Events: "kernels" take FAKE_KERNEL_MS each (negative: never end), back to back per
 * process and device; an event completes when the last kernel launched before it on the
 * current device would have ended. */
static long long free_at_ns[MAX_DEV], n_records, n_stream_queries;
#define gpu_free_at_ns free_at_ns[cur_dev]
static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}
static long long kernel_ns(void) {
    const char *e = getenv("FAKE_KERNEL_MS");
    return e ? atoll(e) * 1000000ll : 0;
}
static void run_kernel(void) {
    long long k = kernel_ns(), now = now_ns();
    if (k < 0) { gpu_free_at_ns = -1; return; }
    if (gpu_free_at_ns < 0) return;
    gpu_free_at_ns = (gpu_free_at_ns > now ? gpu_free_at_ns : now) + k;
}
/* With FAKE_SYNC_WAITS=1 a synchronise sleeps until the last fake kernel would have ended. */
static void wait_idle(void) {
    const char *e = getenv("FAKE_SYNC_WAITS");
    if (!e || strcmp(e, "1")) return;
    long long left = gpu_free_at_ns - now_ns();
    if (gpu_free_at_ns <= 0 || left <= 0) return;
    struct timespec ts = {left / 1000000000ll, left % 1000000000ll};
    nanosleep(&ts, NULL);
}
typedef struct { long long done_at; } fake_event;
CUresult cuCtxGetCurrent(void **c) { *c = (void *)(CTX_BASE + (unsigned long)cur_dev * CTX_STEP); return 0; }
CUresult cuCtxSetCurrent(void *c) {
    unsigned long v = (unsigned long)c;
    if (v < CTX_BASE || (v - CTX_BASE) % CTX_STEP || (v - CTX_BASE) / CTX_STEP >= MAX_DEV) return 201; /* CUDA_ERROR_INVALID_CONTEXT */
    cur_dev = (int)((v - CTX_BASE) / CTX_STEP);
    return 0;
}
CUresult cuEventCreate(void **e, unsigned f) { (void)f; *e = calloc(1, sizeof(fake_event)); return *e ? 0 : 2; }
CUresult cuEventRecord(void *e, void *s) { (void)s; n_records++; ((fake_event *)e)->done_at = gpu_free_at_ns; return 0; }
CUresult cuEventRecord_ptsz(void *e, void *s) { return cuEventRecord(e, s); }
CUresult cuEventQuery(void *e) {
    long long d = ((fake_event *)e)->done_at;
    return (d >= 0 && now_ns() >= d) ? 0 : 600;
}
/* Stream capture: one at a time. Querying any stream while it is in progress is counted
 * and refused, as the real driver refuses (and invalidates the capture). */
static volatile int in_capture;
static int n_queries_in_capture;
CUresult cuStreamBeginCapture_v2(void *s, int mode) { (void)s; (void)mode; if (in_capture) return 900; in_capture = 1; return 0; }
CUresult cuStreamEndCapture(void *s, void **g) { (void)s; if (!in_capture) return 401; in_capture = 0; *g = (void *)0x6a; return 0; }
/* One fake queue per process and device: a stream has finished when the last kernel
 * launched on the current device has. */
CUresult cuStreamQuery(void *s) {
    (void)s;
    if (in_capture) { n_queries_in_capture++; return 900; /* CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED */ }
    n_stream_queries++;
    return (gpu_free_at_ns >= 0 && now_ns() >= gpu_free_at_ns) ? 0 : 600;
}
/* The fake GPU time between two completed events, as the driver gives it: milliseconds. */
CUresult cuEventElapsedTime(float *ms, void *a, void *b) {
    long long da = ((fake_event *)a)->done_at, db = ((fake_event *)b)->done_at, now = now_ns();
    if (da < 0 || db < 0 || now < da || now < db) return 600; /* CUDA_ERROR_NOT_READY */
    *ms = (float)((db - da) / 1e6);
    return 0;
}
CUresult cuStreamIsCapturing(void *s, int *st) { (void)s; *st = 0; return 0; }
CUresult cuStreamIsCapturing_ptsz(void *s, int *st) { return cuStreamIsCapturing(s, st); }
CUresult cuThreadExchangeStreamCaptureMode(int *m) { *m = 0; return 0; }

/* The GPU-side gate: host memory mapped for the GPU (only with FAKE_HOST_REGISTER=1; the
 * address the "GPU" sees is the host address, as with UVA) and stream waits on a word of it,
 * recorded: how many, how many found the word set when queued, the last one's offset into
 * the registered memory, and that word's value now. */
static unsigned char *registered_base;
static volatile unsigned *last_wait;
static int n_waits, n_waits_held, n_wait_bad;
CUresult cuMemHostRegister_v2(void *p, size_t s, unsigned f) {
    const char *e = getenv("FAKE_HOST_REGISTER");
    if (!e || strcmp(e, "1")) return 1; /* CUDA_ERROR_INVALID_VALUE */
    if (!p || s == 0 || ((unsigned long)p & 0xfff) || f != 3) return 1;
    registered_base = p;
    return 0;
}
CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *d, void *p, unsigned f) {
    if (!registered_base || p != registered_base || f != 0) return 1;
    *d = (CUdeviceptr)p;
    return 0;
}
CUresult cuStreamWaitValue32_v2(void *s, CUdeviceptr addr, unsigned v, unsigned f) {
    (void)s;
    n_waits++;
    if (!registered_base || addr < (CUdeviceptr)registered_base || v != 0 || f != 1 /* EQ */) {
        n_wait_bad++;
        return 1;
    }
    last_wait = (volatile unsigned *)addr;
    if (*last_wait != v) n_waits_held++;
    return 0;
}
CUresult cuStreamWaitValue32_v2_ptsz(void *s, CUdeviceptr addr, unsigned v, unsigned f) {
    return cuStreamWaitValue32_v2(s, addr, v, f);
}

CUresult cuGetProcAddress(const char *s, void **pfn, int v, unsigned long long flags);
CUresult cuGetProcAddress_v2(const char *s, void **pfn, int v, unsigned long long flags, int *st);

static void *lookup(const char *s, int v, unsigned long long flags) {
    if (!strcmp(s, "cuGetProcAddress")) return v >= 12000 ? (void *)cuGetProcAddress_v2 : (void *)cuGetProcAddress;
    if (!strcmp(s, "cuMemAlloc")) return v >= 3020 ? (void *)cuMemAlloc_v2 : NULL;
    if (!strcmp(s, "cuMemFree")) return v >= 3020 ? (void *)cuMemFree_v2 : NULL;
    if (!strcmp(s, "cuMemGetInfo")) return v >= 3020 ? (void *)cuMemGetInfo_v2 : NULL;
    if (!strcmp(s, "cuDeviceTotalMem")) return v >= 3020 ? (void *)cuDeviceTotalMem_v2 : NULL;
    if (!strcmp(s, "cuMemAllocManaged")) return (void *)cuMemAllocManaged;
    if (!strcmp(s, "cuMemAdvise")) return (void *)cuMemAdvise;
    if (!strcmp(s, "cuCtxGetDevice")) return (void *)cuCtxGetDevice;
    if (!strcmp(s, "cuCtxSynchronize")) return v >= 13000 ? (void *)cuCtxSynchronize_v2 : (void *)cuCtxSynchronize;
    if (!strcmp(s, "cuInit")) return (void *)cuInit;
    if (!strcmp(s, "cuCtxSetCurrent")) return (void *)cuCtxSetCurrent;
    if (!strcmp(s, "cuStreamBeginCapture")) return v >= 10010 ? (void *)cuStreamBeginCapture_v2 : NULL;
    if (!strcmp(s, "cuStreamEndCapture")) return (void *)cuStreamEndCapture;
    if (!strcmp(s, "cuDevicePrimaryCtxRetain")) return (void *)cuDevicePrimaryCtxRetain;
    if (!strcmp(s, "cuLaunchKernel")) return (flags & 2) ? (void *)cuLaunchKernel_ptsz : (void *)cuLaunchKernel;
    if (!strcmp(s, "cuLaunchKernelEx")) return (void *)cuLaunchKernelEx;
    return NULL;
}

CUresult cuGetProcAddress(const char *s, void **pfn, int v, unsigned long long flags) {
    n_gpa++;
    *pfn = lookup(s, v, flags);
    return *pfn ? 0 : 500;
}
CUresult cuGetProcAddress_v2(const char *s, void **pfn, int v, unsigned long long flags, int *st) {
    n_gpa2++;
    *pfn = lookup(s, v, flags);
    if (st) *st = *pfn ? 0 : 1;
    return *pfn ? 0 : 500;
}

/* How often the driver really saw each call (not a CUDA symbol: the shim passes it through). */
int fake_count(const char *k) {
    if (!strcmp(k, "alloc")) return n_alloc;
    if (!strcmp(k, "free")) return n_free;
    if (!strcmp(k, "managed")) return n_managed;
    if (!strcmp(k, "advise")) return n_advise;
    if (!strcmp(k, "launch")) return n_launch;
    if (!strcmp(k, "launch_ptsz")) return n_launch_ptsz;
    if (!strcmp(k, "launch_ex")) return n_launch_ex;
    if (!strcmp(k, "sync")) return n_sync;
    if (!strcmp(k, "gpa")) return n_gpa;
    if (!strcmp(k, "gpa2")) return n_gpa2;
    if (!strcmp(k, "records")) return (int)n_records;
    if (!strcmp(k, "stream_queries")) return (int)n_stream_queries;
    if (!strcmp(k, "queries_in_capture")) return n_queries_in_capture;
    if (!strcmp(k, "waits")) return n_waits;
    if (!strcmp(k, "waits_held")) return n_waits_held;
    if (!strcmp(k, "wait_bad")) return n_wait_bad;
    if (!strcmp(k, "wait_offset")) return last_wait ? (int)((unsigned char *)last_wait - registered_base) : -1;
    if (!strcmp(k, "wait_word")) return last_wait ? (int)*last_wait : -1;
    /* The fake GPU's queued work now, µs: how long until the last kernel launched ends. */
    if (!strcmp(k, "queued_us")) {
        long long left = gpu_free_at_ns - now_ns();
        return gpu_free_at_ns < 0 || left < 0 ? 0 : (int)(left / 1000);
    }
    return -1;
}
