/* A C guest of the clone API: fork into n clones, each exits with its ID,
 * the parent joins and adds the statuses up. Returns the sum, or a negative
 * code saying which step failed. */
#include "snowflock.h"

int64_t c_fork_sum(uint32_t n) {
    sf_ticket_t t;
    int64_t granted = sf_request_ticket(n, &t);
    if (granted < 1)
        return -1000 + granted;
    int64_t id = sf_clone(&t);
    if (id < 0)
        return -2000 + id;
    if (id > 0) {
        int32_t value = (int32_t)(id * 10);
        sf_exit((int32_t)id, &value, sizeof value);
        return -3000; /* sf_exit returns only on error */
    }
    int32_t statuses[64];
    int64_t clones = sf_join(&t, statuses, 64);
    if (clones != granted)
        return -4000 + clones;
    int64_t sum = 0;
    for (int64_t i = 0; i < clones; i++)
        sum += statuses[i];
    /* A ticket is spent once joined. */
    if (sf_join(&t, statuses, 64) != -SF_ENOENT)
        return -5000;
    if (sf_exit(0, (const void *)0, SF_RESULT_MAX + 1) != -SF_E2BIG)
        return -6000;
    return sum;
}
