/* Inputs and outputs from C, against guest/include/snowflock.h: hash every
 * input (FNV-1a, so the host can check), write it to "c-io.txt" in pieces,
 * and check the refusals (bad names, a NULL buffer, an append before the
 * file exists, an input that is not there). Returns the number of checks
 * that failed, and the hash of input `db` in *hash. */
#include <snowflock.h>

static uint64_t fnv(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static size_t hex(uint64_t v, char *out) {
    for (int i = 0; i < 16; i++) {
        out[i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
    }
    return 16;
}

int c_io(uint64_t *hash) {
    int bad = 0;
    size_t len = 123;
    const unsigned char *db = sf_input("db", &len);
    if (!db) {
        return 100;
    }
    *hash = fnv(db, len);
    size_t db_len = len;
    if (sf_input("no-such-input", &len) != NULL || len != 0) bad++;
    size_t n = sf_input_count();
    size_t name_len = 0;
    const char *first = sf_input_name(0, &name_len);
    if (n < 1 || !first || name_len == 0) bad++;
    if (sf_input_name(n, &name_len) != NULL) bad++;
    /* Range notices: the whole input is announced, the rest refused. */
    if (sf_input_will_read("db", 0, db_len) < 1) bad++;
    if (sf_input_will_read("db", db_len, 1) != -SF_EINVAL) bad++;
    if (sf_input_will_read("db", 0, 0) != -SF_EINVAL) bad++;
    if (sf_input_will_read("db", (size_t)-1, 2) != -SF_EINVAL) bad++;
    if (sf_input_will_read("no-such-input", 0, 1) != -SF_ENOENT) bad++;

    char line[17] = {0};
    hex(*hash, line);
    line[16] = '\n';
    if (sf_output_write("c-io.txt", "c ", 2) != 0) bad++;
    if (sf_output_append("c-io.txt", line, 17) != 0) bad++;
    if (sf_output_write("../c-io.txt", "x", 1) != -SF_EINVAL) bad++;
    if (sf_output_write("a/b", "x", 1) != -SF_EINVAL) bad++;
    if (sf_output_write(NULL, "x", 1) != -SF_EINVAL) bad++;
    if (sf_output_write("null-buf", NULL, 8) != -SF_EFAULT) bad++;
    if (sf_output_append("not-yet", "x", 1) != -SF_ENOENT) bad++;
    /* A buffer the program may not read (ring 0's IDT). */
    if (sf_output_write("kernel", (const void *)0x3000, 16) != -SF_EFAULT) bad++;
    return bad;
}
