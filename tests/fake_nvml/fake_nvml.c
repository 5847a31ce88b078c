/* A stand-in libnvidia-ml.so.1 for machines without a GPU.
 *
 * It exports the NVML symbols gpu-proc-collector calls, with the real C signatures, struct layouts and calling
 * protocol (count-then-fill with NVML_ERROR_INSUFFICIENT_SIZE, NOT_FOUND when no utilisation sample is newer than
 * lastSeenTimeStamp, NOT_SUPPORTED for per-process utilisation on MIG), so the unmodified pynvml runs against it.
 * What it reports comes from the JSON scenario named by $FAKE_NVML_SCENARIO, read at nvmlInitWithFlags and, while
 * NVML is initialised, again whenever the file changes (live data under the handles already given out); the format
 * is described in README.md beside this file. $FAKE_NVML_FAULT_FILE makes every call fail while that file exists
 * (a GPU falling off the bus, NVML shut down under the caller).
 *
 * Build variants (Makefile) play older drivers:
 *   FAKE_VARIANT_R470  no *_RunningProcesses_v3, no nvmlDeviceGetProcessesUtilizationInfo, no
 *                      nvmlDeviceGetMemoryInfo_v2 (NVML 11.6, R510) and no GPM (NVML 11.8/12.0, R520/R525):
 *                      R470..R495 drivers
 *   FAKE_VARIANT_R535  *_RunningProcesses_v3 writes the 32-byte struct of early R535 drivers (docs/nvml-driver.md);
 *                      no nvmlDeviceGetProcessesUtilizationInfo, which the real 535 library does not export (R550)
 *
 * Every driver behaviour played here, and its source, is listed in docs/nvml-driver.md.
 */
#define _GNU_SOURCE /* PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/stat.h> /* struct statx */
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

/* The real libnvidia-ml.so.1 loads on any glibc from 2.17 on (the R550 driver README, "Minimum Software
 * Requirements"), so the hosts we test on include Debian 11 (glibc 2.31). Built on a newer glibc, this file would
 * ask for pthread_rwlock_* at GLIBC_2.34 (where libpthread moved into libc) and stat at GLIBC_2.33: the rwlock calls
 * are bound to their first versions, which every later glibc still exports, and the scenario file's identity is
 * read with the statx system call (Linux 4.11) through syscall(), which glibc has exported since its first
 * version. tests/test_fake_nvml.py holds the library to GLIBC_2.17. */
#if defined(__x86_64__)
#define GLIBC_FIRST "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define GLIBC_FIRST "GLIBC_2.17"
#endif
#ifdef GLIBC_FIRST
__asm__(".symver pthread_rwlock_rdlock,pthread_rwlock_rdlock@" GLIBC_FIRST);
__asm__(".symver pthread_rwlock_wrlock,pthread_rwlock_wrlock@" GLIBC_FIRST);
__asm__(".symver pthread_rwlock_unlock,pthread_rwlock_unlock@" GLIBC_FIRST);
#endif

typedef struct statx file_id_t;

/* 0 and the file's identity in *st, or -1 (errno set). */
static int file_id(const char *path, file_id_t *st) {
    return (int)syscall(SYS_statx, AT_FDCWD, path, 0, STATX_BASIC_STATS, st);
}

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

static const struct { const char *name; int code; } ERROR_NAMES[] = {
    {"SUCCESS", 0}, {"UNINITIALIZED", 1}, {"INVALID_ARGUMENT", 2}, {"NOT_SUPPORTED", 3},
    {"NO_PERMISSION", 4}, {"ALREADY_INITIALIZED", 5}, {"NOT_FOUND", 6}, {"INSUFFICIENT_SIZE", 7},
    {"INSUFFICIENT_POWER", 8}, {"DRIVER_NOT_LOADED", 9}, {"TIMEOUT", 10}, {"IRQ_ISSUE", 11},
    {"LIBRARY_NOT_FOUND", 12}, {"FUNCTION_NOT_FOUND", 13}, {"CORRUPTED_INFOROM", 14}, {"GPU_IS_LOST", 15},
    {"RESET_REQUIRED", 16}, {"OPERATING_SYSTEM", 17}, {"LIB_RM_VERSION_MISMATCH", 18}, {"IN_USE", 19},
    {"MEMORY", 20}, {"NO_DATA", 21}, {"VGPU_ECC_NOT_ENABLED", 22}, {"INSUFFICIENT_RESOURCES", 23},
    {"FREQ_NOT_SUPPORTED", 24}, {"ARGUMENT_VERSION_MISMATCH", 25}, {"DEPRECATED", 26}, {"NOT_READY", 27},
    {"GPU_NOT_FOUND", 28}, {"INVALID_STATE", 29}, {"UNKNOWN", 999},
};

#define KIND_COMPUTE 0
#define KIND_GRAPHICS 1
#define KIND_MPS 2
#define NA_U64 0xFFFFFFFFFFFFFFFFULL
#define NA_U32 0xFFFFFFFFU
#define MAX_MIG_SLOTS 8

typedef struct { unsigned int pid; unsigned long long used; } proc_t;

typedef struct {
    unsigned int pid;
    unsigned long long ts;
    unsigned int sm, mem, enc, dec, jpg, ofa;
    unsigned long long every_us; /* a process busy all along: a new sample every this many µs (0: one sample) */
    unsigned long long lag_us;   /* ... each one appearing this many µs after its timestamp */
} sample_t;

typedef struct { const char *fn; int code; } error_t_;

/* GPM values of one device, MIG device or GPU instance: metric id -> value, or -> per-metric error. */
typedef struct { unsigned int id; double value; int err; } gpm_metric_t;
typedef struct {
    gpm_metric_t *m;
    unsigned int n;
} gpm_values_t;

#define UTIL_LATEST 0   /* one entry per PID: its newest sample newer than lastSeenTimeStamp (nvml.h) */
#define UTIL_BUFFERED 1 /* every stored sample newer than lastSeenTimeStamp, several per PID */

typedef struct nvmlDevice_st {
    int is_mig;
    struct nvmlDevice_st *parent;
    unsigned int index, minor, gi, ci;
    char uuid[96], name[96];
    unsigned long long mem_total, mem_used, mem_reserved; /* mem_used: allocated (v2's used), without reserved */
    unsigned int util_gpu, util_mem, temperature_c, power_mw;
    unsigned int persistence_mode;  /* nvmlEnableState_t: NVML_FEATURE_DISABLED 0, NVML_FEATURE_ENABLED 1 */
    proc_t *procs[3];
    unsigned int nprocs[3];
    proc_t *late_procs; /* appended to the compute list after a count call: a process starting mid-query */
    unsigned int nlate;
    int counted;
    sample_t *samples;
    unsigned int nsamples;
    int util_shape;                 /* UTIL_LATEST or UTIL_BUFFERED */
    int util_size_fixed;            /* the size query answers util_size_answer whatever the load (go-nvml #11) */
    unsigned int util_size_answer;
    int util_fill_unchanged;        /* the fill leaves the count as the caller passed it (nvtop #110) */
    sample_t *garbage;              /* returned whatever lastSeenTimeStamp says (nvtop #110) */
    unsigned int ngarbage;
    int gpm_supported;              /* physical GPUs: Hopper or newer (nvmlGpmQueryDeviceSupport) */
    int gpm_too_close_nan;          /* samples < 100 ms apart: SUCCESS with NaN values instead of an error */
    double gpm_refresh_s;           /* samples closer than this are too close (nvml.h: 100 ms) */
    gpm_values_t gpm;               /* this GPU's, or this MIG device's (compute instance's), values */
    gpm_values_t gi_gpm;            /* MIG devices: their GPU instance's values (nvmlGpmMigSampleGet) */
    int has_energy;
    unsigned long long energy_mj;   /* at energy_epoch_s */
    double energy_mj_per_s, energy_epoch_s;
    int ci_lists_gi;                /* MIG parents: a compute instance's handle lists its GPU instance's processes */
    error_t_ *errors;
    unsigned int nerrors;
    error_t_ *delays; /* function -> milliseconds to sleep before answering: a hung driver call */
    unsigned int ndelays;
    int has_mig; /* MIG capable: GetMigMode answers */
    unsigned int mig_current, mig_pending, mig_max;
    struct nvmlDevice_st *slots[MAX_MIG_SLOTS];
    unsigned int json_pos; /* MIG devices: their position in the scenario's mig.instances */
} device_t;

