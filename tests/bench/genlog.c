/* genlog.c - deterministic synthetic web access-log lines for benchmarks.
 *
 * Usage: genlog [-n LINES] [-s SEED] [-a AVG_BYTES]    (defaults 1000000 1 100)
 *
 * Writes LINES lines to stdout, each ending in '\n', whose lengths average
 * AVG_BYTES (including the newline) over the whole output: every line is
 * built from varied fields (client IP, timestamp, method, path, status,
 * response size, user agent) drawn from a fixed-seed PRNG, then trimmed or
 * extended with a request id so the running total tracks LINES * AVG_BYTES
 * exactly. Field variety keeps zstd honest: the field notes measure about
 * 6x on real access logs, while lines padded with one repeated character
 * compress 80x and flatter everything.
 *
 * Same arguments, same bytes, on any machine (xorshift64*, no libc rand).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng_state;

static uint64_t rng(void)
{
	uint64_t x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static unsigned pick(unsigned n)
{
	return (unsigned)(rng() % n);
}

static const char *const methods[] = { "GET", "GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD" };
static const char *const paths[] = {
	"/", "/index.html", "/api/v1/items", "/api/v1/users", "/api/v2/orders",
	"/static/app.js", "/static/site.css", "/img/logo.png", "/login", "/cart",
	"/search", "/health", "/metrics", "/api/v1/items/", "/docs/",
};
static const unsigned statuses[] = { 200, 200, 200, 200, 200, 200, 304, 301, 404, 500, 201, 204 };
static const char *const agents[] = {
	"curl/7.88", "Mozilla/5.0", "Go-http/1.1", "python-req/2.31",
	"Wget/1.21", "kube-probe/1.28", "okhttp/4.11",
};
static const char *const referers[] = {
	"-", "-", "-", "https://www.example.com/", "https://www.google.com/",
	"https://example.com/cart", "https://news.ycombinator.com/",
};
static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
				      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

/* Appends printf(fmt, s) to line[0..n) if the result stays within target. */
static int append_if_fits(char *line, int n, int target, const char *fmt, const char *s)
{
	char tmp[256];
	int k = snprintf(tmp, sizeof(tmp), fmt, s);

	if (k < 0 || n + k > target)
		return n;
	memcpy(line + n, tmp, (size_t)k);
	return n + k;
}

int main(int argc, char **argv)
{
	long long lines = 1000000, total = 0;
	unsigned long long seed = 1;
	int avg = 100, opt;
	long long t = 1732200000; /* seconds, advances a little per line */
	static char out[1 << 20];
	size_t used = 0;

	while ((opt = getopt(argc, argv, "n:s:a:")) != -1) {
		switch (opt) {
		case 'n': lines = atoll(optarg); break;
		case 's': seed = strtoull(optarg, NULL, 10); break;
		case 'a': avg = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: genlog [-n LINES] [-s SEED] [-a AVG_BYTES]\n");
			return 2;
		}
	}
	if (avg < 60 || avg > 1000) {
		fprintf(stderr, "genlog: -a must be 60..1000\n");
		return 2;
	}
	rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
	for (long long i = 0; i < lines; i++) {
		char line[2048];
		char rt[8];
		int n, target;
		const char *path = paths[pick(sizeof(paths) / sizeof(paths[0]))];
		unsigned sec = (unsigned)(t % 60), min = (unsigned)(t / 60 % 60),
			 hour = (unsigned)(t / 3600 % 24), day = 1 + (unsigned)(t / 86400 % 28);

		t += pick(3);
		/* Mandatory core, about 75..95 bytes. */
		n = snprintf(line, sizeof(line),
			     "%u.%u.%u.%u - - [%02u/%s/2025:%02u:%02u:%02u +0000] \"%s %s%s%u HTTP/1.1\" %u %u",
			     1 + pick(223), pick(256), pick(256), 1 + pick(254), day,
			     months[(t / 2419200) % 12], hour, min, sec,
			     methods[pick(sizeof(methods) / sizeof(methods[0]))], path,
			     path[strlen(path) - 1] == '/' ? "" : "?id=", pick(100000),
			     statuses[pick(sizeof(statuses) / sizeof(statuses[0]))],
			     pick(3) ? pick(20000) : pick(2000000));
		/* This line's length (newline included) keeps the running total on
		 * (i+1)*avg, jittered by +-8 bytes; the last line lands exactly. */
		target = (int)((i + 1) * avg - total) - 1;
		if (i != lines - 1)
			target += (int)pick(17) - 8;
		if (target < 40)
			target = 40;
		/* Optional fields, each only if it fits: user agent, request time,
		 * referer; then a hex trace id fills the rest. */
		n = append_if_fits(line, n, target, " \"%s\"", agents[pick(sizeof(agents) / sizeof(agents[0]))]);
		snprintf(rt, sizeof(rt), "%03u", pick(1000));
		n = append_if_fits(line, n, target, " rt=0.%s", rt);
		n = append_if_fits(line, n, target, " \"%s\"", referers[pick(sizeof(referers) / sizeof(referers[0]))]);
		if (n < target - 1) {
			line[n++] = ' ';
			while (n < target) {
				uint64_t r = rng();

				for (int k = 0; k < 16 && n < target; k++, r >>= 4)
					line[n++] = "0123456789abcdef"[r & 15];
			}
		}
		if (n > target)
			n = target;
		while (n < target)
			line[n++] = ' ';
		line[n++] = '\n';
		total += n;
		if (used + (size_t)n > sizeof(out)) {
			if (fwrite(out, 1, used, stdout) != used)
				return 1;
			used = 0;
		}
		memcpy(out + used, line, (size_t)n);
		used += (size_t)n;
	}
	if (fwrite(out, 1, used, stdout) != used || fflush(stdout) != 0)
		return 1;
	return 0;
}
