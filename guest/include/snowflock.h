/* The SnowFlock clone API for C guests (implemented by the sf-guest
 * runtime, src/capi.rs). Every call returns a negative error code on
 * failure: -SF_ENOENT no such ticket (or already joined), -SF_EAGAIN no
 * clones available, -SF_EBUSY ticket already used, -SF_E2BIG result over
 * the ticket's sf_result_cap, -SF_EFAULT bad pointer (outside RAM, or a page this
 * program could not access that way itself, e.g. the kernel's or a
 * read-only page as a buffer the host writes), -SF_EINVAL bad argument,
 * -SF_EPERM not allowed from this privilege level. */
#ifndef SNOWFLOCK_H
#define SNOWFLOCK_H
#include <stddef.h>
#include <stdint.h>

/* Every clone may hand back SF_RESULT_FLOOR bytes; sf_result_cap says how
 * many a ticket's clones may (up to SF_RESULTS_HELD_MAX shared by the
 * clones of this VM's unjoined tickets). */
#define SF_RESULT_FLOOR (64 * 1024)
#define SF_RESULTS_HELD_MAX (256 * 1024 * 1024)
#define SF_EPERM 1
#define SF_ENOENT 2
#define SF_EIO 5
#define SF_E2BIG 7
#define SF_EAGAIN 11
#define SF_EFAULT 14
#define SF_EBUSY 16
#define SF_EINVAL 22

typedef struct { uint32_t id; uint32_t granted; } sf_ticket_t;

/* How a clone ended (sf_clone_t.status). */
#define SF_CLONE_EXITED 0    /* it called sf_exit; code is its status */
#define SF_CLONE_PANICKED 1  /* its guest panicked; code is 101 */
#define SF_CLONE_CRASHED 2   /* CPU exception; code is the vector (14 for
                                a page fault), or -1 for other fatal ends */
#define SF_CLONE_KILLED 3    /* sf_kill ended it */
#define SF_CLONE_TIMED_OUT 4 /* it ran past the run's timeout; code 124 */
#define SF_CLONE_LOST 5      /* its host process died without reporting */

/* One clone as sf_join_clones reports it. Set `result` and `result_cap`
 * before the call (NULL/0: results not wanted); the rest is filled in. */
typedef struct {
    uint32_t id;         /* out: the clone's ID, 1..granted */
    uint32_t status;     /* out: SF_CLONE_* */
    int32_t code;        /* out: see SF_CLONE_*; only with SF_CLONE_EXITED
                            is it an exit status, so exit(-1) and a crash
                            are told apart by status */
    uint32_t result_len; /* out: bytes the clone handed to sf_exit (all of
                            them: more than result_cap means truncated) */
    void *result;        /* in: where to copy the clone's result */
    size_t result_cap;   /* in: room at result */
} sf_clone_t;

/* Reserve up to n clones; returns the number granted (>= 1). */
int64_t sf_request_ticket(uint64_t n, sf_ticket_t *out);
/* Fork the VM: 0 in the parent, 1..granted in each clone. */
int64_t sf_clone(const sf_ticket_t *t);
/* End this clone, handing result[0..len) to the parent; does not return.
 * (In a VM that is not a clone it ends the VM with `status`.) Returns only
 * when refused, and the clone keeps running: -SF_E2BIG if len is over
 * its ticket's sf_result_cap, -SF_EFAULT if result is NULL with len > 0 or is not
 * readable memory. With len == 0, result may be NULL. */
int64_t sf_exit(int32_t status, const void *result, size_t len);
/* Wait for all clones; statuses[i] = exit code of clone i+1, or -1 if it
 * did not exit cleanly (so -1 is ambiguous: use sf_join_clones to tell a
 * clean exit(-1) from a crash). Returns the number of clones. */
int64_t sf_join(const sf_ticket_t *t, int32_t *statuses, size_t cap);
/* Wait for all clones; fill clones[i] for clone i+1 (at most cap entries),
 * copying each clone's result into its entry's buffer. Returns the number
 * of clones. The ticket is spent afterwards, as with sf_join. */
int64_t sf_join_clones(const sf_ticket_t *t, sf_clone_t *clones, size_t cap);
/* The most result bytes each clone of the ticket may hand to sf_exit
 * (>= SF_RESULT_FLOOR, fixed when the ticket was granted), or -SF_ENOENT. */
int64_t sf_result_cap(const sf_ticket_t *t);
/* Kill all running clones of the ticket; returns how many. */
int64_t sf_kill(const sf_ticket_t *t);
/* Promise that the whole pages inside [p, p+len) will be fully written
 * before they are read: in the clones of the next sf_clone (and here after
 * it) their old contents are undefined (zeros or the old bytes), and a
 * clone on another host gets them as local zero pages instead of fetching
 * them. Partial pages at either end keep their bytes. Lasts for one clone
 * call. Returns 1, or 0 if the hint was dropped (32 already pending). */
int sf_will_overwrite(const void *p, size_t len);

/* Inputs: the files the host gave with --input NAME=PATH, read-only.
 * sf_input returns the bytes of input `name` and sets *len (NULL and 0 when
 * there is none); they stay valid for the whole run, in clones too. */
