// The embedded default job end to end, shortened to a few steps (the full job's accuracy is a result
// written in bench/README.md, not a unit test): data is generated, both stages train, the report is
// written. And the synthetic task keeps its promises.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "data/synthetic.h"
#include "tests/test_util.h"
#include "train/default_job.h"
#include "train/trainer.h"

namespace tune::test {
namespace {

// The job cut to 3 steps a stage, on the CPU, into `dir`.
DefaultJobOptions short_job(const std::string& dir) {
    DefaultJobOptions o;
    o.out_dir = dir;
    o.device = "cpu";
    o.base_steps = 3;
    o.finetune_steps = 3;
    o.quiet = true;
    return o;
}

TEST(DefaultJob, ShortRunWritesDataCheckpointsAndReport) {
    TempDir tmp("defjob");
    DefaultJobOptions o = short_job(tmp.path());
    testing::internal::CaptureStderr();
    const int rc = run_default_job(o);
    const std::string err = testing::internal::GetCapturedStderr();
    ASSERT_EQ(rc, 0) << err;
    // Its fixed windows are chosen on purpose, and it takes no --windows: no advice to give one.
    EXPECT_THAT(err, ::testing::Not(::testing::HasSubstr("--windows documents would keep")));
    auto r = nlohmann::json::parse(slurp(o.out_dir + "/report.json"));
    for (const char* k : {"task_loss_before", "task_loss_after", "base_loss_before", "base_loss_after",
                          "accuracy_before", "accuracy_after"})
        ASSERT_TRUE(r.contains(k)) << k;
    EXPECT_LT(r["task_loss_after"].get<double>(), r["task_loss_before"].get<double>());
    for (const char* f : {"/base/model.ckpt", "/finetune/model.ckpt", "/finetune/loss.svg", "/data/task/train.bin"})
        EXPECT_FALSE(slurp(o.out_dir + f).empty()) << f;
}

// bin/train's Ctrl-C handler reaches the job's running Trainer through on_trainer: a stop asked of the first
// stage ends the job there, with the interrupted status and a resume checkpoint, and nothing after it runs.
TEST(DefaultJob, AStopAskedOfTheRunningStageEndsTheJob) {
    TempDir tmp("defjob_stop");
    DefaultJobOptions o = short_job(tmp.path());
    std::vector<bool> told;  // true: a trainer, false: nullptr
    o.on_trainer = [&](Trainer* t) {
        told.push_back(t != nullptr);
        if (t) t->request_stop();
    };
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    EXPECT_EQ(run_default_job(o), Trainer::kInterrupted);
    const std::string out = ::testing::internal::GetCapturedStdout(), err = ::testing::internal::GetCapturedStderr();
    // One way to continue, the one that works: the job again, not a --resume of one of its stages.
    EXPECT_THAT(out, ::testing::HasSubstr("`bin/train` with no arguments starts it again"));
    EXPECT_THAT(err, ::testing::HasSubstr("train: interrupted after step"));
    EXPECT_THAT(err, ::testing::Not(::testing::HasSubstr("--resume")));
    EXPECT_EQ(told, (std::vector<bool>{true, false}));
    EXPECT_FALSE(slurp(o.out_dir + "/base/resume.ckpt").empty());
    EXPECT_FALSE(std::filesystem::exists(o.out_dir + "/finetune")) << "the job went on after the stop";
    EXPECT_FALSE(std::filesystem::exists(o.out_dir + "/report.json"));
}

TEST(SyntheticTask, HeldOutPromptsNeverAppearInTrainingAndAnswersAreTheAnimal) {
    std::vector<TaskExample> train, test;
    synthetic_task(7, 2400, 100, train, test);
    ASSERT_EQ(train.size(), 2400u);
    ASSERT_EQ(test.size(), 100u);
    std::set<std::string> seen;
    for (const auto& e : train) seen.insert(e.prompt);
    EXPECT_EQ(seen.size(), train.size());
    for (const auto& e : test) {
        EXPECT_EQ(seen.count(e.prompt), 0u) << e.prompt;
        // The answer word appears in the prompt.
        EXPECT_NE(e.prompt.find(e.completion.substr(1)), std::string::npos);
    }
    std::vector<TaskExample> again_train, again_test;
    synthetic_task(7, 2400, 100, again_train, again_test);
    EXPECT_EQ(again_test[5].prompt, test[5].prompt);
    EXPECT_EQ(synthetic_corpus(1, 50), synthetic_corpus(1, 50));
}

}  // namespace
}  // namespace tune::test
