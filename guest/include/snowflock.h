/* The SnowFlock clone API for C guests (implemented by the sf-guest
 * runtime, src/capi.rs). Every call returns a negative error code on
 * failure: -SF_ENOENT no such ticket (or already joined), -SF_EAGAIN no
 * clones available, -SF_EBUSY ticket already used, -SF_E2BIG result over
 * SF_RESULT_MAX, -SF_EFAULT bad pointer, -SF_EINVAL bad argument. */
#ifndef SNOWFLOCK_H
#define SNOWFLOCK_H
#include <stddef.h>
#include <stdint.h>

#define SF_RESULT_MAX (64 * 1024)
#define SF_ENOENT 2
#define SF_EIO 5
#define SF_E2BIG 7
#define SF_EAGAIN 11
#define SF_EFAULT 14
#define SF_EBUSY 16
#define SF_EINVAL 22

typedef struct { uint32_t id; uint32_t granted; } sf_ticket_t;

/* Reserve up to n clones; returns the number granted (>= 1). */
int64_t sf_request_ticket(uint64_t n, sf_ticket_t *out);
/* Fork the VM: 0 in the parent, 1..granted in each clone. */
int64_t sf_clone(const sf_ticket_t *t);
/* End this clone, handing result[0..len) to the parent. */
int64_t sf_exit(int32_t status, const void *result, size_t len);
/* Wait for all clones; statuses[i] = exit code of clone i+1, or -1 if it
 * failed. Returns the number of clones. */
int64_t sf_join(const sf_ticket_t *t, int32_t *statuses, size_t cap);
/* Kill all running clones of the ticket; returns how many. */
int64_t sf_kill(const sf_ticket_t *t);

#endif
