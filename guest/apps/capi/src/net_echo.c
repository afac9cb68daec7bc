/* The network API from C (snowflock.h). Without a NIC every call must say
 * -SF_ENETDOWN. With one: the parent listens, one clone connects to the
 * parent's address, sends a checksummed message over TCP and a datagram
 * over UDP; the parent checks both and acknowledges. Returns 0 when all is
 * right, else a bit per failed check (and 1 << 30 for "no network"). */
#include "snowflock.h"

static uint64_t fnv64(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int64_t send_all(int64_t s, const uint8_t *p, size_t n) {
    while (n > 0) {
        int64_t r = sf_net_send(s, p, n, 10000);
        if (r <= 0)
            return r;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int64_t recv_all(int64_t s, uint8_t *p, size_t n) {
    while (n > 0) {
        int64_t r = sf_net_recv(s, p, n, 10000);
        if (r <= 0)
            return r == 0 ? -SF_ECONNRESET : r;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

#define MSG 3000
#define PORT 7100

static int64_t no_network(void) {
    int64_t bad = 0;
    if (sf_net_listen(PORT) != -SF_ENETDOWN) bad |= 1 << 1;
    if (sf_net_connect(0x0a010001, PORT, 10) != -SF_ENETDOWN) bad |= 1 << 2;
    if (sf_udp_bind(0) != -SF_ENETDOWN) bad |= 1 << 3;
    if (sf_addr_of(0) != -SF_ENETDOWN) bad |= 1 << 4;
    if (sf_parent_addr() != -SF_ENETDOWN) bad |= 1 << 6;
    if (sf_net_close(0) != -SF_ENETDOWN) bad |= 1 << 5;
    return bad | (1 << 30);
}

static int64_t clone_side(void) {
    static uint8_t msg[MSG + 8];
    for (int i = 0; i < MSG; i++)
        msg[i] = (uint8_t)(i * 7 + 3);
    uint64_t sum = fnv64(msg, MSG);
    for (int i = 0; i < 8; i++)
        msg[MSG + i] = (uint8_t)(sum >> (8 * i));
    uint32_t parent = (uint32_t)sf_parent_addr();
    int64_t s = -1;
    for (int tries = 0; tries < 100 && s < 0; tries++)
        s = sf_net_connect(parent, PORT, 2000);
    if (s < 0)
        return 1;
    if (send_all(s, msg, sizeof msg) != 0)
        return 2;
    uint8_t ack[8];
    if (recv_all(s, ack, 8) != 0)
        return 3;
    for (int i = 0; i < 8; i++)
        if (ack[i] != msg[MSG + i])
            return 4;
    sf_net_close(s);
    int64_t u = sf_udp_bind(0);
    if (u < 0 || sf_udp_send_to(u, "datagram", 8, parent, PORT + 1, 1000) != 8)
        return 5;
    return 0;
}

int64_t c_net(void) {
    int64_t me = sf_my_addr();
    if (me == -SF_ENETDOWN)
        return no_network();
    int64_t bad = 0;
    if (sf_addr_of(0) != me) bad |= 1 << 1;
    int64_t l = sf_net_listen(PORT);
    int64_t u = sf_udp_bind(PORT + 1);
    if (l < 0 || u < 0) return bad | 1 << 2;
    if (sf_net_listen(PORT) != -SF_EADDRINUSE) bad |= 1 << 3;
    if (sf_net_listen(70000) != -SF_EINVAL) bad |= 1 << 4;
    if (sf_net_send(12345, "x", 1, 0) != -SF_EBADF) bad |= 1 << 5;
    if (sf_net_recv(l, 0, 5, 0) != -SF_EFAULT) bad |= 1 << 6;
    if (sf_net_recv(l, (uint8_t[4]){0}, 4, 0) != -SF_EBADF) bad |= 1 << 7;
    sf_ticket_t t;
    if (sf_request_ticket(1, &t) < 1) return bad | 1 << 8;
    int64_t id = sf_clone(&t);
    if (id > 0) {
        /* The parent's sockets are not the clone's. */
        int64_t r = sf_net_accept(l, 0);
        int64_t status = r == -SF_ENETRESET ? clone_side() : 9;
        sf_exit((int32_t)status, 0, 0);
    }
    if (id < 0) return bad | 1 << 9;
    int64_t s = sf_net_accept(l, 20000);
    if (s < 0) return bad | 1 << 10;
    static uint8_t got[MSG + 8];
    if (recv_all(s, got, sizeof got) != 0) bad |= 1 << 11;
    uint64_t sum = fnv64(got, MSG), want = 0;
    for (int i = 0; i < 8; i++)
        want |= (uint64_t)got[MSG + i] << (8 * i);
    if (sum != want || got[10] != (uint8_t)(10 * 7 + 3)) bad |= 1 << 12;
    if (send_all(s, got + MSG, 8) != 0) bad |= 1 << 13;
    uint8_t d[16];
    uint32_t from = 0;
    uint16_t port = 0;
    if (sf_udp_recv_from(u, d, sizeof d, &from, &port, 20000) != 8 || from != (uint32_t)sf_child_addr(1) || port == 0)
        bad |= 1 << 14;
    int32_t status = -1;
    if (sf_join(&t, &status, 1) != 1 || status != 0) bad |= 1 << 15;
    if (sf_net_close(s) != 0 || sf_net_close(l) != 0 || sf_udp_close(u) != 0) bad |= 1 << 16;
    if (sf_net_close(l) != -SF_EBADF) bad |= 1 << 17;
    return bad;
}