typedef device_t *nvmlDevice_t;

typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId; } nvmlProcessInfo_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId;
                 unsigned long long usedGpuCcProtectedMemory; } nvmlProcessInfo_r535_t;
typedef struct { unsigned int pid; unsigned long long timeStamp; unsigned int smUtil, memUtil, encUtil, decUtil; } nvmlProcessUtilizationSample_t;
typedef struct { unsigned long long timeStamp; unsigned int pid, smUtil, memUtil, encUtil, decUtil, jpgUtil, ofaUtil; } nvmlProcessUtilizationInfo_v1_t;
typedef struct { unsigned int version, processSamplesCount; unsigned long long lastSeenTimeStamp; nvmlProcessUtilizationInfo_v1_t *procUtilArray; } nvmlProcessesUtilizationInfo_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t layout");
_Static_assert(sizeof(nvmlProcessInfo_r535_t) == 32, "R535 process struct layout");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "nvmlProcessUtilizationSample_t layout");
_Static_assert(sizeof(nvmlProcessUtilizationInfo_v1_t) == 40, "nvmlProcessUtilizationInfo_v1_t layout");
_Static_assert(sizeof(nvmlProcessesUtilizationInfo_t) == 24, "nvmlProcessesUtilizationInfo_v1_t layout");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t layout");

#define PROCESSES_UTILIZATION_INFO_V1 0x01000018U
#define MEMORY_V2 0x02000028U

/* GPM (nvml.h, "NVML GPM"). The metrics array has NVML_GPM_METRIC_MAX entries: 333 in nvml.h 13.3.29, 477 in
 * nvidia-ml-py 13.615.71's c_nvmlGpmMetricsGet_t, which is what the pinned pynvml passes in. */
#define GPM_METRIC_MAX 477
#define GPM_METRICS_GET_VERSION 1U
#define GPM_SUPPORT_VERSION 1U
#define GPM_MIN_INTERVAL_S 0.1

typedef struct gpm_sample_st {
    struct gpm_sample_st *next; /* the allocated samples, to tell a sample from any other pointer */
    int filled;
    const struct nvmlDevice_st *dev; /* the handle sampled: a GPU or a MIG device */
    unsigned int gi;                  /* NA_U32, or the GPU instance of an nvmlGpmMigSampleGet sample */
    double t;                         /* CLOCK_MONOTONIC seconds */
    gpm_values_t values;              /* a copy of the values when sampled: the scenario may change after */
} gpm_sample_t;
typedef struct { gpm_sample_t *handle; } nvmlGpmSample_t;
typedef struct { char *shortName, *longName, *unit; } nvmlGpmMetricMetricInfo_t;
typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    nvmlGpmMetricMetricInfo_t metricInfo;
} nvmlGpmMetric_t;
typedef struct {
    unsigned int version, numMetrics;
    nvmlGpmSample_t sample1, sample2;
    nvmlGpmMetric_t metrics[GPM_METRIC_MAX];
} nvmlGpmMetricsGet_t;
typedef struct { unsigned int version, isSupportedDevice; } nvmlGpmSupport_t;

_Static_assert(sizeof(nvmlGpmSample_t) == sizeof(void *), "nvmlGpmSample_t is a handle");
_Static_assert(sizeof(nvmlGpmMetric_t) == 40, "nvmlGpmMetric_t layout");
_Static_assert(sizeof(nvmlGpmMetricsGet_t) == 24 + 40 * GPM_METRIC_MAX, "nvmlGpmMetricsGet_t layout");
_Static_assert(sizeof(nvmlGpmSupport_t) == 8, "nvmlGpmSupport_t layout");

static struct {
    int loaded;
    char driver_version[80];
    error_t_ *errors;
    unsigned int nerrors;
    error_t_ *delays;
    unsigned int ndelays;
    device_t *devices;   /* physical GPUs, index order */
    unsigned int ndevices;
    device_t *instances; /* MIG devices, pointed to by their parents' slots */
    unsigned int ninstances;
    file_id_t file;      /* the scenario file as it was when last read: a change is reloaded live */
} S;

/* Every NVML call reads S under the read lock; nvmlInit, nvmlShutdown and the live reload change it under the
 * write lock. pynvml's ctypes calls release the GIL, so a threaded caller can be in here from several threads. */
/* Writer-preferring: a reload waiting for the lock is not overtaken by new calls. */
static pthread_rwlock_t lock = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
static unsigned int init_count; /* nvml.h: "A reference count of the number of initializations is maintained" */

static int error_code(const char *text) {
    if (!text) return NVML_ERROR_UNKNOWN;
    if (!strncmp(text, "NVML_ERROR_", 11)) text += 11;
    else if (!strncmp(text, "NVML_", 5)) text += 5;
    for (size_t i = 0; i < sizeof(ERROR_NAMES) / sizeof(ERROR_NAMES[0]); i++)
        if (!strcmp(ERROR_NAMES[i].name, text)) return ERROR_NAMES[i].code;
    return NVML_ERROR_UNKNOWN;
}

static void load_delays(const jval *obj, error_t_ **out, unsigned int *n) {
    *out = NULL;
    *n = 0;
    if (!obj || obj->type != J_OBJ || obj->len == 0) return;
    *out = calloc(obj->len, sizeof(error_t_));
    for (size_t i = 0; i < obj->len; i++) {
        (*out)[i].fn = strdup(obj->keys[i]);
        (*out)[i].code = (int)(json_num(obj->items[i], 0) * 1000);
    }
    *n = (unsigned int)obj->len;
}

static void load_errors(const jval *obj, error_t_ **out, unsigned int *n) {
    *out = NULL;
    *n = 0;
    if (!obj || obj->type != J_OBJ || obj->len == 0) return;
    *out = calloc(obj->len, sizeof(error_t_));
    for (size_t i = 0; i < obj->len; i++) {
        const jval *v = obj->items[i];
        (*out)[i].fn = strdup(obj->keys[i]);
        (*out)[i].code = (v->type == J_NUM) ? (int)v->num : error_code(json_str(v, NULL));
    }
    *n = (unsigned int)obj->len;
}

static int find_error(const error_t_ *errs, unsigned int n, const char *fn) {
    for (unsigned int i = 0; i < n; i++)
        if (!strcmp(errs[i].fn, fn) || !strcmp(errs[i].fn, "*")) return errs[i].code;
    return NVML_SUCCESS;
}

/* The scenario's delay for fn (on dev): milliseconds to sleep before answering, a hung driver call. */
static int delay_ms(const char *fn, const device_t *dev) {
    int ms = find_error(S.delays, S.ndelays, fn);
    if (dev && !ms) ms = find_error(dev->delays, dev->ndelays, fn);
    return ms;
}

