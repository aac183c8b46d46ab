/* nats_client.c - NATS JetStream peer benchmark over the NATS text protocol.
 *
 *   nats_client HOST PORT FILE produce STREAM [WINDOW]
 *       Creates STREAM (file storage, one subject "<STREAM>.in") through
 *       $JS.API.STREAM.CREATE.<STREAM>, then publishes every line of FILE
 *       to it with a reply inbox, so each message is acknowledged by
 *       JetStream (a PubAck) once stored. At most WINDOW messages await
 *       their ack (default 8000). Any ack carrying "error" fails the run.
 *   nats_client HOST PORT FILE consume STREAM [BATCH]
 *       Creates a new durable pull consumer "bench<pid>" (deliver all, ack
 *       all) through $JS.API.CONSUMER.DURABLE.CREATE and fetches with
 *       $JS.API.CONSUMER.MSG.NEXT requests of BATCH messages (default
 *       1000, two requests outstanding), acknowledging the last message of
 *       each batch (ack all), until every line of FILE came back; each
 *       message's length is checked against FILE.
 *
 * Protocol used (https://docs.nats.io/reference/reference-protocols/nats-protocol):
 *   server: INFO {...}\r\n  PING\r\n  +OK  -ERR '...'\r\n
 *           MSG <subject> <sid> [reply] <#bytes>\r\n<payload>\r\n
 *           HMSG <subject> <sid> [reply] <#hdr> <#total>\r\n<hdr+payload>\r\n
 *   client: CONNECT {...}\r\n  PING  PONG  SUB <subject> <sid>\r\n
 *           PUB <subject> [reply] <#bytes>\r\n<payload>\r\n
 *
 * Prints "records=N bytes=B seconds=S" (S from the first publish or fetch
 * to the last ack or message); exit 1 with a message on any failure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>

#include "bench_util.h"

struct conn {
	int fd;
	char *p;
	size_t pos, len, cap;
	pthread_mutex_t wmu; /* serialises writes: the reader answers PINGs */
};

struct msg {
	const char *subject, *reply; /* not NUL-terminated: lengths below */
	size_t subject_len, reply_len;
	const char *hdr, *data;      /* hdr is NULL for MSG */
	size_t hdr_len, data_len;
};

static int conn_send(struct conn *c, const void *buf, size_t n)
{
	int rc;

	pthread_mutex_lock(&c->wmu);
	rc = bench_write_all(c->fd, buf, n);
	pthread_mutex_unlock(&c->wmu);
	return rc;
}

static int conn_fill(struct conn *c)
{
	ssize_t r;

	if (c->pos == c->len) {
		c->pos = c->len = 0;
	} else if (c->pos > c->cap / 2) {
		memmove(c->p, c->p + c->pos, c->len - c->pos);
		c->len -= c->pos;
		c->pos = 0;
	}
	if (c->len == c->cap) {
		char *n = realloc(c->p, c->cap * 2);

		if (n == NULL)
			return -1;
		c->p = n;
		c->cap *= 2;
	}
	do
		r = read(c->fd, c->p + c->len, c->cap - c->len);
	while (r < 0 && errno == EINTR);
	if (r <= 0) {
		fprintf(stderr, "nats_client: connection %s\n", r == 0 ? "closed" : strerror(errno));
		return -1;
	}
	c->len += (size_t)r;
	return 0;
}

/* Splits a protocol line into at most 6 space-separated tokens. */
static int tokens(const char *p, const char *end, const char *tok[6], size_t len[6])
{
	int n = 0;

	while (p < end && n < 6) {
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		if (p >= end)
			break;
		tok[n] = p;
		while (p < end && *p != ' ' && *p != '\t')
			p++;
		len[n] = (size_t)(p - tok[n]);
		n++;
	}
	return n;
}

/* Reads the next MSG/HMSG into *m (pointers valid until the next call),
 * answering PINGs and skipping +OK/PONG/INFO. 0, or -1 on -ERR or EOF. */
