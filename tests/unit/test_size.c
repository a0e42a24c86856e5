/* Sizes, host:port and names: what a user types into --pool, --listen and region names. */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>
#include <xmem/xmem.h>

#include "../../src/common/common.h"

static uint64_t parse_ok(const char *text)
{
    uint64_t v = 0xdeadbeef;
    xm_status_t st = xm__parse_size(text, &v);
    cr_assert_eq(st, XM_OK, "\"%s\" should parse, got %s", text, xm_status_str(st));
    return v;
}

static void parse_bad(const char *text)
{
    uint64_t v = 0xdeadbeef;
    xm_status_t st = xm__parse_size(text, &v);
    cr_expect_eq(st, XM_ERR_INVALID, "\"%s\" should be refused, got %s", text, xm_status_str(st));
    cr_expect_eq(v, 0xdeadbeef, "\"%s\": output written on failure", text);
}

Test(size, plain_bytes)
{
    cr_expect_eq(parse_ok("0"), 0);
    cr_expect_eq(parse_ok("1"), 1);
    cr_expect_eq(parse_ok("4096"), 4096);
    cr_expect_eq(parse_ok("007"), 7);
    cr_expect_eq(parse_ok("1.0"), 1, "a fraction of zero is still whole bytes");
    cr_expect_eq(parse_ok("18446744073709551609"), UINT64_MAX - 6);
}

Test(size, binary_units)
{
    cr_expect_eq(parse_ok("64K"), 64ull << 10);
    cr_expect_eq(parse_ok("64k"), 64ull << 10);
    cr_expect_eq(parse_ok("2M"), 2ull << 20);
    cr_expect_eq(parse_ok("2m"), 2ull << 20);
    cr_expect_eq(parse_ok("3G"), 3ull << 30);
    cr_expect_eq(parse_ok("3g"), 3ull << 30);
    cr_expect_eq(parse_ok("5T"), 5ull << 40);
    cr_expect_eq(parse_ok("5t"), 5ull << 40);
    cr_expect_eq(parse_ok("0G"), 0);
}

Test(size, long_unit_forms)
{
    cr_expect_eq(parse_ok("1KiB"), 1024);
    cr_expect_eq(parse_ok("1kib"), 1024);
    cr_expect_eq(parse_ok("2MiB"), 2ull << 20);
    cr_expect_eq(parse_ok("2Mi"), 2ull << 20);
    cr_expect_eq(parse_ok("8GB"), 8ull << 30, "GB is read as a power of 1024, like G");
    cr_expect_eq(parse_ok("8gb"), 8ull << 30);
    cr_expect_eq(parse_ok("1TiB"), 1ull << 40);
    cr_expect_eq(parse_ok("1KB"), 1024);
}

Test(size, fractions)
{
    cr_expect_eq(parse_ok("1.5G"), 3ull << 29);
    cr_expect_eq(parse_ok("0.5K"), 512);
    cr_expect_eq(parse_ok(".5M"), 512ull << 10);
    cr_expect_eq(parse_ok("1.25MiB"), (5ull << 20) / 4);
    cr_expect_eq(parse_ok("2.75T"), (11ull << 40) / 4);
    /* 0.1 KiB is 102.4 bytes: rounded down, never up */
    cr_expect_eq(parse_ok("0.1K"), 102);
    /* the largest size that fits */
    cr_expect_eq(parse_ok("16777215T"), 16777215ull << 40);
}

Test(size, rejects_malformed)
{
    parse_bad("");
    parse_bad("abc");
    parse_bad("12Q");
    parse_bad("-1");
    parse_bad("+1");
    parse_bad(" 1");
    parse_bad("1 ");
    parse_bad("1 G");
    parse_bad("G");
    parse_bad(".");
    parse_bad(".G");
    parse_bad("1..5G");
    parse_bad("1.5.G");
    parse_bad("1GG");
    parse_bad("1GiBx");
    parse_bad("1iB");
    parse_bad("0x10");
    parse_bad("1e6");
    uint64_t v;
    cr_expect_eq(xm__parse_size(NULL, &v), XM_ERR_INVALID);
}

Test(size, rejects_fractional_bytes)
{
    parse_bad("1.5");
    parse_bad("0.1");
    parse_bad("4096.5");
}

