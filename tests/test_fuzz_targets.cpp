// The fuzz targets (tests/fuzz/targets.h) in every `make test`, without clang: each reader of outside input
// accepts the seeds its own writers produce, and meets each seed cut short, each seed with bytes changed at
// fixed places, and every input fuzzing once broke it with (tests/fuzz/regressions/<target>/) by accepting
// it or refusing it with a tune::Error, never with anything else. `make fuzz` searches much further.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "data/fileio.h"
#include "data/json_depth.h"
#include "kernels/common.h"
#include "tests/fuzz/targets.h"
#include "train/checkpoint.h"

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

TEST(JsonDepth, CountsArraysAndObjectsOutsideStrings) {
    EXPECT_EQ(json_depth("{}"), 1);
    EXPECT_EQ(json_depth(R"({"a": [1, {"b": [[]]}], "c": {}})"), 5);
    EXPECT_EQ(json_depth(R"({"a": "[[[{{{", "b": "\"[[["})"), 1);  // brackets in strings, an escaped quote
    EXPECT_EQ(json_depth(R"("\\" [[]])"), 2);                          // an escaped backslash ends no string
    EXPECT_EQ(json_depth(std::string(1000, '[')), kMaxJsonDepth + 1);   // stops counting past the limit
    EXPECT_EQ(json_depth("no json at all"), 0);
}

// Nesting 200,000 deep: parsed without recursion, but shown in an error message by a dump() that recurses once a
// level, it overflowed the stack (found by a review of the fuzz targets: libFuzzer's inputs of 4 KB nest 2,000
// deep at most). Every reader that shows JSON values now refuses nesting past kMaxJsonDepth first.
TEST(JsonDepth, EveryJsonReaderRefusesDeepNestingByName) {
    const std::string deep = std::string(200000, '[') + std::string(200000, ']');
    std::string ckpt(kCkptMagic, 8);
    ckpt.append(8, '\0');
    store_u32(reinterpret_cast<uint8_t*>(ckpt.data()) + 8, kCkptVersion);
    store_u32(reinterpret_cast<uint8_t*>(ckpt.data()) + 12, (uint32_t)deep.size());
    const std::vector<std::pair<std::string, std::string>> inputs = {
        {"jsonl", std::string(1, '\0') + deep},
        {"prepare", std::string(1, '\1') + deep},  // a .json file: one array, parsed whole
        {"choices", deep + "\n"},
        {"hf_config", deep},
        {"hf_index", deep},
        {"checkpoint", ckpt + deep},
        {"vocab", deep + std::string(1, '\0') + "#version: 0.2\n"},
    };
    for (const auto& [name, input] : inputs) {
        const Target* t = find_target(name);
        ASSERT_NE(t, nullptr) << name;
        EXPECT_EQ(t->run(reinterpret_cast<const uint8_t*>(input.data()), input.size()), Outcome::refused) << name;
        EXPECT_NE(last_refusal().find("nested deeper than 64 levels"), std::string::npos) << name << ": " << last_refusal();
    }
}

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
            } catch (...) {
                ADD_FAILURE() << e.path() << ": an exception that is not a std::exception";
            }
            n++;
        }
    }
    EXPECT_GT(n, 0u);
}

}  // namespace
}  // namespace tune::fuzz
