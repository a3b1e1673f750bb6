// Test runner entry: GoogleTest's own output, then one closing line "tests: N passed, N failed, N skipped"
// that CI and people can read at a glance.
#include <gtest/gtest.h>

#include <cstdio>

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    int rc = RUN_ALL_TESTS();
    const ::testing::UnitTest& u = *::testing::UnitTest::GetInstance();
    std::printf("tests: %d passed, %d failed, %d skipped\n", u.successful_test_count(),
                u.failed_test_count(), u.skipped_test_count());
    return rc;
}
