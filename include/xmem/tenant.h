/**
 * @file tenant.h
 * @brief Tenant credentials: issue, list and revoke (administrators, with the cluster secret).
 *
 * A tenant credential file names one tenant and holds a key derived from the
 * cluster secret; a session made with it is that tenant's, whatever name the
 * peer claims. The registry of valid credentials (SECRET.tenants unless told
 * otherwise) is read by xmemd and xmem-manager, which end a revoked tenant's
 * sessions as soon as the file changes.
 */
#ifndef XMEM_TENANT_H
#define XMEM_TENANT_H

#include <stddef.h>

#include <xmem/status.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Issue a credential for a tenant.
 * @param [in] secret_file  the cluster secret
 * @param [in] tenants_file the registry; NULL: secret_file + ".tenants"
 * @param [in] tenant       the tenant's name (no '/', not starting with '@')
 * @param [in] out_path     the credential file to create (mode 0600; must not exist)
 * @param [out] why         what failed, for the user (may be NULL)
 * @param [in] whylen       size of why
 * @return XM_OK, or an error with the reason in why
 */
xm_status_t xm_tenant_add(const char *secret_file, const char *tenants_file, const char *tenant,
                          const char *out_path, char *why, size_t whylen);
/**
 * Revoke every credential of a tenant: daemons refuse it and end its sessions.
 * @return XM_OK, XM_ERR_NOT_FOUND when the registry has no such tenant
 */
xm_status_t xm_tenant_rm(const char *secret_file, const char *tenants_file, const char *tenant,
                         char *why, size_t whylen);
/**
 * The registry's tenants, one "NAME ID" line each, in *list_p (free() it).
 */
xm_status_t xm_tenant_list(const char *secret_file, const char *tenants_file, char **list_p,
                           char *why, size_t whylen);

#ifdef __cplusplus
}
#endif

#endif
