// XXH64, written from the xxHash specification (doc/xxhash_spec.md, "XXH64
// Algorithm Description"): the checksum of every tensor, embedded file and
// header in a packed checkpoint. Chosen over CRC32C because plain C reaches
// several GB/s with four independent 64-bit lanes, with no ISA dispatch.
// Non-goals: the XXH3/XXH128 variants.
#include "CQLoRAKernels.h"

#include <string.h>

static const uint64_t P1 = 0x9E3779B185EBCA87ull;
static const uint64_t P2 = 0xC2B2AE3D27D4EB4Full;
static const uint64_t P3 = 0x165667B19E3779F9ull;
static const uint64_t P4 = 0x85EBCA77C2B2AE63ull;
static const uint64_t P5 = 0x27D4EB2F165667C5ull;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Input words are little-endian by definition; memcpy keeps unaligned reads legal.
static inline uint64_t read64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t read32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t lane_round(uint64_t acc, uint64_t input) {
    acc += input * P2;
    acc = rotl64(acc, 31);
    return acc * P1;
}

static inline uint64_t merge_lane(uint64_t acc, uint64_t lane) {
    acc ^= lane_round(0, lane);
    return acc * P1 + P4;
}

// Consumes whole 32-byte stripes; returns the bytes consumed.
static size_t consume_stripes(uint64_t v[4], const uint8_t *p, size_t len) {
    size_t done = 0;
    for (; done + 32 <= len; done += 32) {
        v[0] = lane_round(v[0], read64(p + done));
        v[1] = lane_round(v[1], read64(p + done + 8));
        v[2] = lane_round(v[2], read64(p + done + 16));
        v[3] = lane_round(v[3], read64(p + done + 24));
    }
    return done;
}

// The tail (< 32 bytes) and the final avalanche.
static uint64_t finish(uint64_t h, const uint8_t *p, size_t len) {
    while (len >= 8) {
        h ^= lane_round(0, read64(p));
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        h ^= (uint64_t)read32(p) * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
        len -= 4;
    }
    while (len > 0) {
        h ^= (uint64_t)(*p) * P5;
        h = rotl64(h, 11) * P1;
        p++;
        len--;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

static uint64_t converge(const uint64_t v[4]) {
    uint64_t h = rotl64(v[0], 1) + rotl64(v[1], 7) + rotl64(v[2], 12) + rotl64(v[3], 18);
    for (int i = 0; i < 4; i++) h = merge_lane(h, v[i]);
    return h;
}

void qk_xxh64_reset(qk_xxh64_state *s, uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->v[0] = seed + P1 + P2;
    s->v[1] = seed + P2;
    s->v[2] = seed;
    s->v[3] = seed - P1;
    s->seed = seed;
}

void qk_xxh64_update(qk_xxh64_state *s, const void *data, size_t len) {
    const uint8_t *p = (const uint8_t *)data;
    s->total_len += len;
    if (s->buffered > 0) {  // top up a partial stripe first
        size_t take = 32 - s->buffered < len ? 32 - s->buffered : len;
        memcpy(s->buffer + s->buffered, p, take);
        s->buffered += (uint32_t)take;
        p += take;
        len -= take;
        if (s->buffered < 32) return;
        consume_stripes(s->v, s->buffer, 32);
        s->buffered = 0;
    }
    size_t done = consume_stripes(s->v, p, len);
    memcpy(s->buffer, p + done, len - done);
    s->buffered = (uint32_t)(len - done);
}

uint64_t qk_xxh64_digest(const qk_xxh64_state *s) {
    uint64_t h = s->total_len >= 32 ? converge(s->v) : s->seed + P5;
    h += s->total_len;
    return finish(h, s->buffer, s->buffered);
}

uint64_t qk_xxh64(const void *data, size_t len, uint64_t seed) {
    qk_xxh64_state s;
    qk_xxh64_reset(&s, seed);
    qk_xxh64_update(&s, data, len);
    return qk_xxh64_digest(&s);
}