static int next_msg(struct conn *c, struct msg *m)
{
	for (;;) {
		char *p = c->p + c->pos, *end = c->p + c->len, *nl;
		const char *tok[6];
		size_t tl[6], line, need;
		int n;

		nl = memchr(p, '\n', (size_t)(end - p));
		if (nl == NULL) {
			if (conn_fill(c) != 0)
				return -1;
			continue;
		}
		line = (size_t)(nl + 1 - p);
		n = tokens(p, nl > p && nl[-1] == '\r' ? nl - 1 : nl, tok, tl);
		if (n >= 1 && tl[0] == 3 && memcmp(tok[0], "MSG", 3) == 0 && (n == 4 || n == 5)) {
			size_t bytes = strtoul(tok[n - 1], NULL, 10);

			need = line + bytes + 2;
			if ((size_t)(end - p) < need) {
				if (conn_fill(c) != 0)
					return -1;
				continue;
			}
			m->subject = tok[0 + 1];
			m->subject_len = tl[1];
			m->reply = n == 5 ? tok[3] : NULL;
			m->reply_len = n == 5 ? tl[3] : 0;
			m->hdr = NULL;
			m->hdr_len = 0;
			m->data = p + line;
			m->data_len = bytes;
			c->pos += need;
			return 0;
		}
		if (n >= 1 && tl[0] == 4 && memcmp(tok[0], "HMSG", 4) == 0 && (n == 5 || n == 6)) {
			size_t hbytes = strtoul(tok[n - 2], NULL, 10);
			size_t total = strtoul(tok[n - 1], NULL, 10);

			need = line + total + 2;
			if ((size_t)(end - p) < need) {
				if (conn_fill(c) != 0)
					return -1;
				continue;
			}
			m->subject = tok[1];
			m->subject_len = tl[1];
			m->reply = n == 6 ? tok[3] : NULL;
			m->reply_len = n == 6 ? tl[3] : 0;
			m->hdr = p + line;
			m->hdr_len = hbytes;
			m->data = p + line + hbytes;
			m->data_len = total - hbytes;
			c->pos += need;
			return 0;
		}
		c->pos += line;
		if (n >= 1 && tl[0] == 4 && memcmp(tok[0], "PING", 4) == 0) {
			if (conn_send(c, "PONG\r\n", 6) != 0)
				return -1;
		} else if (n >= 1 && tl[0] == 4 && memcmp(tok[0], "-ERR", 4) == 0) {
			fprintf(stderr, "nats_client: server: %.*s\n", (int)(nl - p), p);
			return -1;
		}
	}
}

static int contains(const char *p, size_t n, const char *needle)
{
	return memmem(p, n, needle, strlen(needle)) != NULL;
}

/* Sends a JetStream API request and waits for its JSON reply on the inbox;
 * fails if the reply carries an "error". */
static int js_request(struct conn *c, const char *subject, const char *json)
{
	char head[512];
	struct msg m;
	int n = snprintf(head, sizeof(head), "PUB %s _INBOX.bench.api %zu\r\n", subject, strlen(json));

	if (conn_send(c, head, (size_t)n) != 0 || conn_send(c, json, strlen(json)) != 0 ||
	    conn_send(c, "\r\n", 2) != 0)
		return -1;
	for (;;) {
		if (next_msg(c, &m) != 0)
			return -1;
		if (m.subject_len == 16 && memcmp(m.subject, "_INBOX.bench.api", 16) == 0)
			break;
	}
	if (contains(m.data, m.data_len, "\"error\"")) {
		fprintf(stderr, "nats_client: %s: %.*s\n", subject, (int)m.data_len, m.data);
		return -1;
	}
	return 0;
}

static int handshake(struct conn *c)
{
	static const char hello[] =
		"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,"
		"\"no_responders\":true,\"lang\":\"c\",\"version\":\"topicfs-bench\"}\r\n"
		"SUB _INBOX.bench.> 1\r\nPING\r\n";
	char *nl;

	if (conn_send(c, hello, sizeof(hello) - 1) != 0)
		return -1;
	for (;;) { /* INFO ..., then PONG */
		while ((nl = memchr(c->p + c->pos, '\n', c->len - c->pos)) == NULL)
			if (conn_fill(c) != 0)
				return -1;
		if (strncmp(c->p + c->pos, "-ERR", 4) == 0) {
			fprintf(stderr, "nats_client: %.*s\n", (int)(nl - (c->p + c->pos)), c->p + c->pos);
			return -1;
		}
		if (strncmp(c->p + c->pos, "PONG", 4) == 0) {
			c->pos = (size_t)(nl + 1 - c->p);
			return 0;
		}
		c->pos = (size_t)(nl + 1 - c->p);
	}
}

/* ---- produce ------------------------------------------------------------ */

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t acked;
	int failed;
} P = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };

struct writer_args {
	struct conn *c;
	const struct bench_lines *l;
	const char *stream;
	size_t window;
};