static void sleep_ms(int ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* The scenario's error for fn on dev: the device's own, a MIG device's parent's "*" (a lost GPU loses its
 * instances), then the top level's. */
static int injected_error(const char *fn, const device_t *dev) {
    int r;
    if (dev) {
        if ((r = find_error(dev->errors, dev->nerrors, fn))) return r;
        if (dev->parent) {
            for (unsigned int i = 0; i < dev->parent->nerrors; i++)
                if (!strcmp(dev->parent->errors[i].fn, "*")) return dev->parent->errors[i].code;
        }
    }
    return find_error(S.errors, S.nerrors, fn);
}

static int device_exists(const device_t *d);
static int fault(int index);
static void refresh(void);

#define FAULT_SYSTEM (-1) /* a call on no GPU: only a fault without an index applies */
#define FAULT_ANY (-2)    /* a call that may touch every GPU: any fault applies */

static int enter(const char *fn, const device_t *dev, int need_dev, int index);

static int read_lock(void) {
    refresh();
    pthread_rwlock_rdlock(&lock);
    return 1;
}

static void read_unlock(int *held) {
    if (*held) pthread_rwlock_unlock(&lock);
}

/* Holds the read lock until the calling function returns (every exported call but init and shutdown). */
#define LOCKED() int locked_ __attribute__((cleanup(read_unlock), unused)) = read_lock()

#define ENTER(fn, dev)                                              \
    LOCKED();                                                       \
    do {                                                            \
        int entered_ = enter(fn, dev, 0, FAULT_SYSTEM);             \
        if (entered_) return entered_;                              \
    } while (0)

/* A handle from before a re-initialisation that changed the devices is an invalid argument. */
#define ENTER_DEV(fn, dev)                                          \
    LOCKED();                                                       \
    do {                                                            \
        int entered_ = enter(fn, dev, 1, 0);                        \
        if (entered_) return entered_;                              \
    } while (0)

/* Called with the read lock held. Sleeps the scenario's delay for fn with the lock released (a hung call holds no
 * lock, so it never holds up a reload or another thread), then answers what the call returns before doing its
 * work: UNINITIALIZED, INVALID_ARGUMENT for a handle that is not one, a fault, an injected error; or 0. */
static int enter(const char *fn, const device_t *dev, int need_dev, int index) {
    for (int slept = 0;; slept = 1) {
        if (!S.loaded) return NVML_ERROR_UNINITIALIZED;
        if ((need_dev || dev) && !device_exists(dev)) return NVML_ERROR_INVALID_ARGUMENT;
        int ms = slept ? 0 : delay_ms(fn, dev);
        if (!ms) break;
        pthread_rwlock_unlock(&lock);
        sleep_ms(ms);
        pthread_rwlock_rdlock(&lock);
    }
    int r = fault(dev ? (int)dev->index : index);
    return r ? r : injected_error(fn, dev);
}

static unsigned long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL;
}

static void copy_str(char *dst, size_t cap, const char *src) {
    snprintf(dst, cap, "%s", src ? src : "");
}

static void load_procs(const jval *arr, proc_t **out, unsigned int *n) {
    *out = NULL;
    *n = 0;
    if (!arr || arr->type != J_ARR || arr->len == 0) return;
    *out = calloc(arr->len, sizeof(proc_t));
    for (size_t i = 0; i < arr->len; i++) {
        const jval *used = json_get(arr->items[i], "used_memory");
        (*out)[i].pid = (unsigned int)json_u64(json_get(arr->items[i], "pid"), 0);
        (*out)[i].used = (used && used->type == J_NULL) ? NA_U64 : json_u64(used, 0);
    }
    *n = (unsigned int)arr->len;
}

static void load_process_lists(device_t *d, const jval *processes) {
    load_procs(json_get(processes, "compute"), &d->procs[KIND_COMPUTE], &d->nprocs[KIND_COMPUTE]);
    load_procs(json_get(processes, "graphics"), &d->procs[KIND_GRAPHICS], &d->nprocs[KIND_GRAPHICS]);
    load_procs(json_get(processes, "mps"), &d->procs[KIND_MPS], &d->nprocs[KIND_MPS]);
}

/* Samples: timestamp_us (absolute), age_s (seconds before now), future_s (seconds after now), else default_ts. */
static void load_samples(const jval *arr, unsigned long long now, unsigned long long default_ts, sample_t **out,
                         unsigned int *n) {
    *out = NULL;
    *n = 0;
    if (!arr || arr->type != J_ARR || arr->len == 0) return;
    *out = calloc(arr->len, sizeof(sample_t));
    for (size_t i = 0; i < arr->len; i++) {
        const jval *s = arr->items[i];
        sample_t *o = &(*out)[i];
        const jval *age = json_get(s, "age_s"), *future = json_get(s, "future_s");
        o->pid = (unsigned int)json_u64(json_get(s, "pid"), 0);
        if (age) o->ts = now - (unsigned long long)(json_num(age, 0) * 1e6);
        else if (future) o->ts = now + (unsigned long long)(json_num(future, 0) * 1e6);
        else o->ts = json_u64(json_get(s, "timestamp_us"), default_ts);
        o->sm = (unsigned int)json_u64(json_get(s, "sm"), 0);
        o->mem = (unsigned int)json_u64(json_get(s, "mem"), 0);
        o->enc = (unsigned int)json_u64(json_get(s, "enc"), 0);
        o->dec = (unsigned int)json_u64(json_get(s, "dec"), 0);
        o->jpg = (unsigned int)json_u64(json_get(s, "jpg"), 0);
        o->ofa = (unsigned int)json_u64(json_get(s, "ofa"), 0);
        o->every_us = (unsigned long long)(json_num(json_get(s, "every_s"), 0) * 1e6);
        o->lag_us = (unsigned long long)(json_num(json_get(s, "lag_s"), 0) * 1e6);
    }
    *n = (unsigned int)arr->len;
}

static int json_bool(const jval *v, int fallback) {
    return (v && v->type == J_BOOL) ? v->boolean : fallback;
}

static void load_utilization_shape(device_t *d, const jval *dj) {
    const char *shape = json_str(json_get(dj, "utilization_shape"), "latest");
    const jval *size = json_get(dj, "utilization_size_answer");
    d->util_shape = !strcmp(shape, "buffered") ? UTIL_BUFFERED : UTIL_LATEST;
    d->util_size_fixed = size && size->type == J_NUM;
    d->util_size_answer = (unsigned int)json_u64(size, 0);
    d->util_fill_unchanged = !strcmp(json_str(json_get(dj, "utilization_fill_count"), "written"), "unchanged");
}

static void gpm_put(gpm_values_t *g, unsigned int id, double value, int err) {
    for (unsigned int i = 0; i < g->n; i++)
        if (g->m[i].id == id) { g->m[i].value = value; g->m[i].err = err; return; }
    gpm_metric_t *m = realloc(g->m, (g->n + 1) * sizeof(*m));
    if (!m) return;
    g->m = m;
    g->m[g->n++] = (gpm_metric_t){id, value, err};
}

/* A "gpm" object's values: the four named metrics, "metrics" {"<id>": value} and "metric_errors" {"<id>": error}. */
static void load_gpm_values(gpm_values_t *g, const jval *gpm) {
    static const struct { const char *key; unsigned int id; } NAMED[] = {
        {"sm_util", 2}, {"sm_occupancy", 3}, {"any_tensor_util", 5}, {"dram_bw_util", 10}};
    memset(g, 0, sizeof(*g));
    if (!gpm || gpm->type != J_OBJ) return;
    for (size_t i = 0; i < sizeof(NAMED) / sizeof(NAMED[0]); i++) {
        const jval *v = json_get(gpm, NAMED[i].key);
        if (v) gpm_put(g, NAMED[i].id, json_num(v, 0), NVML_SUCCESS);
    }
    const jval *metrics = json_get(gpm, "metrics"), *errors = json_get(gpm, "metric_errors");
    for (size_t i = 0; metrics && metrics->type == J_OBJ && i < metrics->len; i++)
        gpm_put(g, (unsigned int)strtoul(metrics->keys[i], NULL, 10), json_num(metrics->items[i], 0), NVML_SUCCESS);
    for (size_t i = 0; errors && errors->type == J_OBJ && i < errors->len; i++) {
        const jval *v = errors->items[i];
        int code = v->type == J_NUM ? (int)v->num : error_code(json_str(v, NULL));
        gpm_put(g, (unsigned int)strtoul(errors->keys[i], NULL, 10), 0, code);
    }
}

static void load_memory(device_t *d, const jval *mem) {
    d->mem_total = json_u64(json_get(mem, "total"), 0);
    d->mem_used = json_u64(json_get(mem, "used"), 0);
    d->mem_reserved = json_u64(json_get(mem, "reserved"), 0);
}

/* What every compute instance of a GPU instance shares: the "key" object ("memory", "gpm") of the GPU instance,
 * given in mig.gpu_instances, else on the first instance of that GPU instance that has one. */
static const jval *gpu_instance_part(const jval *mig, unsigned int gi, const char *key) {
    const jval *gis = json_get(mig, "gpu_instances"), *insts = json_get(mig, "instances");
    for (size_t i = 0; gis && gis->type == J_ARR && i < gis->len; i++)
        if (json_u64(json_get(gis->items[i], "gpu_instance_id"), NA_U32) == gi && json_get(gis->items[i], key))
            return json_get(gis->items[i], key);
    for (size_t k = 0; insts && insts->type == J_ARR && k < insts->len; k++) {
        const jval *ij = insts->items[k];
        if (json_u64(json_get(ij, "gpu_instance_id"), k + 1) == gi && json_get(ij, key)) return json_get(ij, key);
    }
    return NULL;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    return buf;
}

