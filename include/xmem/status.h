/**
 * @file status.h
 * @brief The one status type of the xmem API.
 */
#ifndef XMEM_STATUS_H
#define XMEM_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/** Result of every xmem call. XM_OK is 0; errors are negative. */
typedef enum xm_status {
    XM_OK = 0,
    XM_IN_PROGRESS = 1,        /**< asynchronous operation not yet complete */
    XM_ERR_INVALID = -1,       /**< bad argument (size, name, alignment, option) */
    XM_ERR_NO_MEMORY = -2,     /**< local allocation failed */
    XM_ERR_NO_SPACE = -3,      /**< the appliance's pool cannot hold the request */
    XM_ERR_NOT_FOUND = -4,     /**< no such region */
    XM_ERR_EXISTS = -5,        /**< a region of that name exists */
    XM_ERR_RANGE = -6,         /**< offset/length outside the region, or zero length */
    XM_ERR_PERM = -7,          /**< not owner / not granted / rights exceeded */
    XM_ERR_AUTH = -8,          /**< cluster secret refused or missing */
    XM_ERR_CONNECT = -9,       /**< cannot reach the peer (appliance or manager) */
    XM_ERR_TIMEOUT = -10,      /**< no answer within the timeout */
    XM_ERR_DISCONNECTED = -11, /**< the connection was lost */
    XM_ERR_ACCESS = -12,       /**< the transport refused the access (key, range, rights) */
    XM_ERR_PROTOCOL = -13,     /**< malformed, truncated or oversized message */
    XM_ERR_TRANSPORT = -14,    /**< libfabric failure */
    XM_ERR_IO = -15,           /**< system call failure (file, socket) */
    XM_ERR_AGAIN = -16,        /**< too many operations in flight; progress and retry */
} xm_status_t;

/** A fixed, human-readable string for every status code. */
const char *xm_status_str(xm_status_t status) __attribute__((visibility("default")));

#ifdef __cplusplus
}
#endif

#endif /* XMEM_STATUS_H */
