/* libxmem: tenant credentials for administrators (include/xmem/tenant.h). */
#include <stdio.h>

#include <xmem/tenant.h>

#include "../common/common.h"
#include "client.h"

/* The cluster credential and the registry path; why says what failed. */
static xm_status_t admin_open(const char *secret_file, const char *tenants_file, rpc_cred_t *cred,
                              char *path, size_t pathlen, char *why, size_t whylen)
{
    xm_status_t status = rpc_cred_load(secret_file, cred, why, whylen);
    if (status != XM_OK) return status;
    if (!cred->cluster) {
        snprintf(why, whylen, "%s is a tenant credential: managing tenants needs the cluster secret",
                 secret_file);
        return XM_ERR_PERM;
    }
    if (tenants_file != NULL && tenants_file[0] != '\0') {
        snprintf(path, pathlen, "%s", tenants_file);
    } else {
        rpc_tenants_path(cred->path, path, pathlen);
    }
    return XM_OK;
}

XM_EXPORT xm_status_t xm_tenant_add(const char *secret_file, const char *tenants_file,
                                    const char *tenant, const char *out_path, char *why,
                                    size_t whylen)
{
    char dummy[8], path[PATH_MAX];
    if (why == NULL) why = dummy, whylen = sizeof(dummy);
    if (tenant == NULL || out_path == NULL) return XM_ERR_INVALID;
    rpc_cred_t cred;
    xm_status_t status = admin_open(secret_file, tenants_file, &cred, path, sizeof(path), why, whylen);
    if (status == XM_OK) status = rpc_tenant_add(&cred, path, tenant, out_path, why, whylen);
    sodium_memzero(&cred, sizeof(cred));
    return status;
}

XM_EXPORT xm_status_t xm_tenant_rm(const char *secret_file, const char *tenants_file,
                                   const char *tenant, char *why, size_t whylen)
{
    char dummy[8], path[PATH_MAX];
    if (why == NULL) why = dummy, whylen = sizeof(dummy);
    if (tenant == NULL) return XM_ERR_INVALID;
    rpc_cred_t cred;
    xm_status_t status = admin_open(secret_file, tenants_file, &cred, path, sizeof(path), why, whylen);
    sodium_memzero(&cred, sizeof(cred));
    if (status == XM_OK) status = rpc_tenant_rm(path, tenant, why, whylen);
    return status;
}

XM_EXPORT xm_status_t xm_tenant_list(const char *secret_file, const char *tenants_file,
                                     char **list_p, char *why, size_t whylen)
{
    char dummy[8], path[PATH_MAX];
    if (why == NULL) why = dummy, whylen = sizeof(dummy);
    if (list_p == NULL) return XM_ERR_INVALID;
    rpc_cred_t cred;
    xm_status_t status = admin_open(secret_file, tenants_file, &cred, path, sizeof(path), why, whylen);
    sodium_memzero(&cred, sizeof(cred));
    if (status == XM_OK) status = rpc_tenant_list(path, list_p, why, whylen);
    return status;
}
