/*
 * A miniature of net/xdp/xsk.c for the probe resolver's unit tests: a receive
 * function that calls an inlined reserve helper (like __xsk_rcv_zc calling
 * xskq_prod_reserve_desc), a struct with pointer members (xs->pool->fq,
 * xs->dev) and a flush helper inlined into two callers (like xsk_flush).
 * Built by the tests with gcc -g -O2; never run.
 */
struct pool { long pad; void *fq; };
struct sock { int pad[3]; struct pool *pool; void *dev; unsigned long *ring; unsigned int head; };

volatile unsigned long sink;

__attribute__((noinline)) void ext(unsigned long v) { sink = v; }

static inline __attribute__((always_inline)) int reserve_desc(struct sock *q, unsigned long addr, unsigned int len)
{
	if (q->head >= 64)
		return -1;
	q->ring[q->head++] = addr | ((unsigned long)len << 48);
	return 0;
}

__attribute__((noinline)) int rcv(struct sock *xs, unsigned long addr, unsigned int len, int unused)
{
	int err;
	int gone = 7; /* optimised out: no location anywhere */

	(void)gone;
	sink = addr;
	err = reserve_desc(xs, addr, len); /* CALL-LINE */
	if (err)
		return err;
	sink = (unsigned long)xs->dev;
	return 0;
}

static inline __attribute__((always_inline)) void flush(struct sock *xs)
{
	sink = xs->head;
	ext((unsigned long)xs->pool);
}

__attribute__((noinline)) void map_flush(struct sock **list, int n)
{
	for (int i = 0; i < n; i++)
		flush(list[i]);
}

__attribute__((noinline)) int generic_rcv(struct sock *xs, unsigned long addr)
{
	int err = rcv(xs, addr, 60, 0);

	if (!err)
		flush(xs);
	return err;
}

int main(void)
{
	static unsigned long ring[64];
	static struct pool p;
	struct sock s = { .pool = &p, .ring = ring };
	struct sock *l[1] = { &s };

	generic_rcv(&s, 0x1000);
	map_flush(l, 1);
	return 0;
}