static void free_named(error_t_ **list, unsigned int *n) {
    for (unsigned int i = 0; *list && i < *n; i++) free((char *)(*list)[i].fn);
    free(*list);
    *list = NULL;
    *n = 0;
}

/* Frees what a (re)load replaces: everything of a device but its identity and MIG layout. */
static void free_dynamic(device_t *d) {
    for (int k = 0; k < 3; k++) {
        free(d->procs[k]);
        d->procs[k] = NULL;
        d->nprocs[k] = 0;
    }
    free(d->late_procs);
    free(d->samples);
    free(d->garbage);
    free(d->gpm.m);
    free(d->gi_gpm.m);
    d->late_procs = NULL;
    d->samples = d->garbage = NULL;
    d->nlate = d->nsamples = d->ngarbage = 0;
    memset(&d->gpm, 0, sizeof(d->gpm));
    memset(&d->gi_gpm, 0, sizeof(d->gi_gpm));
    free_named(&d->errors, &d->nerrors);
    free_named(&d->delays, &d->ndelays);
}

/* A device's identity and MIG layout: what the handles a caller holds stand for, fixed while NVML is initialised.
 * MIG devices go to insts[*ninst...]. */
static void load_layout(device_t *d, const jval *dj, size_t i, device_t *insts, unsigned int *ninst) {
    d->index = (unsigned int)i;
    d->minor = (unsigned int)json_u64(json_get(dj, "minor"), i);
    copy_str(d->uuid, sizeof(d->uuid), json_str(json_get(dj, "uuid"), ""));
    if (!d->uuid[0]) snprintf(d->uuid, sizeof(d->uuid), "GPU-00000000-0000-0000-0000-%012zx", i);
    copy_str(d->name, sizeof(d->name), json_str(json_get(dj, "name"), "NVIDIA H100 80GB HBM3"));
    const jval *gpm = json_get(dj, "gpm");
    d->gpm_supported = gpm && json_bool(json_get(gpm, "supported"), 1);
    const jval *mig = json_get(dj, "mig");
    if (!mig) return;
    d->has_mig = 1;
    d->mig_current = (unsigned int)json_u64(json_get(mig, "mode"), 1);
    d->mig_max = (unsigned int)json_u64(json_get(mig, "max_count"), 7);
    if (d->mig_max > MAX_MIG_SLOTS) d->mig_max = MAX_MIG_SLOTS;
    const jval *list = json_get(mig, "instances");
    for (size_t k = 0; list && list->type == J_ARR && k < list->len; k++) {
        const jval *ij = list->items[k];
        unsigned int slot = (unsigned int)json_u64(json_get(ij, "slot"), k);
        if (slot >= MAX_MIG_SLOTS || d->slots[slot]) continue;
        device_t *m = &insts[(*ninst)++];
        m->is_mig = 1;
        m->parent = d;
        m->index = d->index;
        m->minor = d->minor;
        m->json_pos = (unsigned int)k;
        m->gi = (unsigned int)json_u64(json_get(ij, "gpu_instance_id"), k + 1);
        m->ci = (unsigned int)json_u64(json_get(ij, "compute_instance_id"), 0);
        copy_str(m->uuid, sizeof(m->uuid), json_str(json_get(ij, "uuid"), ""));
        if (!m->uuid[0]) snprintf(m->uuid, sizeof(m->uuid), "MIG-00000000-0000-0000-%04zx-%012zx", i, k);
        snprintf(m->name, sizeof(m->name), "%s MIG %s", d->name, json_str(json_get(ij, "profile"), "1g.10gb"));
        d->slots[slot] = m;
    }
}

static int same_identity(const device_t *a, const device_t *b) {
    return a->index == b->index && a->minor == b->minor && a->gi == b->gi && a->ci == b->ci &&
           !strcmp(a->uuid, b->uuid) && !strcmp(a->name, b->name);
}

static int same_layout(const device_t *a, const device_t *b, unsigned int n) {
    for (unsigned int i = 0; i < n; i++) {
        if (!same_identity(&a[i], &b[i]) || a[i].gpm_supported != b[i].gpm_supported || a[i].has_mig != b[i].has_mig ||
            a[i].mig_current != b[i].mig_current || a[i].mig_max != b[i].mig_max)
            return 0;
        for (unsigned int s = 0; s < MAX_MIG_SLOTS; s++) {
            const device_t *x = a[i].slots[s], *y = b[i].slots[s];
            if (!x != !y || (x && !same_identity(x, y))) return 0;
        }
    }
    return 1;
}

static unsigned long long energy_at(const device_t *d, double t) {
    double elapsed = t - d->energy_epoch_s;
    return d->energy_mj + (elapsed > 0 ? (unsigned long long)(elapsed * d->energy_mj_per_s) : 0);
}

static double realtime_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A live reload without energy_epoch_s continues the counter from where it is, at the new rate: the driver's
 * counter only restarts with the driver, which cannot reload under a process that has NVML open. */
static void load_energy(device_t *d, const jval *dj, double mtime, int live) {
    const jval *energy = json_get(dj, "energy_mj"), *epoch = json_get(dj, "energy_epoch_s");
    int has = energy && energy->type == J_NUM;
    double rate = json_num(json_get(dj, "energy_mj_per_s"), 0);
    if (live && has && d->has_energy && !epoch) {
        double now = realtime_s();
        d->energy_mj = energy_at(d, now);
        d->energy_epoch_s = now;
        d->energy_mj_per_s = rate;
        return;
    }
    d->has_energy = has;
    d->energy_mj = json_u64(energy, 0);
    d->energy_mj_per_s = rate;
    d->energy_epoch_s = json_num(epoch, mtime);
}

/* What a device reports, re-read at every (live) load. */
static void load_dynamic(device_t *d, const jval *dj, unsigned long long now, double mtime, int live) {
    free_dynamic(d);
    load_memory(d, json_get(dj, "memory"));
    d->util_gpu = (unsigned int)json_u64(json_get(json_get(dj, "utilization"), "gpu"), 0);
    d->util_mem = (unsigned int)json_u64(json_get(json_get(dj, "utilization"), "memory"), 0);
    d->temperature_c = (unsigned int)json_u64(json_get(dj, "temperature_c"), 40);
    d->power_mw = (unsigned int)json_u64(json_get(dj, "power_mw"), 100000);
    /* Default enabled: what a host running nvidia-persistenced shows. */
    d->persistence_mode = json_u64(json_get(dj, "persistence_mode"), 1) ? 1U : 0U;
    load_process_lists(d, json_get(dj, "processes"));
    load_procs(json_get(dj, "processes_started_after_count"), &d->late_procs, &d->nlate);
    d->counted = 0;
    load_samples(json_get(dj, "process_samples"), now, now, &d->samples, &d->nsamples);
    load_samples(json_get(dj, "utilization_garbage"), now, 0, &d->garbage, &d->ngarbage);
    load_utilization_shape(d, dj);
    load_errors(json_get(dj, "errors"), &d->errors, &d->nerrors);
    load_delays(json_get(dj, "delays"), &d->delays, &d->ndelays);
    const jval *gpm = json_get(dj, "gpm");
    d->gpm_too_close_nan = !strcmp(json_str(json_get(gpm, "too_close"), "invalid_argument"), "nan");
    d->gpm_refresh_s = json_num(json_get(gpm, "refresh_s"), GPM_MIN_INTERVAL_S);
    load_gpm_values(&d->gpm, gpm);
    load_energy(d, dj, mtime, live);
    const jval *mig = json_get(dj, "mig");
    d->ci_lists_gi = json_bool(json_get(mig, "ci_lists_gi_processes"), 0);
    d->mig_pending = (unsigned int)json_u64(json_get(mig, "pending"), d->mig_current);
    const jval *list = json_get(mig, "instances");
    for (unsigned int s = 0; s < MAX_MIG_SLOTS; s++) {
        device_t *m = d->slots[s];
        if (!m) continue;
        const jval *ij = list->items[m->json_pos];
        free_dynamic(m);
        load_memory(m, gpu_instance_part(mig, m->gi, "memory"));
        load_gpm_values(&m->gpm, json_get(ij, "gpm"));
        load_gpm_values(&m->gi_gpm, gpu_instance_part(mig, m->gi, "gpm"));
        load_process_lists(m, json_get(ij, "processes"));
        load_errors(json_get(ij, "errors"), &m->errors, &m->nerrors);
    }
}

