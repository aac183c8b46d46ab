/* test_crc32c.c - CRC-32C: known vectors, chaining, hardware == table. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../logstore/crc32c.h"
#include "unit.h"

/* The standard check value and RFC 3720 (iSCSI) test vectors. */
static void test_known_vectors(void)
{
	uint8_t buf[32];
	CHECK_EQ_INT(ls_crc32c(0, "123456789", 9), 0xE3069283u);
	CHECK_EQ_INT(ls_crc32c_sw(0, "123456789", 9), 0xE3069283u);
	memset(buf, 0, sizeof(buf));
	CHECK_EQ_INT(ls_crc32c(0, buf, 32), 0x8A9136AAu);
	memset(buf, 0xff, sizeof(buf));
	CHECK_EQ_INT(ls_crc32c(0, buf, 32), 0x62A8AB43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	CHECK_EQ_INT(ls_crc32c(0, buf, 32), 0x46DD794Eu);
	CHECK_EQ_INT(ls_crc32c(0, "", 0), 0);
}

/* Extending a CRC piecewise equals one pass, at every split and alignment. */
static void test_chaining_and_paths_agree(void)
{
	uint8_t buf[1000];
	srand(7);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)rand();
	uint32_t whole = ls_crc32c(0, buf, sizeof(buf));
	CHECK_EQ_INT(whole, ls_crc32c_sw(0, buf, sizeof(buf)));
	for (size_t cut = 0; cut <= 64; cut++) {
		uint32_t c = ls_crc32c(0, buf, cut);
		CHECK_EQ_INT(ls_crc32c(c, buf + cut, sizeof(buf) - cut), whole);
		CHECK_EQ_INT(ls_crc32c(0, buf + cut, 100), ls_crc32c_sw(0, buf + cut, 100));
	}
}

int main(void)
{
	RUN(test_known_vectors);
	RUN(test_chaining_and_paths_agree);
	printf("# crc32c hardware path: %s\n", ls_crc32c_hw_available() ? "yes" : "no");
	return unit_report("test_crc32c");
}