Test(size, rejects_overflow)
{
    parse_bad("20000000T");
    parse_bad("16777216T");        /* 2^64 exactly */
    parse_bad("18446744073709551616");   /* 2^64 */
    parse_bad("99999999999999999999");
    parse_bad("17179869184G");     /* 2^34 GiB = 2^64 */
    parse_bad("18014398509481984K"); /* 2^54 KiB = 2^64 */
    /* longer than any real size: refused before parsing */
    parse_bad("00000000000000000000000000000000000000000000000000000000000000001");
}

Test(size, fraction_near_the_limit)
{
    /* the whole part is the largest that fits; the fraction keeps it below 2^64 */
    uint64_t v = parse_ok("16777215.999999999T");
    cr_expect(v > (16777215ull << 40) && v < UINT64_MAX, "got %llu", (unsigned long long)v);
}

Test(size, public_wrapper_matches)
{
    uint64_t v = 0;
    cr_expect_eq(xm_parse_size("1.5G", &v), XM_OK);
    cr_expect_eq(v, 3ull << 29);
    cr_expect_eq(xm_parse_size("12Q", &v), XM_ERR_INVALID);
}

static const char *fmt(uint64_t v)
{
    static char buf[64];
    memset(buf, 'x', sizeof(buf));
    return xm__format_size(v, buf, sizeof(buf));
}

Test(size, format)
{
    cr_expect_str_eq(fmt(0), "0 B");
    cr_expect_str_eq(fmt(1), "1 B");
    cr_expect_str_eq(fmt(1023), "1023 B");
    cr_expect_str_eq(fmt(1024), "1.0 KiB");
    cr_expect_str_eq(fmt(1536), "1.5 KiB");
    cr_expect_str_eq(fmt(2ull << 20), "2.0 MiB");
    cr_expect_str_eq(fmt(3ull << 29), "1.5 GiB");
    cr_expect_str_eq(fmt(64ull << 30), "64.0 GiB");
    cr_expect_str_eq(fmt(5ull << 40), "5.0 TiB");
    cr_expect_str_eq(fmt(3ull << 50), "3.0 PiB");
    /* no unit past PiB: the number grows instead */
    cr_expect_str_eq(fmt(UINT64_MAX), "16384.0 PiB");
}

Test(size, format_returns_buf_and_truncates)
{
    char buf[6];
    memset(buf, 'x', sizeof(buf));
    const char *s = xm__format_size(64ull << 30, buf, sizeof(buf));
    cr_expect_eq(s, buf);
    cr_expect_str_eq(buf, "64.0 ", "a short buffer holds a NUL-terminated prefix");
}

Test(size, format_parse_round_trip)
{
    /* what we print for whole units parses back to the same number */
    static const uint64_t sizes[] = {1ull << 10, 2ull << 20, 3ull << 29, 64ull << 30, 5ull << 40};
    for (size_t i = 0; i < XM_ARRAY_LEN(sizes); i++) {
        char buf[32];
        xm__format_size(sizes[i], buf, sizeof(buf));
        /* "1.5 GiB" -> "1.5GiB" */
        char compact[32];
        size_t j = 0;
        for (const char *p = buf; *p; p++) {
            if (*p != ' ') compact[j++] = *p;
        }
        compact[j] = '\0';
        cr_expect_eq(parse_ok(compact), sizes[i], "%s", compact);
    }
}

/* ---- host:port ----------------------------------------------------------- */

static void hp_ok(const char *text, const char *host, const char *port)
{
    char h[64], p[16];
    xm_status_t st = xm__parse_hostport(text, h, sizeof(h), p, sizeof(p));
    cr_assert_eq(st, XM_OK, "\"%s\" should parse, got %s", text, xm_status_str(st));
    cr_expect_str_eq(h, host, "\"%s\": host", text);
    cr_expect_str_eq(p, port, "\"%s\": port", text);
}

static void hp_bad(const char *text)
{
    char h[64] = "untouched", p[16] = "untouched";
    xm_status_t st = xm__parse_hostport(text, h, sizeof(h), p, sizeof(p));
    cr_expect_eq(st, XM_ERR_INVALID, "\"%s\" should be refused, got %s", text ? text : "(null)",
                 xm_status_str(st));
    cr_expect_str_eq(h, "untouched", "host written on failure");
    cr_expect_str_eq(p, "untouched", "port written on failure");
}

Test(hostport, ipv4_and_names)
{
    hp_ok("127.0.0.1:7000", "127.0.0.1", "7000");
    hp_ok("127.0.0.1:0", "127.0.0.1", "0");
    hp_ok("localhost:65535", "localhost", "65535");
    hp_ok("node-7.cluster.example:1", "node-7.cluster.example", "1");
    hp_ok("0.0.0.0:7000", "0.0.0.0", "7000");
}

