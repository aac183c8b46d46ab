/*
 * test_partitioner.c - murmur2 against Kafka's own vectors (UtilsTest.testMurmur2
 * in apache/kafka), the keyed partition formula, and sticky round-robin.
 */
#include "../../fs/partitioner.h"
#include "unit.h"

#include <string.h>

static int32_t mm(const char *s)
{
	return murmur2(s, strlen(s));
}

/* Kafka's UtilsTest.testMurmur2 cases, all of them. */
static void test_murmur2_kafka_vectors(void)
{
	CHECK_EQ_INT(mm("21"), -973932308);
	CHECK_EQ_INT(mm("foobar"), -790332482);
	CHECK_EQ_INT(mm("a-little-bit-long-string"), -985981536);
	CHECK_EQ_INT(mm("a-little-bit-longer-string"), -1486304829);
	CHECK_EQ_INT(mm("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
	CHECK_EQ_INT(mm("abc"), 479470107);
}

/* Every tail length (0..3 leftover bytes) and the empty key, as pinned by
 * other Kafka clients (the librdkafka murmur2 test table). */
static void test_murmur2_tail_lengths(void)
{
	CHECK_EQ_INT(mm(""), 275646681);
	CHECK_EQ_INT(mm("kafka"), -798503068);
	CHECK_EQ_INT(mm("giberish123456789"), -1890243828);
	CHECK_EQ_INT(mm("1234"), -1614185708);
	CHECK_EQ_INT(mm("234"), -406844982);
	CHECK_EQ_INT(mm("34"), -2026295078);
}

/* Bytes >= 0x80 are taken unsigned (Java's & 0xff), never sign-extended.
 * Expected values from a transcription of Utils.murmur2 with Java int
 * semantics (signed bytes, >>>), run outside this code base. */
static void test_murmur2_high_bytes(void)
{
	const unsigned char a[] = { 0xff, 0x80, 0x01 };
	const unsigned char b[] = { 0xff, 0x80, 0x01, 0x7f, 0xfe };
	const unsigned char c[] = { 0x80, 0x81, 0xfe, 0xff };
	CHECK_EQ_INT(murmur2(a, sizeof(a)), 1034853807);
	CHECK_EQ_INT(murmur2(b, sizeof(b)), -1343743202);
	CHECK_EQ_INT(murmur2(c, sizeof(c)), -1509452055);
}

/* partition = (murmur2 & 0x7fffffff) % n, also for negative hashes. */
static void test_partition_for_key(void)
{
	/* murmur2("foobar") = -790332482; & 0x7fffffff = 1357151166 */
	CHECK_EQ_INT(partition_for_key("foobar", 6, 50), 1357151166u % 50);
	CHECK_EQ_INT(partition_for_key("foobar", 6, 50), 16);
	/* murmur2("abc") = 479470107 (positive) */
	CHECK_EQ_INT(partition_for_key("abc", 3, 7), 479470107u % 7);
	CHECK_EQ_INT(partition_for_key("abc", 3, 1), 0);
	CHECK_EQ_INT(partition_for_key("abc", 3, 0), 0);
	for (uint32_t n = 1; n < 40; n++)
		CHECK(partition_for_key("customer-42", 11, n) < n);
}

/* Sticky round-robin: each pick moves to the next partition, wraps, and
 * follows a change of partition count. */
static void test_sticky_rr(void)
{
	struct sticky_rr s;
	sticky_rr_init(&s, 2);
	CHECK_EQ_INT(sticky_rr_pick(&s, 4), 2);
	CHECK_EQ_INT(sticky_rr_pick(&s, 4), 3);
	CHECK_EQ_INT(sticky_rr_pick(&s, 4), 0);
	CHECK_EQ_INT(sticky_rr_pick(&s, 4), 1);
	CHECK_EQ_INT(sticky_rr_pick(&s, 2), 0);  /* partitions changed: stays in range */
	CHECK_EQ_INT(sticky_rr_pick(&s, 2), 1);
	CHECK_EQ_INT(sticky_rr_pick(&s, 1), 0);
	CHECK_EQ_INT(sticky_rr_pick(&s, 0), 0);
	sticky_rr_init(&s, 0xffffffffu);
	CHECK(sticky_rr_pick(&s, 3) < 3);
	/* over many picks, every partition gets the same share */
	unsigned count[5] = { 0 };
	sticky_rr_init(&s, 7);
	for (int i = 0; i < 500; i++)
		count[sticky_rr_pick(&s, 5)]++;
	for (int i = 0; i < 5; i++)
		CHECK_EQ_INT(count[i], 100);
}

int main(void)
{
	RUN(test_murmur2_kafka_vectors);
	RUN(test_murmur2_tail_lengths);
	RUN(test_murmur2_high_bytes);
	RUN(test_partition_for_key);
	RUN(test_sticky_rr);
	return unit_report("test_partitioner");
}
