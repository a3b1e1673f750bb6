// Fuzz targets: every reader of input from outside the program, fed arbitrary bytes.
//
// The contract each target checks is the one the brief sets for input from outside: a file that is not what
// it should be is refused with a tune::Error that names it, and never crashes the program, hangs it, reads
// out of bounds, hits undefined behaviour or throws anything else (a std::out_of_range from a JSON library,
// a std::bad_alloc from a size read out of the file). Where a reader accepts the bytes, the target also checks
// what the reader promises of its result (decode(encode(x)) == x, every token id below the vocabulary, ...),
// and throws Violation when that does not hold.
//
// The same targets run two ways:
//   - `make fuzz` (tests/fuzz/fuzz_main.cpp): under libFuzzer, AddressSanitizer and UBSan (clang), which
//     mutate the seeds below for as long as asked and report any crash, leak of an exception or sanitizer
//     finding with the input that caused it;
//   - in `make test` (tests/test_fuzz_targets.cpp): the seeds, each seed cut short and with bytes changed at
//     fixed places, and every input under tests/fuzz/regressions/<target>/ (what fuzzing found once).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace tune::fuzz {

// What a reader made of the bytes.
enum class Outcome { accepted, refused };

// A promise of an accepting reader that did not hold: a bug, never an answer to bad input.
struct Violation : std::logic_error {
    using std::logic_error::logic_error;
};

struct Target {
    const char* name;  // "safetensors", as `make fuzz FUZZ_TARGETS=...` and the regressions folder name it
    const char* what;  // the reader under test, for --help and messages
    // Runs the reader on the bytes: accepted, or refused with a tune::Error. Anything else propagates.
    Outcome (*run)(const uint8_t* data, size_t n);
    // Valid inputs, written by the program's own writers (so they follow the format as it is now).
    std::vector<std::string> (*seeds)();
};

const std::vector<Target>& targets();
// The message of the tune::Error behind this thread's latest refused outcome.
const std::string& last_refusal();
const Target* find_target(const std::string& name);  // nullptr when there is none of that name

}  // namespace tune::fuzz
