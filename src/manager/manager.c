/* The manager object: options, store, registry and table together. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "manager.h"

xm_status_t mgr_create(const mgr_opts_t *opts, mgr_t **m_p, char *why, size_t whylen)
{
    mgr_t *m = calloc(1, sizeof(*m));
    if (m == NULL) return XM_ERR_NO_MEMORY;
    m->opts = *opts;
    if (m->opts.place == NULL) m->opts.place = mgr_place_spread;
    if (m->opts.store_ops == NULL) m->opts.store_ops = &mgr_store_sqlite;
    m->next_id = 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    xm_status_t status = m->opts.store_ops->open(opts->db_path, &m->store, why, whylen);
    if (status != XM_OK) goto err;
    status = m->opts.store_ops->load(m->store, m);
    if (status != XM_OK) {
        snprintf(why, whylen, "cannot load the allocation table from %s", opts->db_path);
        goto err;
    }
    *m_p = m;
    return XM_OK;
err:
    mgr_destroy(m);
    return status;
}

void mgr_destroy(mgr_t *m)
{
    if (m == NULL) return;
    if (m->store != NULL) m->opts.store_ops->close(m->store);
    while (m->allocs != NULL) {
        mgr_alloc_t *a = m->allocs;
        m->allocs = a->next;
        mgr_alloc_free_mem(a);
    }
    mgr_registry_cleanup(m);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