Test(hostport, ipv6_brackets)
{
    hp_ok("[::1]:7000", "::1", "7000");
    hp_ok("[fe80::1%eth0]:80", "fe80::1%eth0", "80");
    hp_ok("[2001:db8::42]:65535", "2001:db8::42", "65535");
}

Test(hostport, rejects_missing_port)
{
    hp_bad("127.0.0.1");
    hp_bad("127.0.0.1:");
    hp_bad("[::1]");
    hp_bad("[::1]:");
    hp_bad("[::1]7000");
    hp_bad("[::1:7000");
    hp_bad("");
}

Test(hostport, rejects_bad_port)
{
    hp_bad("host:65536");
    hp_bad("host:99999");
    hp_bad("host:123456");
    hp_bad("host:-1");
    hp_bad("host:http");
    hp_bad("host:80x");
    hp_bad("[::1]:70000");
}

Test(hostport, rejects_empty_host)
{
    hp_bad(":7000");
    hp_bad("[]:7000");
    hp_bad(NULL);
}

Test(hostport, rejects_what_does_not_fit)
{
    char h[8], p[16];
    cr_expect_eq(xm__parse_hostport("abcdefgh:1", h, sizeof(h), p, sizeof(p)), XM_ERR_INVALID,
                 "8-byte host does not fit an 8-byte buffer with its NUL");
    cr_expect_eq(xm__parse_hostport("abcdefg:1", h, sizeof(h), p, sizeof(p)), XM_OK);
    cr_expect_str_eq(h, "abcdefg");
    char p3[3];
    cr_expect_eq(xm__parse_hostport("a:100", h, sizeof(h), p3, sizeof(p3)), XM_ERR_INVALID);
    cr_expect_eq(xm__parse_hostport("a:10", h, sizeof(h), p3, sizeof(p3)), XM_OK);
    cr_expect_str_eq(p3, "10");
}

/* ---- names --------------------------------------------------------------- */

Test(name, valid)
{
    cr_expect(xm__name_valid("a"));
    cr_expect(xm__name_valid("alice"));
    cr_expect(xm__name_valid("db/shard-7:v2"));
    cr_expect(xm__name_valid("!~"));
    char max[XM_NAME_MAX + 1];
    memset(max, 'n', XM_NAME_MAX);
    max[XM_NAME_MAX] = '\0';
    cr_expect(xm__name_valid(max), "a name of XM_NAME_MAX bytes is allowed");
}

Test(name, invalid)
{
    cr_expect_not(xm__name_valid(NULL));
    cr_expect_not(xm__name_valid(""));
    cr_expect_not(xm__name_valid("a b"));
    cr_expect_not(xm__name_valid(" a"));
    cr_expect_not(xm__name_valid("a\t"));
    cr_expect_not(xm__name_valid("a\n"));
    cr_expect_not(xm__name_valid("del\x7f"));
    cr_expect_not(xm__name_valid("caf\xc3\xa9"), "non-ASCII bytes are refused");
    cr_expect_not(xm__name_valid("\x01"));
    char big[XM_NAME_MAX + 2];
    memset(big, 'n', XM_NAME_MAX + 1);
    big[XM_NAME_MAX + 1] = '\0';
    cr_expect_not(xm__name_valid(big), "a name of XM_NAME_MAX + 1 bytes is refused");
}

Test(size, largest_values_parse)
{
    uint64_t v = 0;
    cr_assert_eq(xm__parse_size("18446744073709551615", &v), XM_OK, "UINT64_MAX refused");
    cr_assert_eq(v, UINT64_MAX);
    cr_assert_eq(xm__parse_size("18446744073709551610", &v), XM_OK);
    cr_assert_eq(v, UINT64_MAX - 5);
    cr_assert_eq(xm__parse_size("18446744073709551616", &v), XM_ERR_INVALID, "UINT64_MAX + 1 accepted");
}

Test(hostport, rejects_signs_and_spaces_in_port)
{
    char host[64], port[16];
    cr_assert_eq(xm__parse_hostport("host:+80", host, sizeof(host), port, sizeof(port)), XM_ERR_INVALID);
    cr_assert_eq(xm__parse_hostport("host: 80", host, sizeof(host), port, sizeof(port)), XM_ERR_INVALID);
    cr_assert_eq(xm__parse_hostport("host:-0", host, sizeof(host), port, sizeof(port)), XM_ERR_INVALID);
}