static void *produce_writer(void *arg)
{
	struct writer_args *a = arg;
	size_t cap = 1 << 20, used = 0;
	char *out = malloc(cap);
	char subj[300];

	snprintf(subj, sizeof(subj), "%s.in", a->stream);
	if (out == NULL)
		goto fail;
	for (size_t i = 0; i < a->l->n; i++) {
		size_t len;
		const char *v = bench_line(a->l, i, &len);

		if (used + len + 400 > cap) {
			if (conn_send(a->c, out, used) != 0)
				goto fail;
			used = 0;
		}
		if (len + 400 > cap) {
			fprintf(stderr, "nats_client: line %zu too long\n", i);
			goto fail;
		}
		/* Flush and wait when the window is full. */
		if (i >= __atomic_load_n(&P.acked, __ATOMIC_ACQUIRE) + a->window) {
			if (used > 0 && conn_send(a->c, out, used) != 0)
				goto fail;
			used = 0;
			pthread_mutex_lock(&P.mu);
			while (i >= P.acked + a->window && !P.failed)
				pthread_cond_wait(&P.cv, &P.mu);
			pthread_mutex_unlock(&P.mu);
			if (P.failed)
				goto fail;
		}
		used += (size_t)sprintf(out + used, "PUB %s _INBOX.bench.ack %zu\r\n", subj, len);
		memcpy(out + used, v, len);
		used += len;
		out[used++] = '\r';
		out[used++] = '\n';
		/* Send in chunks of about 1000 messages, like the Redis client. */
		if ((i + 1) % 1000 == 0) {
			if (conn_send(a->c, out, used) != 0)
				goto fail;
			used = 0;
		}
	}
	if (used > 0 && conn_send(a->c, out, used) != 0)
		goto fail;
	free(out);
	return NULL;
fail:
	free(out);
	pthread_mutex_lock(&P.mu);
	P.failed = 1;
	pthread_mutex_unlock(&P.mu);
	shutdown(a->c->fd, SHUT_RDWR);
	return NULL;
}

static int produce(struct conn *c, const struct bench_lines *l, const char *stream,
		   size_t window, size_t *acked, uint64_t *t0)
{
	struct writer_args a = { c, l, stream, window };
	char subj[300], json[600];
	pthread_t th;
	int rc = 0;

	snprintf(subj, sizeof(subj), "$JS.API.STREAM.CREATE.%s", stream);
	snprintf(json, sizeof(json),
		 "{\"name\":\"%s\",\"subjects\":[\"%s.in\"],\"storage\":\"file\","
		 "\"retention\":\"limits\",\"discard\":\"old\",\"num_replicas\":1}",
		 stream, stream);
	if (js_request(c, subj, json) != 0)
		return -1;
	*t0 = bench_now_ns();
	if (pthread_create(&th, NULL, produce_writer, &a) != 0)
		return -1;
	while (*acked < l->n) {
		struct msg m;

		if (next_msg(c, &m) != 0) {
			rc = -1;
			break;
		}
		if (contains(m.data, m.data_len, "error") || m.hdr != NULL) {
			fprintf(stderr, "nats_client: publish %zu: %.*s\n", *acked,
				(int)(m.data_len + m.hdr_len), m.hdr ? m.hdr : m.data);
			rc = -1;
			break;
		}
		pthread_mutex_lock(&P.mu);
		__atomic_store_n(&P.acked, ++*acked, __ATOMIC_RELEASE);
		pthread_cond_signal(&P.cv);
		pthread_mutex_unlock(&P.mu);
	}
	if (rc != 0) {
		pthread_mutex_lock(&P.mu);
		P.failed = 1;
		pthread_cond_signal(&P.cv);
		pthread_mutex_unlock(&P.mu);
		shutdown(c->fd, SHUT_RDWR);
	}
	pthread_join(th, NULL);
	return rc == 0 && !P.failed ? 0 : -1;
}

/* ---- consume ------------------------------------------------------------ */

static char consumer[32]; /* durable name, unique per run: "bench<pid>" */

static int pull(struct conn *c, const char *stream, size_t batch)
{
	char buf[600], body[128];
	int bn = snprintf(body, sizeof(body), "{\"batch\":%zu,\"expires\":10000000000}", batch);
	int n = snprintf(buf, sizeof(buf),
			 "PUB $JS.API.CONSUMER.MSG.NEXT.%s.%s _INBOX.bench.pull %d\r\n%s\r\n",
			 stream, consumer, bn, body);

	return conn_send(c, buf, (size_t)n);
}

