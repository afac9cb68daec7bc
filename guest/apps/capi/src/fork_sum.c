/* A C guest of the clone API: fork into n clones, each exits with its ID,
 * the parent joins and adds the statuses up. Returns the sum, or a negative
 * code saying which step failed. */
#include "snowflock.h"

int64_t c_fork_sum(uint32_t n) {
    sf_ticket_t t;
    int64_t granted = sf_request_ticket(n, &t);
    if (granted < 1)
        return -1000 + granted;
    if (sf_result_cap(&t) < SF_RESULT_FLOOR)
        return -8000;
    /* A hint for this clone call only (the clones do not read it). */
    static char scratch[3 * 4096];
    if (sf_will_overwrite(scratch, sizeof scratch) != 1)
        return -7000;
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
    if (sf_result_cap(&t) != -SF_ENOENT)
        return -8001;
    /* A VM that is not a clone may hand back the floor, no more. */
    if (sf_exit(0, &sum, SF_RESULT_FLOOR + 1) != -SF_E2BIG)
        return -6000;
    return sum;
}

/* Four clones end four ways; the parent reads each one's status and result
 * through sf_join_clones. Returns 0 when all is as expected, a negative
 * code for a failed step, or a bit mask: 1 the results were wrong, 2 a
 * clean exit(-1) and a crash could not be told apart. `*null_exit` gets
 * what sf_exit(NULL, 8) returned in clone 3. */
int64_t c_results(int64_t *null_exit) {
    static const char four[] = "result of clone 4";
    sf_ticket_t t;
    if (sf_request_ticket(4, &t) != 4)
        return -1;
    int64_t id = sf_clone(&t);
    if (id < 0)
        return -2;
    if (id == 1) {
        sf_exit(-1, (const void *)0, 0); /* a clean exit(-1), no result */
        return -3;
    }
    if (id == 2) {
        *(volatile int *)0 = 1; /* a crash: page fault on the null page */
        return -4;
    }
    if (id == 3) {
        int64_t r = sf_exit(7, (const void *)0, 8);
        sf_exit(3, &r, sizeof r);
        return -5;
    }
    if (id == 4) {
        sf_exit(4, four, sizeof four - 1);
        return -6;
    }
    char bufs[4][32];
    sf_clone_t cs[4];
    for (int i = 0; i < 4; i++) {
        cs[i].result = bufs[i];
        cs[i].result_cap = sizeof bufs[i];
    }
    if (sf_join_clones(&t, cs, 4) != 4)
        return -7;
    int64_t mask = 0;
    int64_t r3 = 0;
    if (cs[2].status == SF_CLONE_EXITED && cs[2].code == 3 && cs[2].result_len == 8)
        __builtin_memcpy(&r3, bufs[2], 8);
    else
        mask |= 1;
    *null_exit = r3;
    if (cs[3].status != SF_CLONE_EXITED || cs[3].code != 4 ||
        cs[3].result_len != sizeof four - 1 ||
        __builtin_memcmp(bufs[3], four, sizeof four - 1) != 0)
        mask |= 1;
    for (int i = 0; i < 4; i++)
        if (cs[i].id != (uint32_t)(i + 1))
            mask |= 1;
    if (!(cs[0].status == SF_CLONE_EXITED && cs[0].code == -1 && cs[0].result_len == 0 &&
          cs[1].status == SF_CLONE_CRASHED && cs[1].code == 14))
        mask |= 2;
    return mask;
}
