// A small deterministic random number generator (SplitMix64) whose whole state is one 64-bit word, so
// checkpoints can save it and runs reproduce bit for bit on any machine and standard library.
#pragma once

#include <cmath>
#include <cstdint>

namespace tune {

struct Rng {
    uint64_t state;

    explicit Rng(uint64_t seed = 0) : state(seed) {}

    uint64_t next_u64() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, 1) with 53 random bits.
    double uniform() { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }
    // Uniform integer in [0, n).
    uint64_t below(uint64_t n) { return n ? next_u64() % n : 0; }
    // Standard normal by Box-Muller (one value per call: simple, and the stream stays reproducible).
    double normal() {
        double u1 = uniform(), u2 = uniform();
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
};

}  // namespace tune
