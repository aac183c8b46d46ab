/* redis_client.c - Redis Streams peer benchmark over raw RESP (no hiredis).
 *
 *   redis_client HOST PORT FILE produce KEY [BATCH [WINDOW]]
 *       XADD KEY * v <line> for every line of FILE, pipelined: BATCH
 *       commands per write (default 1000), at most WINDOW batches awaiting
 *       replies (default 8). A writer thread sends, the main thread counts
 *       replies; any error reply fails the run.
 *   redis_client HOST PORT FILE consume KEY [COUNT]
 *       XRANGE KEY - + COUNT n, then XRANGE KEY (last + COUNT n, ... until
 *       every line of FILE came back (default COUNT 10000). Each entry is
 *       parsed (id, field, value) and its value length checked against FILE.
 *
 * Prints one line: "records=N bytes=B seconds=S" (B = value bytes; S from
 * the first byte sent to the last reply parsed). Exit 0 only if every
 * record was acknowledged or read back; otherwise a message on stderr and
 * exit 1 (run.sh then reports the row as n.a.).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>

#include "bench_util.h"

struct rbuf {
	char *p;
	size_t pos, len, cap;
};

/* Reads more bytes from fd into b (compacting first). 0, or -1 on EOF/error. */
static int rbuf_fill(int fd, struct rbuf *b)
{
	ssize_t r;

	if (b->pos > 0 && b->pos == b->len) {
		b->pos = b->len = 0;
	} else if (b->pos > b->cap / 2) {
		memmove(b->p, b->p + b->pos, b->len - b->pos);
		b->len -= b->pos;
		b->pos = 0;
	}
	if (b->len == b->cap) {
		char *n = realloc(b->p, b->cap * 2);

		if (n == NULL)
			return -1;
		b->p = n;
		b->cap *= 2;
	}
	do
		r = read(fd, b->p + b->len, b->cap - b->len);
	while (r < 0 && errno == EINTR);
	if (r <= 0) {
		fprintf(stderr, "redis_client: connection %s\n", r == 0 ? "closed" : strerror(errno));
		return -1;
	}
	b->len += (size_t)r;
	return 0;
}

/* Parses "<type><integer>\r\n" at p. Returns bytes used, 0 if incomplete,
 * -1 if the type differs (the line is then an error or unexpected reply). */
static long parse_hdr(const char *p, const char *end, char type, long *val)
{
	const char *nl;

	if (p >= end)
		return 0;
	nl = memchr(p, '\n', (size_t)(end - p));
	if (nl == NULL)
		return 0;
	if (*p != type) {
		fprintf(stderr, "redis_client: unexpected reply: %.*s\n", (int)(nl - p), p);
		return -1;
	}
	*val = strtol(p + 1, NULL, 10);
	return nl + 1 - p;
}

/* Parses a bulk string. Returns bytes used, 0 if incomplete, -1 on error. */
static long parse_bulk(const char *p, const char *end, const char **s, long *len)
{
	long h = parse_hdr(p, end, '$', len);

	if (h <= 0)
		return h;
	if (*len < 0 || end - (p + h) < *len + 2)
		return *len < 0 ? -1 : 0;
	*s = p + h;
	return h + *len + 2;
}

/* ---- produce ------------------------------------------------------------ */

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t acked_batches;
	int failed;
} P = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };

struct writer_args {
	int fd;
	const struct bench_lines *l;
	const char *key;
	size_t batch, window;
};

static void *produce_writer(void *arg)
{
	struct writer_args *a = arg;
	size_t cap = a->batch * 256 + 1024, nb = 0, klen = strlen(a->key);
	char *out = malloc(cap);

	if (out == NULL)
		goto fail;
	for (size_t i = 0; i < a->l->n; nb++) {
		size_t used = 0;

		for (size_t k = 0; k < a->batch && i < a->l->n; k++, i++) {
			size_t len;
			const char *v = bench_line(a->l, i, &len);

			if (used + len + klen + 128 > cap) {
				char *n = realloc(out, cap * 2 + len);

				if (n == NULL)
					goto fail;
				out = n;
				cap = cap * 2 + len;
			}
			used += (size_t)sprintf(out + used,
						"*5\r\n$4\r\nXADD\r\n$%zu\r\n%s\r\n$1\r\n*\r\n$1\r\nv\r\n$%zu\r\n",
						klen, a->key, len);
			memcpy(out + used, v, len);
			used += len;
			out[used++] = '\r';
			out[used++] = '\n';
		}
		pthread_mutex_lock(&P.mu);
		while (nb >= P.acked_batches + a->window && !P.failed)
			pthread_cond_wait(&P.cv, &P.mu);
		pthread_mutex_unlock(&P.mu);
		if (P.failed || bench_write_all(a->fd, out, used) != 0)
			goto fail;
	}
	free(out);
	return NULL;
fail:
	free(out);
	pthread_mutex_lock(&P.mu);
	P.failed = 1;
	pthread_mutex_unlock(&P.mu);
	shutdown(a->fd, SHUT_RDWR);
	return NULL;
}

