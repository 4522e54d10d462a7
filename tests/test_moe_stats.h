/*
 * test_moe_stats.h: what the MoE tests read from a running engine, through
 * the same public call the server's /metrics uses (engine_moe_loads), so the
 * tests measure the figures a user sees.
 */
#ifndef TT_TEST_MOE_STATS_H
#define TT_TEST_MOE_STATS_H

#include "engine/engine.h"

#include <stdint.h>
#include <stdlib.h>

/* Largest rank imbalance (max rank load / mean) over the layers. */
static inline double test_moe_max_imbalance(struct engine *e)
{
    const struct model_hparams *hp = &engine_model(e)->hp;
    uint64_t *loads = malloc(sizeof(uint64_t) * (size_t)(hp->n_expert > 0 ? hp->n_expert : 1));
    double worst = 0.0, im;
    for (int il = 0; loads && il < hp->n_layer; il++)
        if (engine_moe_loads(e, il, loads, &im) == 0 && im > worst) worst = im;
    free(loads);
    return worst;
}

#endif