static int same_file(const file_id_t *a, const file_id_t *b) {
    return a->stx_dev_major == b->stx_dev_major && a->stx_dev_minor == b->stx_dev_minor &&
           a->stx_ino == b->stx_ino && a->stx_size == b->stx_size &&
           a->stx_mtime.tv_sec == b->stx_mtime.tv_sec && a->stx_mtime.tv_nsec == b->stx_mtime.tv_nsec &&
           a->stx_ctime.tv_sec == b->stx_ctime.tv_sec && a->stx_ctime.tv_nsec == b->stx_ctime.tv_nsec;
}

/* Reads the scenario, under the write lock. At nvmlInit (live = 0) everything is read; a handle from before stays
 * valid when the devices are the same. While initialised (live = 1), a changed file replaces what the devices
 * report, in place; a file that changes the devices themselves is refused. Returns 0, or -1 (file unusable). */
static int load_scenario(int live) {
    const char *path = getenv("FAKE_NVML_SCENARIO");
    if (!path || !*path) {
        fprintf(stderr, "fake-nvml: FAKE_NVML_SCENARIO is not set\n");
        return -1;
    }
    file_id_t st;
    if (file_id(path, &st) != 0) memset(&st, 0, sizeof(st));
    char *text = read_file(path);
    if (!text) {
        fprintf(stderr, "fake-nvml: cannot read scenario %s: %s%s\n", path, strerror(errno),
                live ? "; keeping the last one" : "");
        if (live) S.file = st;
        return -1;
    }
    double mtime = (double)st.stx_mtime.tv_sec + st.stx_mtime.tv_nsec / 1e9;
    char err[160];
    jval *root = json_parse(text, err, sizeof(err));
    free(text);
    if (!root || root->type != J_OBJ) {
        fprintf(stderr, "fake-nvml: scenario %s is not a JSON object: %s%s\n", path, root ? "wrong type" : err,
                live ? "; keeping the last one" : "");
        json_free(root);
        if (live) S.file = st;
        return -1;
    }
    S.file = st;
    unsigned long long now = now_us();
    const jval *devs = json_get(root, "devices");
    size_t ndev = (devs && devs->type == J_ARR) ? devs->len : 0, ninst = 0;
    for (size_t i = 0; i < ndev; i++) {
        const jval *inst = json_get(json_get(devs->items[i], "mig"), "instances");
        if (inst && inst->type == J_ARR) ninst += inst->len;
    }
    device_t *devices = calloc(ndev ? ndev : 1, sizeof(device_t));
    device_t *instances = calloc(ninst ? ninst : 1, sizeof(device_t));
    unsigned int ninstances = 0;
    for (size_t i = 0; i < ndev; i++) load_layout(&devices[i], devs->items[i], i, instances, &ninstances);
    int same = S.devices && ndev == S.ndevices && ninstances == S.ninstances &&
               same_layout(devices, S.devices, (unsigned int)ndev);
    if (!same && live) {
        fprintf(stderr, "fake-nvml: scenario changed its devices; restart NVML to see them\n");
        free(devices);
        free(instances);
        json_free(root);
        return 0;
    }
    if (!same) {
        for (unsigned int i = 0; i < S.ndevices; i++) free_dynamic(&S.devices[i]);
        for (unsigned int i = 0; i < S.ninstances; i++) free_dynamic(&S.instances[i]);
        free(S.devices);
        free(S.instances);
        S.devices = devices;
        S.instances = instances;
        S.ndevices = (unsigned int)ndev;
        S.ninstances = ninstances;
    } else {
        /* The same devices: the existing ones (and the handles to them) stay; only their MIG instances' positions
         * in the file can differ. */
        for (unsigned int i = 0; i < S.ndevices; i++)
            for (unsigned int s = 0; s < MAX_MIG_SLOTS; s++)
                if (S.devices[i].slots[s]) S.devices[i].slots[s]->json_pos = devices[i].slots[s]->json_pos;
        free(devices);
        free(instances);
    }
    if (!live)
        copy_str(S.driver_version, sizeof(S.driver_version), json_str(json_get(root, "driver_version"), "580.95.05"));
    free_named(&S.errors, &S.nerrors);
    free_named(&S.delays, &S.ndelays);
    load_errors(json_get(root, "errors"), &S.errors, &S.nerrors);
    load_delays(json_get(root, "delays"), &S.delays, &S.ndelays);
    for (unsigned int i = 0; i < S.ndevices; i++) load_dynamic(&S.devices[i], devs->items[i], now, mtime, live);
    json_free(root);
    return 0;
}

/* The live scenario: at each call's entry, one statx of the scenario file; when it differs from the file last
 * read (device, inode, size, mtime or ctime, to the nanosecond), the file is read again under the write lock,
 * which waits for the calls under way in other threads (none holds it long: a delayed call sleeps without it). */
static void refresh(void) {
    const char *path = getenv("FAKE_NVML_SCENARIO");
    file_id_t st;
    if (!path || !*path || file_id(path, &st) != 0) return; /* gone: keep what was read */
    pthread_rwlock_rdlock(&lock);
    int changed = S.loaded && !same_file(&st, &S.file);
    pthread_rwlock_unlock(&lock);
    if (!changed) return;
    pthread_rwlock_wrlock(&lock);
    if (S.loaded && file_id(path, &st) == 0 && !same_file(&st, &S.file)) load_scenario(1);
    pthread_rwlock_unlock(&lock);
}

/* $FAKE_NVML_FAULT_FILE: while the file exists, every call fails with the error it names. Each line is an error
 * name (NVML_ERROR_GPU_IS_LOST, GPU_IS_LOST) or number, optionally followed by a device index: then only calls
 * on that GPU, its MIG devices and handles looked up for it fail. index is the call's GPU, FAULT_SYSTEM or
 * FAULT_ANY. Read at every call while it exists, so it can be rewritten or removed under a running caller. */
static int fault(int index) {
    const char *path = getenv("FAKE_NVML_FAULT_FILE");
    if (!path || !*path) return NVML_SUCCESS;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NVML_SUCCESS;
    char buf[1024];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    int code = NVML_SUCCESS, lines = 0;
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line && !code; line = strtok_r(NULL, "\n", &save)) {
        char name[64] = "", scope[32] = "";
        int fields = sscanf(line, " %63s %31s", name, scope);
        if (fields < 1 || name[0] == '#') continue;
        lines++;
        char *end;
        long number = strtol(name, &end, 10);
        int c = *end == '\0' ? (int)number : error_code(name);
        if (fields < 2 || !strcmp(scope, "*") || index == FAULT_ANY || (index >= 0 && atoi(scope) == index)) code = c;
    }
    return lines ? code : NVML_ERROR_UNKNOWN; /* a file that names no error: NVML_ERROR_UNKNOWN for every call */
}

static int mig_enabled(const device_t *d) {
    return d->has_mig && d->mig_current == 1;
}

/* A handle into the current device tables (pointer arithmetic only: a stale handle is never dereferenced). */
static int device_exists(const device_t *d) {
    if (!d) return 0;
    const char *p = (const char *)d, *dev = (const char *)S.devices, *inst = (const char *)S.instances;
    if (S.devices && p >= dev && p < dev + S.ndevices * sizeof(device_t)) return (p - dev) % sizeof(device_t) == 0;
    if (S.instances && p >= inst && p < inst + S.ninstances * sizeof(device_t))
        return (p - inst) % sizeof(device_t) == 0;
    return 0;
}

/* ---- init, system ---- */

/* A fault ($FAKE_NVML_FAULT_FILE) without a device index fails init too, so a caller that re-initialises keeps
 * failing until the file is gone; the first init after that reads the scenario afresh. */
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    pthread_rwlock_wrlock(&lock);
    int r = fault(FAULT_SYSTEM);
    if (!r && !init_count) {
        if (load_scenario(0)) r = NVML_ERROR_DRIVER_NOT_LOADED;
        else {
            sleep_ms(delay_ms("nvmlInitWithFlags", NULL));
            r = injected_error("nvmlInitWithFlags", NULL);
        }
        S.loaded = r == NVML_SUCCESS;
    }
    if (!r) init_count++;
    pthread_rwlock_unlock(&lock);
    return r;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