static int consume(struct conn *c, const struct bench_lines *l, const char *stream,
		   size_t batch, size_t *got, size_t *bytes, uint64_t *t0)
{
	char subj[300], json[600], ack[600];
	size_t requested = 0, in_batch = 0;

	snprintf(consumer, sizeof(consumer), "bench%ld", (long)getpid());
	snprintf(subj, sizeof(subj), "$JS.API.CONSUMER.DURABLE.CREATE.%s.%s", stream, consumer);
	snprintf(json, sizeof(json),
		 "{\"stream_name\":\"%s\",\"config\":{\"durable_name\":\"%s\","
		 "\"deliver_policy\":\"all\",\"ack_policy\":\"all\",\"max_ack_pending\":-1}}",
		 stream, consumer);
	if (js_request(c, subj, json) != 0)
		return -1;
	*t0 = bench_now_ns();
	for (int k = 0; k < 2 && requested < l->n; k++) {
		if (pull(c, stream, batch) != 0)
			return -1;
		requested += batch;
	}
	while (*got < l->n) {
		struct msg m;
		size_t want;

		if (next_msg(c, &m) != 0)
			return -1;
		if (m.hdr != NULL) { /* status: 404 no messages, 408 timeout, ... */
			if (contains(m.hdr, m.hdr_len, " 408") || contains(m.hdr, m.hdr_len, " 404")) {
				fprintf(stderr, "nats_client: fetch ended after %zu of %zu: %.*s\n", *got,
					l->n, (int)m.hdr_len, m.hdr);
				return -1;
			}
			continue;
		}
		if (m.reply == NULL || m.reply_len < 8 || memcmp(m.reply, "$JS.ACK.", 8) != 0)
			continue; /* not a stream message */
		bench_line(l, *got, &want);
		if (m.data_len != want) {
			fprintf(stderr, "nats_client: record %zu: %zu bytes, want %zu\n", *got,
				m.data_len, want);
			return -1;
		}
		*bytes += m.data_len;
		++*got;
		if (++in_batch == batch || *got == l->n) {
			/* Ack all up to here, then ask for one more batch. */
			int n = snprintf(ack, sizeof(ack), "PUB %.*s 4\r\n+ACK\r\n", (int)m.reply_len,
					 m.reply);

			in_batch = 0;
			if (conn_send(c, ack, (size_t)n) != 0)
				return -1;
			if (requested < l->n) {
				if (pull(c, stream, batch) != 0)
					return -1;
				requested += batch;
			}
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct bench_lines l;
	struct conn c = { .cap = 1 << 20, .wmu = PTHREAD_MUTEX_INITIALIZER };
	size_t done = 0, bytes = 0;
	uint64_t t0 = 0, t1;
	int rc;

	if (argc < 6 || (strcmp(argv[4], "produce") != 0 && strcmp(argv[4], "consume") != 0)) {
		fprintf(stderr, "usage: nats_client HOST PORT FILE produce|consume STREAM [WINDOW|BATCH]\n");
		return 2;
	}
	rc = bench_load_lines(argv[3], &l);
	if (rc != 0) {
		fprintf(stderr, "nats_client: %s: %s\n", argv[3], strerror(-rc));
		return 1;
	}
	c.p = malloc(c.cap);
	c.fd = bench_connect(argv[1], atoi(argv[2]));
	if (c.p == NULL || c.fd < 0) {
		fprintf(stderr, "nats_client: connect %s:%s: %s\n", argv[1], argv[2],
			strerror(c.fd < 0 ? -c.fd : ENOMEM));
		return 1;
	}
	if (handshake(&c) != 0)
		return 1;
	if (strcmp(argv[4], "produce") == 0) {
		rc = produce(&c, &l, argv[5], argc > 6 ? (size_t)atol(argv[6]) : 8000, &done, &t0);
		bytes = l.bytes;
	} else {
		rc = consume(&c, &l, argv[5], argc > 6 ? (size_t)atol(argv[6]) : 1000, &done, &bytes, &t0);
	}
	t1 = bench_now_ns();
	close(c.fd);
	if (rc != 0 || done != l.n) {
		fprintf(stderr, "nats_client: %s: %zu of %zu records\n", argv[4], done, l.n);
		return 1;
	}
	printf("records=%zu bytes=%zu seconds=%.6f\n", done, bytes, (double)(t1 - t0) / 1e9);
	free(l.buf);
	free(l.off);
	free(c.p);
	return 0;
}