static int produce(int fd, const struct bench_lines *l, const char *key, size_t batch,
		   size_t window, size_t *acked)
{
	struct writer_args a = { fd, l, key, batch, window };
	struct rbuf b = { malloc(1 << 20), 0, 0, 1 << 20 };
	pthread_t th;
	int rc = 0;

	if (b.p == NULL || pthread_create(&th, NULL, produce_writer, &a) != 0)
		return -1;
	while (*acked < l->n) {
		const char *s;
		long len, used;

		used = parse_bulk(b.p + b.pos, b.p + b.len, &s, &len);
		if (used < 0) {
			rc = -1;
			break;
		}
		if (used == 0) {
			if (rbuf_fill(fd, &b) != 0) {
				rc = -1;
				break;
			}
			continue;
		}
		b.pos += (size_t)used;
		if (++*acked % batch == 0 || *acked == l->n) {
			pthread_mutex_lock(&P.mu);
			P.acked_batches++;
			pthread_cond_signal(&P.cv);
			pthread_mutex_unlock(&P.mu);
		}
	}
	if (rc != 0) {
		pthread_mutex_lock(&P.mu);
		P.failed = 1;
		pthread_cond_signal(&P.cv);
		pthread_mutex_unlock(&P.mu);
		shutdown(fd, SHUT_RDWR);
	}
	pthread_join(th, NULL);
	free(b.p);
	return rc == 0 && !P.failed ? 0 : -1;
}

/* ---- consume ------------------------------------------------------------ */

static int consume(int fd, const struct bench_lines *l, const char *key, long count,
		   size_t *got, size_t *bytes)
{
	struct rbuf b = { malloc(1 << 20), 0, 0, 1 << 20 };
	char last[64] = "-", cmd[512];
	int rc = -1;

	if (b.p == NULL)
		return -1;
	while (*got < l->n) {
		char start[80];
		long n, used;
		int clen;

		if (strcmp(last, "-") == 0)
			snprintf(start, sizeof(start), "-");
		else
			snprintf(start, sizeof(start), "(%s", last);
		clen = snprintf(cmd, sizeof(cmd),
				"*6\r\n$6\r\nXRANGE\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n$1\r\n+\r\n$5\r\nCOUNT\r\n$%d\r\n%ld\r\n",
				strlen(key), key, strlen(start), start, snprintf(NULL, 0, "%ld", count), count);
		if (bench_write_all(fd, cmd, (size_t)clen) != 0)
			goto out;
		while ((used = parse_hdr(b.p + b.pos, b.p + b.len, '*', &n)) == 0)
			if (rbuf_fill(fd, &b) != 0)
				goto out;
		if (used < 0)
			goto out;
		b.pos += (size_t)used;
		if (n == 0) {
			fprintf(stderr, "redis_client: stream ended after %zu of %zu records\n", *got, l->n);
			goto out;
		}
		for (long e = 0; e < n; e++) {
			/* entry: *2 $id *2 $field $value */
			for (;;) {
				const char *p = b.p + b.pos, *end = b.p + b.len, *id, *f, *v;
				long h1 = 0, h2 = 0, u1 = 0, u2 = 0, u3 = 0, two, idlen, flen, vlen;
				size_t want;

				if ((h1 = parse_hdr(p, end, '*', &two)) > 0 &&
				    (u1 = parse_bulk(p + h1, end, &id, &idlen)) > 0 &&
				    (h2 = parse_hdr(p + h1 + u1, end, '*', &two)) > 0 &&
				    (u2 = parse_bulk(p + h1 + u1 + h2, end, &f, &flen)) > 0 &&
				    (u3 = parse_bulk(p + h1 + u1 + h2 + u2, end, &v, &vlen)) > 0) {
					bench_line(l, *got, &want);
					if ((size_t)vlen != want || idlen >= (long)sizeof(last)) {
						fprintf(stderr, "redis_client: record %zu: %ld bytes, want %zu\n",
							*got, vlen, want);
						goto out;
					}
					memcpy(last, id, (size_t)idlen);
					last[idlen] = '\0';
					*bytes += (size_t)vlen;
					++*got;
					b.pos += (size_t)(h1 + u1 + h2 + u2 + u3);
					break;
				}
				if (h1 < 0 || u1 < 0 || h2 < 0 || u2 < 0 || u3 < 0)
					goto out;
				if (rbuf_fill(fd, &b) != 0)
					goto out;
			}
		}
	}
	rc = 0;
out:
	free(b.p);
	return rc;
}

int main(int argc, char **argv)
{
	struct bench_lines l;
	size_t done = 0, bytes = 0;
	uint64_t t0, t1;
	int fd, rc;

	if (argc < 6 || (strcmp(argv[4], "produce") != 0 && strcmp(argv[4], "consume") != 0)) {
		fprintf(stderr, "usage: redis_client HOST PORT FILE produce|consume KEY [BATCH [WINDOW]]\n");
		return 2;
	}
	rc = bench_load_lines(argv[3], &l);
	if (rc != 0) {
		fprintf(stderr, "redis_client: %s: %s\n", argv[3], strerror(-rc));
		return 1;
	}
	fd = bench_connect(argv[1], atoi(argv[2]));
	if (fd < 0) {
		fprintf(stderr, "redis_client: connect %s:%s: %s\n", argv[1], argv[2], strerror(-fd));
		return 1;
	}
	t0 = bench_now_ns();
	if (strcmp(argv[4], "produce") == 0) {
		size_t batch = argc > 6 ? (size_t)atol(argv[6]) : 1000;
		size_t window = argc > 7 ? (size_t)atol(argv[7]) : 8;

		rc = produce(fd, &l, argv[5], batch ? batch : 1, window ? window : 1, &done);
		bytes = l.bytes;
	} else {
		rc = consume(fd, &l, argv[5], argc > 6 ? atol(argv[6]) : 10000, &done, &bytes);
	}
	t1 = bench_now_ns();
	close(fd);
	if (rc != 0 || done != l.n) {
		fprintf(stderr, "redis_client: %s: %zu of %zu records\n", argv[4], done, l.n);
		return 1;
	}
	printf("records=%zu bytes=%zu seconds=%.6f\n", done, bytes, (double)(t1 - t0) / 1e9);
	free(l.buf);
	free(l.off);
	return 0;
}
