// libFuzzer's entry point for the targets of tests/fuzz/targets.h (built by `make fuzz`, with clang).
//   FUZZ_TARGET=shard build/fuzz/fuzz CORPUS_DIR [libFuzzer flags]   fuzz one target
//   FUZZ_TARGET=shard FUZZ_SEEDS_TO=DIR build/fuzz/fuzz              write its seeds into DIR and stop
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "tests/fuzz/targets.h"

namespace {
const tune::fuzz::Target* target = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* name = std::getenv("FUZZ_TARGET");
    target = name ? tune::fuzz::find_target(name) : nullptr;
    if (!target) {
        std::fprintf(stderr, "FUZZ_TARGET=%s: set it to one of:\n", name ? name : "(unset)");
        for (const auto& t : tune::fuzz::targets()) std::fprintf(stderr, "  %-12s %s\n", t.name, t.what);
        std::exit(2);
    }
    if (const char* dir = std::getenv("FUZZ_SEEDS_TO")) {
        const auto seeds = target->seeds();
        for (size_t i = 0; i < seeds.size(); i++) {
            const std::string path = std::string(dir) + "/seed_" + std::to_string(i);
            std::ofstream f(path, std::ios::binary);
            if (!(f << seeds[i]).flush()) {
                std::fprintf(stderr, "cannot write %s\n", path.c_str());
                std::exit(1);
            }
        }
        std::fprintf(stderr, "%s: %zu seeds written to %s\n", target->name, seeds.size(), dir);
        std::exit(0);
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    target->run(data, size);
    return 0;
}
