/*
 * kcuda_nvml.c: GPU energy through NVML loaded with dlopen (contract in
 * kcuda_nvml.h). The few entry points are declared here with NVML's ABI
 * (an int result, nvmlDevice_t as an opaque pointer); NVML_SUCCESS is 0.
 * NVML is initialised once per process and kept: nvmlShutdown would
 * invalidate the handles of a meter still open elsewhere.
 */
#include "kcuda_nvml.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NVML_OK 0

static struct {
    int (*init)(void);
    int (*count)(unsigned int *n);
    int (*by_index)(unsigned int i, void **dev);
    int (*by_uuid)(const char *uuid, void **dev);
    int (*energy)(void *dev, unsigned long long *mj);
    int (*power)(void *dev, unsigned int *mw);
    const char *(*error_string)(int res);
    int state; /* 0 not tried, 1 ready, <0 the error of the first try */
} nvml;

static pthread_mutex_t nvml_lock = PTHREAD_MUTEX_INITIALIZER;

static int nvml_fail(int res, const char *call)
{
    return tt_error_set(TT_EDEVICE, "%s failed: %s", call, nvml.error_string ? nvml.error_string(res) : "NVML error");
}

static int load_locked(void)
{
    if (nvml.state) return nvml.state > 0 ? 0 : tt_error_set(nvml.state, "NVML is not available");
    nvml.state = TT_EUNSUPPORTED;
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return tt_error_set(TT_EUNSUPPORTED, "no NVML (libnvidia-ml.so.1): %s", dlerror());
    *(void **)&nvml.init = dlsym(h, "nvmlInit_v2");
    *(void **)&nvml.count = dlsym(h, "nvmlDeviceGetCount_v2");
    *(void **)&nvml.by_index = dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&nvml.by_uuid = dlsym(h, "nvmlDeviceGetHandleByUUID");
    *(void **)&nvml.energy = dlsym(h, "nvmlDeviceGetTotalEnergyConsumption");
    *(void **)&nvml.power = dlsym(h, "nvmlDeviceGetPowerUsage");
    *(void **)&nvml.error_string = dlsym(h, "nvmlErrorString");
    if (!nvml.init || !nvml.count || !nvml.by_index || !nvml.by_uuid || !nvml.power || !nvml.error_string)
        return tt_error_set(TT_EUNSUPPORTED, "the NVML library found lacks the functions tutti uses");
    int res = nvml.init();
    if (res != NVML_OK) return tt_error_set(TT_EUNSUPPORTED, "nvmlInit failed: %s", nvml.error_string(res));
    nvml.state = 1;
    return 0;
}

/* Handle of the i-th visible GPU in CUDA's numbering. */
static int device_handle(int i, unsigned int n_nvml, void **dev)
{
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    char item[96] = "";
    if (vis && *vis) {
        const char *p = vis;
        for (int k = 0; k < i && p; k++) p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL;
        if (!p) return tt_error_set(TT_EUNSUPPORTED, "CUDA_VISIBLE_DEVICES lists fewer than %d GPUs", i + 1);
        const size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof(item)) return tt_error_set(TT_EINVAL, "CUDA_VISIBLE_DEVICES entry %d", i);
        memcpy(item, p, len);
        item[len] = 0;
    }
    int res;
    if (item[0] && strncmp(item, "GPU-", 4) == 0) {
        res = nvml.by_uuid(item, dev);
    } else {
        const long idx = item[0] ? strtol(item, NULL, 10) : i;
        if (idx < 0 || idx >= (long)n_nvml) return tt_error_set(TT_EUNSUPPORTED, "no GPU %ld in NVML", idx);
        res = nvml.by_index((unsigned int)idx, dev);
    }
    return res == NVML_OK ? 0 : nvml_fail(res, "nvmlDeviceGetHandle");
}

/* ---- power sampling (devices without an energy counter) ---- */

