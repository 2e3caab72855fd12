/* A CUDA "program" driven line by line on stdin, shared by the daemon's and the agent's
 * end-to-end tests: it reaches the (fake) driver the way the CUDA runtime does (dlopen,
 * cuGetProcAddress), makes one call so the shim sets up, prints `ready`, then answers
 * `alloc MIB` with `alloc=RC`, `launch` with `launched=N`, `sync` with `synced=RC`, `gate`
 * with `waits=N` (GPU-side waits the shim queued), `quit`. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef CUresult (*gpa_t)(const char *, void **, int, unsigned long long);
typedef CUresult (*gpa2_t)(const char *, void **, int, unsigned long long, int *);
typedef CUresult (*alloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*info_t)(size_t *, size_t *);
typedef CUresult (*sync_t)(void);
typedef CUresult (*launch_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, void *, void **, void **);
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen_error=%s\n", dlerror()); return 2; }
    gpa_t gpa = (gpa_t)dlsym(h, "cuGetProcAddress");
    gpa2_t gpa2 = NULL;
    int st = 0;
    if (!gpa || gpa("cuGetProcAddress", (void **)&gpa2, 13000, 0) != 0 || !gpa2) return 2;
    alloc_t alloc = NULL; info_t info = NULL; launch_t launch = NULL; sync_t sync = NULL;
    gpa2("cuMemAlloc", (void **)&alloc, 13000, 0, &st);
    gpa2("cuMemGetInfo", (void **)&info, 13000, 0, &st);
    gpa2("cuLaunchKernel", (void **)&launch, 13000, 0, &st);
    gpa2("cuCtxSynchronize", (void **)&sync, 13000, 0, &st);
    if (!alloc || !info || !launch || !sync) return 2;
    size_t f = 0, t = 0;
    info(&f, &t);
    printf("ready\n");
    fflush(stdout);
    char line[128];
    int launches = 0;
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "alloc ", 6)) {
            CUdeviceptr p = 0;
            int r = alloc(&p, strtoull(line + 6, NULL, 10) << 20);
            printf("alloc=%d\n", r);
        } else if (!strncmp(line, "launch", 6)) {
            launch(0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0);
            printf("launched=%d\n", ++launches);
        } else if (!strncmp(line, "sync", 4)) {
            printf("synced=%d\n", sync());
        } else if (!strncmp(line, "gate", 4)) {
            /* The fake driver's GPU-side waits queued so far (the shim's gate armed). */
            int (*count)(const char *) = (int (*)(const char *))dlsym(h, "fake_count");
            printf("waits=%d\n", count ? count("waits") : -1);
        } else if (!strncmp(line, "quit", 4)) {
            break;
        }
        fflush(stdout);
    }
    return 0;
}