/* Shutdown only occurs when the reference count reaches zero (nvml.h). */
EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_rwlock_wrlock(&lock);
    int r = NVML_SUCCESS;
    if (!init_count) r = NVML_ERROR_UNINITIALIZED;
    else if (--init_count == 0) S.loaded = 0;
    pthread_rwlock_unlock(&lock);
    return r;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    static char buf[64];
    for (size_t i = 0; i < sizeof(ERROR_NAMES) / sizeof(ERROR_NAMES[0]); i++)
        if (ERROR_NAMES[i].code == result) {
            snprintf(buf, sizeof(buf), "%s (fake NVML)", ERROR_NAMES[i].name);
            return buf;
        }
    return "Unknown Error (fake NVML)";
}

static nvmlReturn_t put_string(char *out, unsigned int length, const char *value) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    ENTER("nvmlSystemGetDriverVersion", NULL);
    return put_string(version, length, S.driver_version);
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    ENTER("nvmlSystemGetNVMLVersion", NULL);
    char v[80];
    snprintf(v, sizeof(v), "13.%s", S.driver_version);
    return put_string(version, length, v);
}

EXPORT nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length) {
    ENTER("nvmlSystemGetProcessName", NULL);
    char path[64];
    snprintf(path, sizeof(path), "/proc/%u/comm", pid);
    char *comm = read_file(path);
    if (!comm) return NVML_ERROR_NOT_FOUND;
    comm[strcspn(comm, "\n")] = '\0';
    nvmlReturn_t r = put_string(name, length, comm);
    free(comm);
    return r;
}

/* ---- devices ---- */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    ENTER("nvmlDeviceGetCount_v2", NULL);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = S.ndevices;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    LOCKED();
    if (!S.loaded) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= S.ndevices) return NVML_ERROR_INVALID_ARGUMENT;
    int r = enter("nvmlDeviceGetHandleByIndex_v2", &S.devices[index], 1, 0);
    if (r) return r;
    if (index >= S.ndevices) return NVML_ERROR_INVALID_ARGUMENT; /* a re-init while it slept */
    *device = &S.devices[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    ENTER("nvmlDeviceGetHandleByUUID", NULL);
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    int lost = fault(FAULT_ANY); /* nvml.h: GPU_IS_LOST "if any GPU has fallen off the bus" (it searches them) */
    if (lost) return lost;
    for (unsigned int i = 0; i < S.ndevices; i++)
        if (!strcmp(S.devices[i].uuid, uuid)) { *device = &S.devices[i]; return NVML_SUCCESS; }
    for (unsigned int i = 0; i < S.ninstances; i++)
        if (!strcmp(S.instances[i].uuid, uuid)) { *device = &S.instances[i]; return NVML_SUCCESS; }
    return NVML_ERROR_NOT_FOUND;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int length) {
    ENTER_DEV("nvmlDeviceGetUUID", dev);
    return put_string(uuid, length, dev->uuid);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int length) {
    ENTER_DEV("nvmlDeviceGetName", dev);
    return put_string(name, length, dev->name);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t dev, unsigned int *index) {
    ENTER_DEV("nvmlDeviceGetIndex", dev);
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = dev->index;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t dev, unsigned int *minor) {
    ENTER_DEV("nvmlDeviceGetMinorNumber", dev);
    if (!minor) return NVML_ERROR_INVALID_ARGUMENT;
    *minor = dev->minor;
    return NVML_SUCCESS;
}

/* v1's used is "Sum of Reserved and Allocated" memory; v2 reports reserved apart and its used is the allocated
 * memory only (nvml.h, nvmlMemory_t and nvmlMemory_v2_t). A MIG device reports its GPU instance's memory. */
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *mem) {
    ENTER_DEV("nvmlDeviceGetMemoryInfo", dev);
    if (!mem) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long used = dev->mem_used + dev->mem_reserved;
    mem->total = dev->mem_total;
    mem->used = used;
    mem->free = dev->mem_total > used ? dev->mem_total - used : 0;
    return NVML_SUCCESS;
}

#ifndef FAKE_VARIANT_R470
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *mem) {
    ENTER_DEV("nvmlDeviceGetMemoryInfo_v2", dev);
    if (!mem) return NVML_ERROR_INVALID_ARGUMENT;
    if (mem->version != MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long used = dev->mem_used + dev->mem_reserved;
    mem->total = dev->mem_total;
    mem->reserved = dev->mem_reserved;
    mem->used = dev->mem_used;
    mem->free = dev->mem_total > used ? dev->mem_total - used : 0;
    return NVML_SUCCESS;
}
#endif

/* Millijoules since the driver was loaded; physical GPUs only (nvml.h: "For Volta or newer"). The counter holds
 * energy_mj at energy_epoch_s and grows by energy_mj_per_s, so separate processes see one monotonic counter. */
EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t dev, unsigned long long *energy) {
    ENTER_DEV("nvmlDeviceGetTotalEnergyConsumption", dev);
    if (!energy) return NVML_ERROR_INVALID_ARGUMENT;
    if (dev->is_mig || !dev->has_energy) return NVML_ERROR_NOT_SUPPORTED;
    *energy = energy_at(dev, realtime_s());
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *util) {
    ENTER_DEV("nvmlDeviceGetUtilizationRates", dev);
    if (!util) return NVML_ERROR_INVALID_ARGUMENT;
    if (dev->is_mig || mig_enabled(dev)) return NVML_ERROR_NOT_SUPPORTED;
    util->gpu = dev->util_gpu;
    util->memory = dev->util_mem;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t dev, int sensor, unsigned int *temp) {
    ENTER_DEV("nvmlDeviceGetTemperature", dev);
    if (!temp || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = dev->temperature_c;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t dev, unsigned int *power) {
    ENTER_DEV("nvmlDeviceGetPowerUsage", dev);
    if (!power) return NVML_ERROR_INVALID_ARGUMENT;
    *power = dev->power_mw;
    return NVML_SUCCESS;
}

/* "For all products. For Linux only." (nvml.h 5430-5454), on every driver: no variant lacks it. The mode is the
 * GPU's; a MIG device handle answers its GPU's (nvml.h does not say: the stand-in's choice). Scenario errors play
 * NOT_SUPPORTED, which nvml.h lists without naming the platforms that answer it. */
EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t dev, unsigned int *mode) {
    ENTER_DEV("nvmlDeviceGetPersistenceMode", dev);
    if (!mode) return NVML_ERROR_INVALID_ARGUMENT;
    *mode = dev->is_mig ? dev->parent->persistence_mode : dev->persistence_mode;
    return NVML_SUCCESS;
}

/* ---- processes ---- */

#ifdef FAKE_VARIANT_R535
typedef nvmlProcessInfo_r535_t process_entry_t;
#else
typedef nvmlProcessInfo_t process_entry_t;
#endif

/* Appends one device's list of a kind to out (when out is not NULL), tagging MIG instance ids. */
static unsigned int emit(const device_t *d, int kind, process_entry_t *out, unsigned int at, unsigned int cap) {
    unsigned int n = d->nprocs[kind];
    const proc_t *list = d->procs[kind];
    unsigned int total = n + ((kind == KIND_COMPUTE && d->counted) ? d->nlate : 0);
    for (unsigned int i = 0; out && i < total && at + i < cap; i++) {
        const proc_t *p = i < n ? &list[i] : &d->late_procs[i - n];
        process_entry_t *e = &out[at + i];
        memset(e, 0, sizeof(*e));
        e->pid = p->pid;
        e->usedGpuMemory = p->used;
        e->gpuInstanceId = d->is_mig ? d->gi : NA_U32;
        e->computeInstanceId = d->is_mig ? d->ci : NA_U32;
    }
    return total;
}

