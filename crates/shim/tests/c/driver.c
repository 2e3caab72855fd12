/* A tiny CUDA "program" that reaches the driver the way the CUDA runtime does: dlopen with
 * RTLD_LOCAL, dlsym("cuGetProcAddress"), then cuGetProcAddress("cuGetProcAddress") and
 * everything else through that. Usage: driver FAKE_LIBCUDA MODE; prints key=value lines. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef CUresult (*gpa_t)(const char *, void **, int, unsigned long long);
typedef CUresult (*gpa2_t)(const char *, void **, int, unsigned long long, int *);
typedef CUresult (*alloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*free_t)(CUdeviceptr);
typedef CUresult (*info_t)(size_t *, size_t *);
typedef CUresult (*total_t)(size_t *, int);
typedef CUresult (*launch_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, void *, void **, void **);
typedef CUresult (*launch_ex_t)(const void *, void *, void **, void **);
typedef CUresult (*sync_t)(void *); /* cuCtxSynchronize_v2, as handed out for CUDA 13 */
typedef struct { unsigned g[3], b[3], sh; void *stream; void *attrs; unsigned n; } launch_config;

#define MIB (1ull << 20)
static gpa2_t gpa2;

static void *get(const char *name, unsigned long long flags) {
    void *p = NULL;
    int st = 0;
    if (gpa2(name, &p, 13000, flags, &st) != 0) {
        printf("missing=%s\n", name);
        return NULL;
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *mode = argv[2];
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen_error=%s\n", dlerror()); return 2; }
    int (*count)(const char *) = (int (*)(const char *))dlsym(h, "fake_count");
    gpa_t gpa = (gpa_t)dlsym(h, "cuGetProcAddress");
    if (!count || !gpa) { printf("dlsym_error=1\n"); return 2; }
    if (gpa("cuGetProcAddress", (void **)&gpa2, 13000, 0) != 0 || !gpa2) { printf("gpa_error=1\n"); return 2; }
    /* What CUDA 13 PyTorch does (seen on an H200): ask for cuGetProcAddress itself at 11030
     * and 12000; the 12000 answer has the 5-argument ABI and must be the same wrapper. */
    void *g11 = NULL, *g12 = NULL;
    int st = 0;
    gpa2("cuGetProcAddress", &g11, 11030, 0, &st);
    gpa2("cuGetProcAddress", &g12, 12000, 0, &st);
    printf("gpa_12000_is_v2_wrapper=%d\n", g12 == (void *)gpa2);
    printf("gpa_11030_is_v1=%d\n", g11 == (void *)gpa);
    /* The non-CUDA lookups must be untouched. */
    printf("strlen_ok=%d\n", dlsym(RTLD_DEFAULT, "strlen") == (void *)strlen);

    alloc_t alloc = (alloc_t)get("cuMemAlloc", 0);
    alloc_t alloc_dlsym = (alloc_t)dlsym(h, "cuMemAlloc_v2");
    free_t mfree = (free_t)get("cuMemFree", 0);
    info_t info = (info_t)get("cuMemGetInfo", 0);
    total_t total = (total_t)get("cuDeviceTotalMem", 0);
    launch_t launch = (launch_t)get("cuLaunchKernel", 0);
    launch_t launch_ptsz = (launch_t)get("cuLaunchKernel", 2);
    launch_ex_t launch_ex = (launch_ex_t)get("cuLaunchKernelEx", 0);
    sync_t sync = (sync_t)get("cuCtxSynchronize", 0);
    if (!alloc || !alloc_dlsym || !mfree || !info || !total || !launch || !launch_ptsz || !launch_ex || !sync) return 2;
    printf("same_alloc=%d\n", (void *)alloc == (void *)alloc_dlsym);
    printf("ptsz_distinct=%d\n", (void *)launch != (void *)launch_ptsz);

    if (!strcmp(mode, "limit")) {
        CUdeviceptr p1 = 0, p2 = 0, p3 = 0;
        int r1 = alloc(&p1, 512 * MIB);
        int r2 = alloc_dlsym(&p2, 768 * MIB);
        size_t f = 0, t = 0, tm = 0;
        info(&f, &t);
        total(&tm, 0);
        mfree(p1);
        int r3 = alloc(&p3, 768 * MIB);
        printf("r1=%d\nr2=%d\nr3=%d\nfree=%zu\ntotal=%zu\ndevtotal=%zu\ndriver_allocs=%d\ndriver_frees=%d\n",
               r1, r2, r3, f, t, tm, count("alloc"), count("free"));
    } else if (!strcmp(mode, "swap")) {
        CUdeviceptr p = 0;
        int r = alloc(&p, 2048 * MIB);
        printf("r=%d\nmanaged=%d\nadvise=%d\ndriver_allocs=%d\n", r, count("managed"), count("advise"), count("alloc"));
    } else if (!strcmp(mode, "launch")) {
        launch_config cfg;
        memset(&cfg, 0, sizeof cfg);
        for (int i = 0; i < 5; i++) launch(0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0);
        for (int i = 0; i < 3; i++) launch_ptsz(0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0);
        for (int i = 0; i < 2; i++) launch_ex(&cfg, 0, 0, 0);
        sync(0);
        printf("launch=%d\nlaunch_ptsz=%d\nlaunch_ex=%d\nsync=%d\ngpa2=%d\n", count("launch"),
               count("launch_ptsz"), count("launch_ex"), count("sync"), count("gpa2"));
    } else if (!strcmp(mode, "arb")) {
        /* arb N STAY_MS [GAP_MS]: N launches GAP_MS apart, report the longest launch call, the
         * fake GPU's queued work (µs) right after the last launch and the most right after any,
         * then stay alive STAY_MS (so a busy process keeps its slot). */
        int n = argc > 3 ? atoi(argv[3]) : 1, stay = argc > 4 ? atoi(argv[4]) : 0;
        int gap = argc > 5 ? atoi(argv[5]) : 0;
        int queued = 0, max_queued = 0;
        double longest = 0, t0 = now_ms();
        for (int i = 0; i < n; i++) {
            double t = now_ms();
            launch(0, 1, 1, 1, 1, 1, 1, 0, (void *)0x77, 0, 0);
            queued = count("queued_us");
            if (queued > max_queued) max_queued = queued;
            if (now_ms() - t > longest) longest = now_ms() - t;
            if (i == 0) { printf("launched\n"); fflush(stdout); }
            if (gap > 0 && i + 1 < n) usleep(gap * 1000);
        }
        printf("longest_ms=%d\ntotal_ms=%d\nrecords=%d\nqueued_us=%d\nmax_queued_us=%d\n", (int)longest,
               (int)(now_ms() - t0), count("records"), queued, max_queued);
        printf("waits=%d\nwaits_held=%d\nwait_bad=%d\nwait_offset=%d\n", count("waits"),
               count("waits_held"), count("wait_bad"), count("wait_offset"));
        fflush(stdout);
        if (stay > 0) usleep(stay * 1000);
        /* The GPU-side gate word as it is after the stay (-1: no wait was queued). */
        printf("wait_word_end=%d\n", count("wait_word"));
    } else if (!strcmp(mode, "devices")) {
        /* devices PLAN GAP_MS STAY_MS: one launch on each device of PLAN ("1,0,0,1") in
         * order, GAP_MS apart, each on that device's primary context made current as
         * cudaSetDevice does; prints how long each launch call took, then stays STAY_MS. */
        typedef CUresult (*retain_t)(void **, int);
        typedef CUresult (*set_t)(void *);
        retain_t retain = (retain_t)get("cuDevicePrimaryCtxRetain", 0);
        set_t set_current = (set_t)get("cuCtxSetCurrent", 0);
        if (!retain || !set_current || argc < 4) return 2;
        const char *plan = argv[3];
        int gap = argc > 4 ? atoi(argv[4]) : 0, stay = argc > 5 ? atoi(argv[5]) : 0;
        for (int i = 0; *plan; i++) {
            int dev = atoi(plan);
            void *ctx = NULL;
            if (retain(&ctx, dev) != 0 || set_current(ctx) != 0) { printf("no_device=%d\n", dev); return 2; }
            double t = now_ms();
            launch(0, 1, 1, 1, 1, 1, 1, 0, (void *)0x77, 0, 0);
            printf("launch%d_dev%d_ms=%d\n", i, dev, (int)(now_ms() - t));
            if (i == 0) printf("launched\n");
            fflush(stdout);
            plan += strcspn(plan, ",");
            if (*plan == ',') plan++;
            if (*plan && gap > 0) usleep(gap * 1000);
        }
        printf("done\n");
        fflush(stdout);
        if (stay > 0) usleep(stay * 1000);
    } else if (!strcmp(mode, "capture")) {
        /* capture HOLD_MS: a launch on stream 0x77, then a capture on that stream held open
         * HOLD_MS (as a graph server captures at start-up), then ended; prints how often the
         * driver saw the stream queried meanwhile. */
        typedef CUresult (*begin_t)(void *, int);
        typedef CUresult (*end_t)(void *, void **);
        begin_t begin = (begin_t)get("cuStreamBeginCapture", 0);
        end_t end = (end_t)get("cuStreamEndCapture", 0);
        if (!begin || !end || argc < 4) return 2;
        launch(0, 1, 1, 1, 1, 1, 1, 0, (void *)0x77, 0, 0);
        printf("launched\n");
        fflush(stdout);
        int rb = begin((void *)0x77, 0);
        usleep(atoi(argv[3]) * 1000);
        void *g = NULL;
        int re = end((void *)0x77, &g);
        printf("begin_rc=%d\nend_rc=%d\nqueries_in_capture=%d\nstream_queries=%d\n", rb, re,
               count("queries_in_capture"), count("stream_queries"));
        fflush(stdout);
        usleep(300 * 1000);
        printf("stream_queries_after=%d\n", count("stream_queries"));
    } else if (!strcmp(mode, "freeze")) {
        printf("before\n");
        fflush(stdout);
        launch(0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0);
        printf("after=%d\n", count("launch"));
    }
    fflush(stdout);
    return 0;
}