const void *sf_input(const char *name, size_t *len);
/* How many inputs; sf_input_name(i, &n) is input i's name (n bytes, not
 * NUL-terminated), NULL past the last. */
size_t sf_input_count(void);
const char *sf_input_name(size_t i, size_t *name_len);
/* This VM will soon read bytes [offset, offset+len) of input `name`: a
 * clone on another host streams those pages ahead of its faults (a no-op
 * on the parent's host). Returns the pages announced, -SF_ENOENT for no
 * such input, -SF_EINVAL for an empty range or one past its end. */
int64_t sf_input_will_read(const char *name, size_t offset, size_t len);

/* Outputs: files under the host's --output DIR, in DIR/<vm-id>/NAME
 * (vm-id 0 for the root VM, the clone's ID path such as 2 or 2.3 for a
 * clone). NAME: 1..SF_NAME_MAX letters, digits, '.', '_', '-', not
 * starting with '.'. Any size (sent in chunks). Return 0, or -SF_EINVAL
 * bad name, -SF_EPERM no output directory, -SF_E2BIG over the VM's
 * output cap (what was written before stays), -SF_ENOENT append to a name
 * this VM has not written, -SF_EBUSY the file was in DIR before this run
 * (never overwritten), -SF_EFAULT unreadable buffer, -SF_EIO the host
 * could not write. sf_output_write creates or replaces; sf_output_append
 * adds to a file this VM created. */
#define SF_NAME_MAX 64
int sf_output_write(const char *name, const void *buf, size_t len);
int sf_output_append(const char *name, const void *buf, size_t len);
/* Networking over the VM's NIC (a clone family shares one subnet; member
 * m, the family's first VM being 0, has address sf_addr_of(m); in a flat
 * family clone j is member j). Addresses are IPv4 in host byte order
 * (10.1.0.2 is 0x0a010002); sockets are numbers >= 0; timeout_ms < 0 waits
 * forever. Blocking calls poll the NIC and sleep in the host when idle.
 * After sf_clone, a clone has a new address and every socket open at the
 * clone call fails there with -SF_ENETRESET (close it, open a new one).
 * Errors: -SF_ENETDOWN no NIC, -SF_EINVAL bad port/address/member,
 * -SF_EADDRINUSE port taken, -SF_ECONNREFUSED, -SF_ECONNRESET (also: the
 * peer closed before the data was exchanged), -SF_ETIMEDOUT, -SF_EBADF no
 * such socket or wrong kind, -SF_EFAULT NULL buffer with len > 0. */
#define SF_EBADF 9
#define SF_EADDRINUSE 98
#define SF_ENETDOWN 100
#define SF_ENETRESET 102
#define SF_ECONNRESET 104
#define SF_ETIMEDOUT 110
#define SF_ECONNREFUSED 111

/* This VM's address (changes at a clone), or -SF_ENETDOWN. */
int64_t sf_my_addr(void);
/* Family member `member`'s address (the family's first VM is 0). */
int64_t sf_addr_of(uint32_t member);
/* This VM's parent; clone j of the clone call that made this VM (its
 * sibling); clone k of this VM's latest clone call (-SF_EINVAL: none). */
int64_t sf_parent_addr(void);
int64_t sf_sibling_addr(uint32_t j);
int64_t sf_child_addr(uint32_t k);
/* TCP: listen on port (backlog 8); accept returns a new socket. */
int64_t sf_net_listen(uint32_t port);
int64_t sf_net_accept(int64_t listener, int64_t timeout_ms);
int64_t sf_net_connect(uint32_t ip, uint32_t port, int64_t timeout_ms);
/* Sends some of buf[0..len): returns the bytes taken, >= 1 when len > 0.
 * They leave at the VM's next exit to the host (a blocking call, any call
 * into the host, sf_net_poll), so a request and the wait for its answer
 * cost one exit; call sf_net_poll before computing for long. */
int64_t sf_net_send(int64_t s, const void *buf, size_t len, int64_t timeout_ms);
/* Moves frames and timers without blocking, and sends what is queued. */
void sf_net_poll(void);
/* Receives up to len bytes, at least 1; 0 when the peer closed its side. */
int64_t sf_net_recv(int64_t s, void *buf, size_t len, int64_t timeout_ms);
/* Closes any socket; a TCP stream waits (at most 5 s) until the peer has
 * all data sent, then sends FIN. */
int64_t sf_net_close(int64_t s);
/* UDP: port 0 binds a free port. Datagrams of at most 1422 bytes. */
int64_t sf_udp_bind(uint32_t port);
int64_t sf_udp_send_to(int64_t s, const void *buf, size_t len, uint32_t ip,
                       uint32_t port, int64_t timeout_ms);
/* Receives one datagram (cut to len); sender into *ip, *port if not NULL. */
int64_t sf_udp_recv_from(int64_t s, void *buf, size_t len, uint32_t *ip,
                         uint16_t *port, int64_t timeout_ms);
int64_t sf_udp_close(int64_t s);

#endif
