// Test runner entry: GoogleTest's own output, then one closing line "tests: N passed, N failed, N skipped"
// that CI and people can read at a glance.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/backend.h"

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    // TUNE_REQUIRE_GPU=1 (scripts/gpu_check.sh): on the GPU machine a GPU the runtime cannot see must fail the
    // run, not turn every CUDA test into a skip and the run into a pass.
    if (std::getenv("TUNE_REQUIRE_GPU") && tune::cuda_device_count() == 0) {
        std::fprintf(stderr, "TUNE_REQUIRE_GPU is set and %s\n", tune::cuda_device_problem().c_str());
        return 1;
    }
    int rc = RUN_ALL_TESTS();
    if (GTEST_FLAG_GET(list_tests)) return rc;  // nothing ran: no line that would count the listed as passed
    const ::testing::UnitTest& u = *::testing::UnitTest::GetInstance();
    std::printf("tests: %d passed, %d failed, %d skipped\n", u.successful_test_count(),
                u.failed_test_count(), u.skipped_test_count());
    return rc;
}
