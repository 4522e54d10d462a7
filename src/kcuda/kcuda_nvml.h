/*
 * kcuda_nvml: the energy the GPUs draw, read through NVML (the driver's
 * management library, libnvidia-ml.so.1, loaded with dlopen: a machine
 * without an NVIDIA driver gets TT_EUNSUPPORTED, never a link error, and
 * builds without CUDA compile it too).
 *
 * Energy comes from each device's total-energy counter (millijoules since the
 * driver loaded; Volta and newer) when every metered device has one; else a
 * thread samples the power draw every KCUDA_NVML_SAMPLE_MS and integrates it
 * (trapezoids), which misses changes faster than the period.
 *
 * Which devices: the first n visible ones in CUDA's numbering, mapped to NVML
 * through CUDA_VISIBLE_DEVICES when it is set (indices or UUIDs), else by
 * index (CUDA and NVML agree on identical GPUs; mixed GPUs should set
 * CUDA_VISIBLE_DEVICES).
 */
#ifndef TT_KCUDA_NVML_H
#define TT_KCUDA_NVML_H

#include "../base/base.h"

#define KCUDA_NVML_DEVICES_MAX 16
#define KCUDA_NVML_SAMPLE_MS 20

struct kcuda_energy_sampler; /* the power-sampling thread, when used */

struct kcuda_energy {
    int n_dev;
    void *dev[KCUDA_NVML_DEVICES_MAX]; /* nvmlDevice_t */
    unsigned long long mj0[KCUDA_NVML_DEVICES_MAX]; /* counters at open */
    bool sampled;                      /* no energy counter: integrated power samples */
    struct kcuda_energy_sampler *sampler;
};

/* Start metering the first n_gpus visible GPUs (capped at what NVML sees).
 * Errors: TT_EUNSUPPORTED (no NVML, no GPU, n_gpus < 1), TT_EDEVICE (an NVML
 * call failed; the message has NVML's string), TT_ENOMEM. m is zeroed first
 * and safe to close after a failure. */
int kcuda_energy_open(struct kcuda_energy *m, int n_gpus);
/* Stop metering (a zeroed or failed meter is fine). */
void kcuda_energy_close(struct kcuda_energy *m);
/* Joules all metered GPUs consumed since open (non-decreasing). */
int kcuda_energy_read(struct kcuda_energy *m, double *joules);
/* "counter" or "sampled". */
const char *kcuda_energy_source(const struct kcuda_energy *m);

#endif
