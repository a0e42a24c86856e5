/* Strings for xm_status_t. */
#include "common.h"

XM_EXPORT const char *xm_status_str(xm_status_t status)
{
    switch (status) {
    case XM_OK: return "success";
    case XM_IN_PROGRESS: return "operation in progress";
    case XM_ERR_INVALID: return "invalid argument";
    case XM_ERR_NO_MEMORY: return "out of local memory";
    case XM_ERR_NO_SPACE: return "not enough free space";
    case XM_ERR_NOT_FOUND: return "no such region or allocation";
    case XM_ERR_EXISTS: return "the name is taken";
    case XM_ERR_RANGE: return "offset or length outside the region";
    case XM_ERR_PERM: return "permission denied";
    case XM_ERR_AUTH: return "authentication failed (wrong secret or credential)";
    case XM_ERR_CONNECT: return "cannot connect";
    case XM_ERR_TIMEOUT: return "timed out";
    case XM_ERR_DISCONNECTED: return "connection lost";
    case XM_ERR_ACCESS: return "access refused by the transport";
    case XM_ERR_PROTOCOL: return "malformed or unexpected message";
    case XM_ERR_TRANSPORT: return "transport (libfabric) error";
    case XM_ERR_IO: return "I/O error";
    case XM_ERR_AGAIN: return "too many operations in flight";
    }
    return "unknown status";
}