struct kcuda_energy_sampler {
    pthread_t thread;
    pthread_mutex_t lock;
    bool stop;
    double joules;
    const struct kcuda_energy *m;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double power_w(const struct kcuda_energy *m)
{
    double w = 0.0;
    for (int i = 0; i < m->n_dev; i++) {
        unsigned int mw = 0;
        if (nvml.power(m->dev[i], &mw) == NVML_OK) w += mw * 1e-3;
    }
    return w;
}

static void *sampler_main(void *p)
{
    struct kcuda_energy_sampler *s = p;
    double t = now_s(), w = power_w(s->m);
    const struct timespec period = { 0, KCUDA_NVML_SAMPLE_MS * 1000000L };
    for (;;) {
        nanosleep(&period, NULL);
        const double t1 = now_s(), w1 = power_w(s->m);
        pthread_mutex_lock(&s->lock);
        s->joules += 0.5 * (w + w1) * (t1 - t);
        const bool stop = s->stop;
        pthread_mutex_unlock(&s->lock);
        t = t1, w = w1;
        if (stop) return NULL;
    }
}

/* ---- the meter ---- */

int kcuda_energy_open(struct kcuda_energy *m, int n_gpus)
{
    memset(m, 0, sizeof(*m));
    if (n_gpus < 1) return tt_error_set(TT_EUNSUPPORTED, "no GPU to meter");
    pthread_mutex_lock(&nvml_lock);
    int err = load_locked();
    pthread_mutex_unlock(&nvml_lock);
    if (err) return err;
    unsigned int n = 0;
    int res = nvml.count(&n);
    if (res != NVML_OK) return nvml_fail(res, "nvmlDeviceGetCount");
    if (n == 0) return tt_error_set(TT_EUNSUPPORTED, "NVML sees no GPU");
    m->n_dev = TT_MIN(TT_MIN(n_gpus, (int)n), KCUDA_NVML_DEVICES_MAX);
    bool counters = nvml.energy != NULL;
    for (int i = 0; i < m->n_dev && !err; i++) {
        err = device_handle(i, n, &m->dev[i]);
        if (!err && counters) counters = nvml.energy(m->dev[i], &m->mj0[i]) == NVML_OK;
    }
    if (err || counters) return err;
    m->sampled = true;
    struct kcuda_energy_sampler *s = calloc(1, sizeof(*s));
    if (!s) return tt_error_set(TT_ENOMEM, "out of memory");
    s->m = m;
    pthread_mutex_init(&s->lock, NULL);
    if (pthread_create(&s->thread, NULL, sampler_main, s)) {
        pthread_mutex_destroy(&s->lock);
        free(s);
        return tt_error_set(TT_ENOMEM, "cannot start the power-sampling thread");
    }
    m->sampler = s;
    return 0;
}

void kcuda_energy_close(struct kcuda_energy *m)
{
    struct kcuda_energy_sampler *s = m->sampler;
    if (s) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
        pthread_mutex_destroy(&s->lock);
        free(s);
    }
    memset(m, 0, sizeof(*m));
}

int kcuda_energy_read(struct kcuda_energy *m, double *joules)
{
    *joules = 0.0;
    if (m->n_dev == 0) return tt_error_set(TT_EUNSUPPORTED, "the energy meter is not open");
    if (m->sampler) {
        pthread_mutex_lock(&m->sampler->lock);
        *joules = m->sampler->joules;
        pthread_mutex_unlock(&m->sampler->lock);
        return 0;
    }
    for (int i = 0; i < m->n_dev; i++) {
        unsigned long long mj = 0;
        int res = nvml.energy(m->dev[i], &mj);
        if (res != NVML_OK) return nvml_fail(res, "nvmlDeviceGetTotalEnergyConsumption");
        *joules += (double)(mj - m->mj0[i]) * 1e-3;
    }
    return 0;
}

const char *kcuda_energy_source(const struct kcuda_energy *m) { return m->sampled ? "sampled" : "counter"; }