static nvmlReturn_t running_processes(const char *fn, device_t *dev, int kind, unsigned int *count, process_entry_t *infos) {
    ENTER_DEV(fn, dev);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int cap = infos ? *count : 0, n = 0;
    if (mig_enabled(dev)) {
        /* The parent's aggregate view: every instance's processes, tagged with their ids. */
        for (unsigned int s = 0; s < MAX_MIG_SLOTS; s++)
            if (dev->slots[s]) n += emit(dev->slots[s], kind, infos, n, cap);
    } else if (dev->is_mig && dev->parent->ci_lists_gi) {
        /* A compute instance's handle listing every process of its GPU instance, each with its own ids. */
        for (unsigned int s = 0; s < MAX_MIG_SLOTS; s++)
            if (dev->parent->slots[s] && dev->parent->slots[s]->gi == dev->gi)
                n += emit(dev->parent->slots[s], kind, infos, n, cap);
    } else {
        n = emit(dev, kind, infos, 0, cap);
    }
    if (!infos && kind == KIND_COMPUTE) dev->counted = 1;
    if (n == 0) { *count = 0; return NVML_SUCCESS; }
    if (!infos || cap < n) { *count = n; return NVML_ERROR_INSUFFICIENT_SIZE; }
    *count = n;
    return NVML_SUCCESS;
}

#ifndef FAKE_VARIANT_R470
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, process_entry_t *i) {
    return running_processes("nvmlDeviceGetComputeRunningProcesses_v3", d, KIND_COMPUTE, c, i);
}
EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, process_entry_t *i) {
    return running_processes("nvmlDeviceGetGraphicsRunningProcesses_v3", d, KIND_GRAPHICS, c, i);
}
EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, process_entry_t *i) {
    return running_processes("nvmlDeviceGetMPSComputeRunningProcesses_v3", d, KIND_MPS, c, i);
}
#endif

/* _v2 has the same 24-byte struct as _v3 (R470 and later drivers keep exporting it). */
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *i) {
    return running_processes("nvmlDeviceGetComputeRunningProcesses_v2", d, KIND_COMPUTE, c, (process_entry_t *)(void *)i);
}
EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *i) {
    return running_processes("nvmlDeviceGetGraphicsRunningProcesses_v2", d, KIND_GRAPHICS, c, (process_entry_t *)(void *)i);
}
EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *i) {
    return running_processes("nvmlDeviceGetMPSComputeRunningProcesses_v2", d, KIND_MPS, c, (process_entry_t *)(void *)i);
}

#ifdef FAKE_VARIANT_R535
/* Its presence without nvmlDeviceGetRunningProcessDetailList is nvitop's marker of the 32-byte struct drivers. */
EXPORT nvmlReturn_t nvmlDeviceGetConfComputeMemSizeInfo(nvmlDevice_t dev, void *info) {
    (void)info;
    ENTER_DEV("nvmlDeviceGetConfComputeMemSizeInfo", dev);
    return NVML_ERROR_NOT_SUPPORTED;
}
#endif

/* ---- per-process utilisation ---- */

/* The entries a query returns, in order: the garbage entries (returned whatever lastSeenTimeStamp says, nvtop
 * #110), then the samples newer than lastSeenTimeStamp: each PID's newest one (latest: "One utilization sample
 * structure is returned per process running", nvml.h) or every stored one (buffered). out may be NULL: count. */
static unsigned int utilization_entries(const device_t *dev, unsigned long long last_seen, const sample_t **out) {
    unsigned int n = 0;
    unsigned long long now = now_us();
    for (unsigned int i = 0; i < dev->nsamples; i++) {
        sample_t *s = (sample_t *)&dev->samples[i]; /* a recurring sample: its latest visible period's instant */
        unsigned long long visible = now > s->lag_us ? now - s->lag_us : 0;
        if (s->every_us) s->ts = visible - visible % s->every_us;
    }
    for (unsigned int i = 0; i < dev->ngarbage; i++) {
        if (out) out[n] = &dev->garbage[i];
        n++;
    }
    for (unsigned int i = 0; i < dev->nsamples; i++) {
        const sample_t *s = &dev->samples[i];
        if (s->ts <= last_seen) continue;
        if (dev->util_shape == UTIL_LATEST) {
            int newer = 0; /* another sample of this PID is newer (a tie goes to the later one in the list) */
            for (unsigned int j = 0; j < dev->nsamples && !newer; j++) {
                const sample_t *o = &dev->samples[j];
                newer = j != i && o->pid == s->pid && (o->ts > s->ts || (o->ts == s->ts && j > i));
            }
            if (newer) continue;
        }
        if (out) out[n] = s;
        n++;
    }
    return n;
}

/* The count-then-fill protocol both calls share. Returns SUCCESS with *count entries in list, or an error. */
static nvmlReturn_t utilization_query(const device_t *dev, int size_query, unsigned int *count,
                                      unsigned long long last_seen, const sample_t ***list) {
    unsigned int n = utilization_entries(dev, last_seen, NULL);
    if (size_query && dev->util_size_fixed) {
        *count = dev->util_size_answer; /* go-nvml #11: "100", with or without load */
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n == 0) return NVML_ERROR_NOT_FOUND;
    if (size_query || *count < n) { *count = n; return NVML_ERROR_INSUFFICIENT_SIZE; }
    *list = calloc(n, sizeof(**list));
    if (!*list) return NVML_ERROR_MEMORY;
    utilization_entries(dev, last_seen, *list);
    if (!dev->util_fill_unchanged) *count = n; /* else left as passed: slots past n keep what the caller had */
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t dev, nvmlProcessUtilizationSample_t *out,
                                                    unsigned int *count, unsigned long long last_seen) {
    ENTER_DEV("nvmlDeviceGetProcessUtilization", dev);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (dev->is_mig || mig_enabled(dev)) return NVML_ERROR_NOT_SUPPORTED;
    const sample_t **list = NULL;
    unsigned int n = utilization_entries(dev, last_seen, NULL);
    nvmlReturn_t r = utilization_query(dev, out == NULL, count, last_seen, &list);
    if (r != NVML_SUCCESS) return r;
    for (unsigned int k = 0; k < n; k++) {
        const sample_t *s = list[k];
        out[k].pid = s->pid;
        out[k].timeStamp = s->ts;
        out[k].smUtil = s->sm;
        out[k].memUtil = s->mem;
        out[k].encUtil = s->enc;
        out[k].decUtil = s->dec;
    }
    free(list);
    return NVML_SUCCESS;
}

