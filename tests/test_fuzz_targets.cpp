// The fuzz targets (tests/fuzz/targets.h) in every `make test`, without clang: each reader of outside input
// accepts the seeds its own writers produce, and meets each seed cut short, each seed with bytes changed at
// fixed places, and every input fuzzing once broke it with (tests/fuzz/regressions/<target>/) by accepting
// it or refusing it with a tune::Error, never with anything else. `make fuzz` searches much further.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "data/fileio.h"
#include "kernels/common.h"
#include "tests/fuzz/targets.h"

namespace tune::fuzz {
namespace {

class FuzzTarget : public ::testing::TestWithParam<std::string> {
   protected:
    const Target& target() const { return *find_target(GetParam()); }
    // Runs the target; on anything but accepted or refused, fails naming the input.
    Outcome run(const std::string& input, const std::string& what) const {
        try {
            return target().run(reinterpret_cast<const uint8_t*>(input.data()), input.size());
        } catch (const std::exception& e) {
            ADD_FAILURE() << target().name << ", " << what << ": " << e.what();
        } catch (...) {
            ADD_FAILURE() << target().name << ", " << what << ": an exception that is not a std::exception";
        }
        return Outcome::refused;
    }
};

TEST_P(FuzzTarget, AcceptsEverySeedItsWritersProduce) {
    const std::vector<std::string> seeds = target().seeds();
    ASSERT_FALSE(seeds.empty());
    for (size_t i = 0; i < seeds.size(); i++)
        EXPECT_EQ(run(seeds[i], "seed " + std::to_string(i)), Outcome::accepted) << "seed " << i << ": " << last_refusal();
}

// Every length up to 64 bytes, then 64 lengths spread over the rest: a file cut by a crash or a full disk.
TEST_P(FuzzTarget, MeetsEverySeedCutShort) {
    const std::vector<std::string> seeds = target().seeds();
    for (size_t i = 0; i < seeds.size(); i++) {
        const size_t n = seeds[i].size();
        std::set<size_t> cuts;
        for (size_t k = 0; k < std::min<size_t>(n, 64); k++) cuts.insert(k);
        for (size_t k = 0; k < 64; k++) cuts.insert(k * n / 64);
        for (size_t k : cuts) run(seeds[i].substr(0, k), "seed " + std::to_string(i) + " cut to " + std::to_string(k));
    }
}

// At 256 places spread over each seed, the byte replaced by each of a few that mean something to the formats
// (NUL, 0xff, a digit, a quote, a minus sign, a brace): sizes and offsets change, strings end, numbers go negative.
TEST_P(FuzzTarget, MeetsEverySeedWithABytesChanged) {
    const std::vector<std::string> seeds = target().seeds();
    for (size_t i = 0; i < seeds.size(); i++) {
        const size_t n = seeds[i].size();
        std::set<size_t> places;
        for (size_t k = 0; k < 256 && n > 0; k++) places.insert(k * n / 256);
        for (size_t at : places)
            for (char c : {'\0', '\xff', '9', '"', '-', '{'}) {
                std::string s = seeds[i];
                if (s[at] == c) continue;
                s[at] = c;
                run(s, "seed " + std::to_string(i) + " with byte " + std::to_string(at) + " = " +
                           std::to_string((unsigned char)c));
            }
    }
}


std::vector<std::string> target_names() {
    std::vector<std::string> names;
    for (const Target& t : targets()) names.push_back(t.name);
    return names;
}

INSTANTIATE_TEST_SUITE_P(Readers, FuzzTarget, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// tests/fuzz/regressions/<target>/*: each input that once broke its reader (`make fuzz` found it), met now.
TEST(FuzzRegressions, EveryInputFuzzingFoundIsMetByItsReader) {
    size_t n = 0;
    for (const auto& d : std::filesystem::directory_iterator("tests/fuzz/regressions")) {
        const Target* t = find_target(d.path().filename().string());
        ASSERT_NE(t, nullptr) << d.path() << " names no fuzz target";
        for (const auto& e : std::filesystem::directory_iterator(d.path())) {
            const std::vector<uint8_t> b = read_file_bytes(e.path().string());
            try {
                t->run(b.data(), b.size());
            } catch (const std::exception& ex) {
                ADD_FAILURE() << e.path() << ": " << ex.what();
            }
            n++;
        }
    }
    EXPECT_GT(n, 0u);
}

}  // namespace
}  // namespace tune::fuzz