#if !defined(FAKE_VARIANT_R470) && !defined(FAKE_VARIANT_R535) /* R550 on (tests/test_real_library.py) */
EXPORT nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t dev, nvmlProcessesUtilizationInfo_t *info) {
    ENTER_DEV("nvmlDeviceGetProcessesUtilizationInfo", dev);
    if (!info) return NVML_ERROR_INVALID_ARGUMENT;
    if (info->version != PROCESSES_UTILIZATION_INFO_V1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (dev->is_mig || mig_enabled(dev)) return NVML_ERROR_NOT_SUPPORTED;
    const sample_t **list = NULL;
    unsigned int n = utilization_entries(dev, info->lastSeenTimeStamp, NULL);
    nvmlReturn_t r = utilization_query(dev, info->procUtilArray == NULL, &info->processSamplesCount,
                                       info->lastSeenTimeStamp, &list);
    if (r != NVML_SUCCESS) return r;
    for (unsigned int k = 0; k < n; k++) {
        const sample_t *s = list[k];
        nvmlProcessUtilizationInfo_v1_t *o = &info->procUtilArray[k];
        o->timeStamp = s->ts;
        o->pid = s->pid;
        o->smUtil = s->sm;
        o->memUtil = s->mem;
        o->encUtil = s->enc;
        o->decUtil = s->dec;
        o->jpgUtil = s->jpg;
        o->ofaUtil = s->ofa;
    }
    free(list);
    return NVML_SUCCESS;
}
#endif

/* ---- MIG ---- */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t dev, unsigned int *current, unsigned int *pending) {
    ENTER_DEV("nvmlDeviceGetMigMode", dev);
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    if (dev->is_mig || !dev->has_mig) return NVML_ERROR_NOT_SUPPORTED;
    *current = dev->mig_current;
    *pending = dev->mig_pending;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t dev, unsigned int *count) {
    ENTER_DEV("nvmlDeviceGetMaxMigDeviceCount", dev);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (!dev->is_mig && mig_enabled(dev)) ? dev->mig_max : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t dev, unsigned int index, nvmlDevice_t *mig) {
    ENTER_DEV("nvmlDeviceGetMigDeviceHandleByIndex", dev);
    if (!mig || dev->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (!mig_enabled(dev)) return NVML_ERROR_NOT_SUPPORTED;
    if (index >= dev->mig_max) return NVML_ERROR_INVALID_ARGUMENT;
    if (!dev->slots[index]) return NVML_ERROR_NOT_FOUND;
    *mig = dev->slots[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t dev, unsigned int *is_mig) {
    ENTER_DEV("nvmlDeviceIsMigDeviceHandle", dev);
    if (!is_mig || !device_exists(dev)) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = (unsigned int)dev->is_mig;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t dev, unsigned int *id) {
    ENTER_DEV("nvmlDeviceGetGpuInstanceId", dev);
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!dev->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *id = dev->gi;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t dev, unsigned int *id) {
    ENTER_DEV("nvmlDeviceGetComputeInstanceId", dev);
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (!dev->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    *id = dev->ci;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t dev, nvmlDevice_t *parent) {
    ENTER_DEV("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", dev);
    if (!parent) return NVML_ERROR_INVALID_ARGUMENT;
    if (!dev->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *parent = dev->parent;
    return NVML_SUCCESS;
}

/* ---- GPM (GPU Performance Monitoring): Hopper and newer, NVML 11.8/12.0 (R520/R525) and later ---- */

#ifndef FAKE_VARIANT_R470
static gpm_sample_t *gpm_samples; /* every allocated sample */
static double monotonic_s(void);
static pthread_mutex_t gpm_lock = PTHREAD_MUTEX_INITIALIZER; /* the samples, between threads holding the read lock */

static int gpm_lock_take(void) {
    pthread_mutex_lock(&gpm_lock);
    return 1;
}

static void gpm_lock_release(int *held) {
    if (*held) pthread_mutex_unlock(&gpm_lock);
}

#define GPM_LOCKED() int gpm_locked_ __attribute__((cleanup(gpm_lock_release), unused)) = gpm_lock_take()

/* Fills a sample with a copy of the values sampled, which a live reload may replace before nvmlGpmMetricsGet. */
static nvmlReturn_t gpm_fill(gpm_sample_t *s, const device_t *dev, unsigned int gi, const gpm_values_t *values) {
    gpm_metric_t *m = values->n ? malloc(values->n * sizeof(*m)) : NULL;
    if (values->n && !m) return NVML_ERROR_MEMORY;
    if (m) memcpy(m, values->m, values->n * sizeof(*m));
    free(s->values.m);
    *s = (gpm_sample_t){s->next, 1, dev, gi, monotonic_s(), {m, values->n}};
    return NVML_SUCCESS;
}

static gpm_sample_t *gpm_find(const gpm_sample_t *handle) {
    for (gpm_sample_t *s = gpm_samples; s; s = s->next)
        if (s == handle) return s;
    return NULL;
}

static int gpm_supported(const device_t *dev) {
    return dev->is_mig ? dev->parent->gpm_supported : dev->gpm_supported;
}

/* The metric ids nvmlGpmMetricId_t defines (nvml.h 13.3.29 up to 332, nvidia-ml-py 13.615.71 up to 476). */
static int gpm_known(unsigned int id) {
    static const unsigned int GPM_KNOWN[][2] = {
        {1, 13}, {20, 21}, {30, 37}, {40, 47}, {50, 51}, {60, 97}, {100, 209}, {212, 476}};
    for (size_t i = 0; i < sizeof(GPM_KNOWN) / sizeof(GPM_KNOWN[0]); i++)
        if (id >= GPM_KNOWN[i][0] && id <= GPM_KNOWN[i][1]) return 1;
    return 0;
}

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

EXPORT nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t dev, nvmlGpmSupport_t *support) {
    ENTER_DEV("nvmlGpmQueryDeviceSupport", dev);
    if (!support) return NVML_ERROR_INVALID_ARGUMENT;
    if (support->version != GPM_SUPPORT_VERSION) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    support->isSupportedDevice = (unsigned int)gpm_supported(dev);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample) {
    ENTER("nvmlGpmSampleAlloc", NULL);
    GPM_LOCKED();
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    gpm_sample_t *s = calloc(1, sizeof(*s));
    if (!s) return NVML_ERROR_MEMORY;
    s->next = gpm_samples;
    gpm_samples = s;
    sample->handle = s;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample) {
    ENTER("nvmlGpmSampleFree", NULL);
    GPM_LOCKED();
    for (gpm_sample_t **p = &gpm_samples; *p; p = &(*p)->next)
        if (*p == sample.handle) {
            *p = sample.handle->next;
            free(sample.handle->values.m);
            free(sample.handle);
            return NVML_SUCCESS;
        }
    return NVML_ERROR_INVALID_ARGUMENT;
}

/* A GPU handle samples the whole GPU, a MIG device handle its compute instance (nvml.h: "This API supports the
 * device handle and MIG device handle"). */
EXPORT nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t dev, nvmlGpmSample_t sample) {
    ENTER_DEV("nvmlGpmSampleGet", dev);
    GPM_LOCKED();
    gpm_sample_t *s = gpm_find(sample.handle);
    if (!s) return NVML_ERROR_INVALID_ARGUMENT;
    if (!gpm_supported(dev)) return NVML_ERROR_NOT_SUPPORTED;
    return gpm_fill(s, dev, NA_U32, &dev->gpm);
}

/* A GPU instance of a MIG-enabled GPU, by its id, through the GPU's handle (as DCGM's DcgmGpmManager calls it). */
EXPORT nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t dev, unsigned int gpu_instance_id, nvmlGpmSample_t sample) {
    ENTER_DEV("nvmlGpmMigSampleGet", dev);
    GPM_LOCKED();
    gpm_sample_t *s = gpm_find(sample.handle);
    if (!s || dev->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (!gpm_supported(dev) || !mig_enabled(dev)) return NVML_ERROR_NOT_SUPPORTED;
    for (unsigned int k = 0; k < MAX_MIG_SLOTS; k++)
        if (dev->slots[k] && dev->slots[k]->gi == gpu_instance_id) {
            return gpm_fill(s, dev, gpu_instance_id, &dev->slots[k]->gi_gpm);
        }
    return NVML_ERROR_NOT_FOUND;
}

/* $FAKE_NVML_GPM_LOG: each nvmlGpmMetricsGet over two filled samples appends their distance in seconds, one line. */
static void gpm_log_interval(double seconds) {
    const char *path = getenv("FAKE_NVML_GPM_LOG");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "%.6f\n", seconds);
    fclose(f);
}

EXPORT nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *mg) {
    ENTER("nvmlGpmMetricsGet", NULL);
    GPM_LOCKED();
    if (!mg) return NVML_ERROR_INVALID_ARGUMENT;
    if (mg->version != GPM_METRICS_GET_VERSION) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const gpm_sample_t *a = gpm_find(mg->sample1.handle), *b = gpm_find(mg->sample2.handle);
    if (mg->numMetrics > GPM_METRIC_MAX || !a || !b || !a->filled || !b->filled || a->dev != b->dev || a->gi != b->gi)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!device_exists(a->dev)) return NVML_ERROR_INVALID_ARGUMENT; /* sampled before a re-init changed the GPUs */
    int lost = fault((int)a->dev->index);
    if (lost) return lost;
    const device_t *gpu = a->dev->is_mig ? a->dev->parent : a->dev;
    gpm_log_interval(b->t - a->t);
    int too_close = b->t - a->t < gpu->gpm_refresh_s; /* nvml.h: the interval "should be greater than 100ms" */
    if (too_close && !gpu->gpm_too_close_nan) return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < mg->numMetrics; i++) {
        nvmlGpmMetric_t *m = &mg->metrics[i];
        memset(&m->metricInfo, 0, sizeof(m->metricInfo)); /* "Those can be NULL if not defined" */
        m->value = 0;
        m->nvmlReturn = gpm_known(m->metricId) ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
        for (unsigned int k = 0; m->nvmlReturn == NVML_SUCCESS && k < b->values.n; k++)
            if (b->values.m[k].id == m->metricId) {
                m->value = b->values.m[k].value;
                m->nvmlReturn = b->values.m[k].err;
            }
        if (too_close && m->nvmlReturn == NVML_SUCCESS) m->value = NAN;
    }
    return NVML_SUCCESS;
}
#endif
