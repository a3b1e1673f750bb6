// The training loop end to end on the CPU backend: bit-exact resume, a run that visibly learns and
// leaves its metrics, plot and checkpoints, the learning-rate schedule against its formula, and the
// command line's validation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/shard.h"
#include "tests/model_util.h"
#include "tests/test_util.h"
#include "tests/trainer_util.h"
#include "train/trainer.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST_F(TrainerFixture, ResumeIsBitExact_8Steps_vs_4PlusResume4) {
    TrainArgs full = args("full");
    ASSERT_EQ(Trainer(full).run(), 0);

    TrainArgs first = args("split");
    first.halt_at = 4;
    ASSERT_EQ(Trainer(first).run(), 0);
    TrainArgs second = resuming(args("split"));
    ASSERT_EQ(Trainer(second).run(), 0);

    auto a = losses(dir + "/full"), b = losses(dir + "/split");
    ASSERT_EQ(a.size(), 8u);
    EXPECT_EQ(a, b);  // identical to the last printed digit...
    // ...and the weights byte for byte.
    EXPECT_EQ(slurp(dir + "/full/model.ckpt"), slurp(dir + "/split/model.ckpt"));
}

// The seed shapes data order (and dropout, stochastic rounding): a resume without --seed goes on with the
// run's own, from the checkpoint; one given on the command line wins (and is noted as a change).
TEST_F(TrainerFixture, ResumeWithoutSeedGoesOnWithTheCheckpointsSeed) {
    TrainArgs full = args("seeded_full");
    full.seed = 7;
    ASSERT_EQ(Trainer(full).run(), 0);
    TrainArgs first = args("seeded");
    first.seed = 7;
    first.halt_at = 4;
    ASSERT_EQ(Trainer(first).run(), 0);
    TrainArgs second = resuming(args("seeded"));  // the fixture's default seed, not given
    ASSERT_NE(second.seed, 7u);
    ASSERT_EQ(Trainer(second).run(), 0);
    EXPECT_EQ(slurp(full.out_dir + "/model.ckpt"), slurp(second.out_dir + "/model.ckpt"));
    TrainArgs other = args("seeded_other");
    other.seed = 7;
    other.halt_at = 4;
    ASSERT_EQ(Trainer(other).run(), 0);
    TrainArgs given = resuming(args("seeded_other"));
    given.seed_given = true;
    testing::internal::CaptureStderr();
    ASSERT_EQ(Trainer(given).run(), 0);
    EXPECT_THAT(testing::internal::GetCapturedStderr(), HasSubstr("--seed " + std::to_string(given.seed) + " (was 7)"));
    EXPECT_NE(slurp(full.out_dir + "/model.ckpt"), slurp(given.out_dir + "/model.ckpt"));
}

// A stop (here --halt-at, which takes the same path) right after a step whose checkpoint was written does not
// write it again: for gpt2-xl that is 20 GB inside a scheduler's grace period.
TEST_F(TrainerFixture, StopRightAfterACheckpointDoesNotWriteItTwice) {
    TrainArgs a = args("due");
    a.halt_at = 3;
    a.ckpt_every = 3;
    Trainer t(a);
    ASSERT_EQ(t.run(), 0);
    EXPECT_EQ(t.resume_checkpoints_written(), 1);
    TrainArgs b = args("not_due");
    b.halt_at = 3;
    b.ckpt_every = 2;
    Trainer u(b);
    ASSERT_EQ(u.run(), 0);
    EXPECT_EQ(u.resume_checkpoints_written(), 2);  // step 2's, then the stop's at step 3
    EXPECT_EQ(tensors_of(a.out_dir + "/resume.ckpt"), tensors_of(b.out_dir + "/resume.ckpt"));
}

// Validation reads the first --val-batches micro-batches of --val-data: when all of their tokens are prompt
// (weight 0) there is no loss to log, and a note says why instead of validation silently never appearing.
TEST_F(TrainerFixture, ValidationThatCountsNoTokenIsNoted) {
    std::vector<uint8_t> mask(800, 0);
    for (size_t i = 600; i < mask.size(); i++) mask[i] = 1;  // batches of 3 x 13 reach token 78 at most
    write_shard(dir + "/masked_val.bin", pattern_tokens(800, 2), &mask, 37);
    TrainArgs a = args("empty_val");
    a.val_data = {dir + "/masked_val.bin"};
    a.steps = 4;
    testing::internal::CaptureStderr();
    ASSERT_EQ(Trainer(a).run(), 0);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_THAT(err, HasSubstr("note: the validation counted no token: the first 2 micro-batches of --val-data are "
                               "all prompt"));
    EXPECT_EQ(err.find("note: the validation counted"), err.rfind("note: the validation counted")) << "once";
    EXPECT_TRUE(metric(a.out_dir, "val_loss").empty());
}

// A stop that comes after the last step cuts the final validation short: the run is finished (status 0,
// model.ckpt), and a note says the validation was not logged and how to log it. (Here: a resume of a finished
// run whose log lacks that validation, stopped before it starts.)
TEST_F(TrainerFixture, StopDuringTheFinalValidationSaysItWasNotLogged) {
    TrainArgs a = args("final");
    ASSERT_EQ(Trainer(a).run(), 0);
    std::istringstream in(slurp(a.out_dir + "/metrics.jsonl"));
    std::string kept;
    for (std::string line; std::getline(in, line);)
        if (line.find("\"step\":8,\"val_loss\"") == std::string::npos) kept += line + "\n";
    spit(a.out_dir + "/metrics.jsonl", kept);
    TrainArgs b = a;
    b.init.clear();
    b.resume = a.out_dir + "/resume.ckpt";
    Trainer t(b);
    t.request_stop();
    testing::internal::CaptureStderr();
    EXPECT_EQ(t.run(), 0);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_THAT(err, HasSubstr("note: the stop cut the final validation short (not logged); the run itself is "
                               "finished: to log it, run the same command with --resume " +
                               a.out_dir + "/resume.ckpt"));
    EXPECT_FALSE(slurp(a.out_dir + "/model.ckpt").empty());
    EXPECT_EQ(metric(a.out_dir, "val_loss").size(), 2u);  // steps 0 and 4: not a partial one for step 8
}

// A stop request (Ctrl-C, SIGTERM) ends the run unfinished: status 130, resume.ckpt but no model.ckpt
// (the name of a finished run's weights), and resuming it gives the run that was never stopped.
TEST_F(TrainerFixture, InterruptedRunSaysSoKeepsNoModelAndResumesExactly) {
    TrainArgs full = args("full");
    ASSERT_EQ(Trainer(full).run(), 0);
    TrainArgs first = args("stopped");
    first.halt_at = 3;
    ASSERT_EQ(Trainer(first).run(), 0);
    EXPECT_FALSE(std::filesystem::exists(first.out_dir + "/model.ckpt")) << "--halt-at leaves an unfinished run";
    EXPECT_TRUE(std::filesystem::exists(first.out_dir + "/resume.ckpt"));
    {  // ... also in a directory a finished run used before: its model.ckpt and adapter.ckpt go at the start
        TrainArgs reused = args("full");
        reused.halt_at = 2;
        spit(reused.out_dir + "/adapter.ckpt", "an earlier run's");
        testing::internal::CaptureStderr();
        ASSERT_EQ(Trainer(reused).run(), 0);
        const std::string err = testing::internal::GetCapturedStderr();
        EXPECT_FALSE(std::filesystem::exists(reused.out_dir + "/model.ckpt"));
        EXPECT_FALSE(std::filesystem::exists(reused.out_dir + "/adapter.ckpt"));
        EXPECT_THAT(err, HasSubstr("note: removed " + reused.out_dir + "/model.ckpt of an earlier run"));
        // ...but not the weights this run starts from.
        TrainArgs from_own = args("own");
        std::filesystem::create_directories(from_own.out_dir);
        std::filesystem::copy_file(dir + "/init.ckpt", from_own.out_dir + "/model.ckpt");
        from_own.init = from_own.out_dir + "/model.ckpt";
        from_own.out_dir = dir + "/own/";  // another spelling of the same directory
        from_own.halt_at = 1;
        ASSERT_EQ(Trainer(from_own).run(), 0);
        EXPECT_EQ(slurp(from_own.init), slurp(dir + "/init.ckpt"));
    }
    TrainArgs full_again = args("full");  // the finished run, for the comparison below
    ASSERT_EQ(Trainer(full_again).run(), 0);
    TrainArgs behind = args("stopped");  // a halt at a step the checkpoint has passed would train nothing
    behind.resume = behind.out_dir + "/resume.ckpt";
    behind.halt_at = 3;
    EXPECT_THAT(error_of([&] { Trainer t(behind); }), HasSubstr("--halt-at 3: " + behind.resume + " is at step 3"));
    TrainArgs again = args("stopped");  // the same command with --resume, as the run's last line says
    again.resume = again.out_dir + "/resume.ckpt";
    {
        Trainer t(again);
        t.request_stop();  // as the signal handler does, before the first step
        EXPECT_EQ(t.run(), Trainer::kInterrupted);
        EXPECT_EQ(t.state().step, 3u);
    }
    EXPECT_FALSE(std::filesystem::exists(again.out_dir + "/model.ckpt"));
    ASSERT_TRUE(std::filesystem::exists(again.out_dir + "/resume.ckpt"));
    TrainArgs other = again;  // another starting point than the run had is refused
    other.init = dir + "/other.ckpt";
    {
        auto be = make_cpu_backend(DType::f32);
        GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);
        m.init_random(4);
        save_checkpoint(other.init, m, nullptr, nullptr);
    }
    EXPECT_THAT(error_of([&] { Trainer t(other); }), HasSubstr("continues a run that started from"));
    ASSERT_EQ(Trainer(again).run(), 0);
    EXPECT_EQ(losses(again.out_dir), losses(full.out_dir));
    EXPECT_EQ(slurp(full.out_dir + "/model.ckpt"), slurp(again.out_dir + "/model.ckpt"));
}

// A crash after the last checkpoint leaves metrics of steps the resumed run does again (and perhaps a
// torn line): the resumed run's metrics.jsonl holds each step once, as an uninterrupted run's does, and
// its plot starts at step 1, not at the resume.
TEST_F(TrainerFixture, ResumeAfterACrashKeepsEachStepOnceInMetricsAndPlot) {
    TrainArgs full = args("full");
    full.val_every = 2;
    ASSERT_EQ(Trainer(full).run(), 0);
    TrainArgs first = args("crashed");
    first.val_every = 2;
    first.halt_at = 4;
    ASSERT_EQ(Trainer(first).run(), 0);
    {  // what a crash at step 6 would have left after the step-4 checkpoint
        std::ofstream m(first.out_dir + "/metrics.jsonl", std::ios::app);
        m << "{\"step\":5,\"loss\":9.5}\n{\"step\":6,\"loss\":9.25}\n{\"step\":6,\"val_loss\":9.0}\n{\"step\":7,\"lo";
    }
    TrainArgs second = resuming(args("crashed"));
    second.val_every = 2;
    ASSERT_EQ(Trainer(second).run(), 0);
    EXPECT_EQ(losses(second.out_dir), losses(full.out_dir));
    EXPECT_EQ(metric(second.out_dir, "val_loss"), metric(full.out_dir, "val_loss"));
    // The plot has the whole run's points at the same x positions as the uninterrupted run's, and is the same
    // file: every run plots its losses as the log holds them, so the points read back are the points drawn.
    EXPECT_EQ(slurp(second.out_dir + "/loss.svg"), slurp(full.out_dir + "/loss.svg"));
    auto xs = [](const std::string& svg) {
        std::vector<std::string> out;
        for (size_t at = svg.find("points=\""); at != std::string::npos; at = svg.find("points=\"", at + 1)) {
            std::istringstream pts(svg.substr(at + 8, svg.find('"', at + 8) - at - 8));
            for (std::string xy; pts >> xy;) out.push_back(xy.substr(0, xy.find(',')));
        }
        return out;
    };
    const auto got = xs(slurp(second.out_dir + "/loss.svg")), want = xs(slurp(full.out_dir + "/loss.svg"));
    EXPECT_EQ(got.size(), 8u + 5u);  // 8 training steps, validation at 0, 2, 4, 6, 8
    EXPECT_EQ(got, want);
}

// A log that stops short of its checkpoint's step (its last lines never reached the disk before the machine went
// down) is resumed with a note naming the steps whose lines are lost; a whole log, without one.
TEST_F(TrainerFixture, ResumeNotesALogThatStopsShortOfTheCheckpoint) {
    TrainArgs first = args("short");
    first.halt_at = 4;
    ASSERT_EQ(Trainer(first).run(), 0);
    testing::internal::CaptureStderr();
    TrainArgs whole = resuming(args("short"));
    whole.halt_at = 6;
    ASSERT_EQ(Trainer(whole).run(), 0);
    EXPECT_THAT(testing::internal::GetCapturedStderr(), Not(HasSubstr("metrics.jsonl")));
    {  // the lines of steps 5 and 6 lost
        std::istringstream in(slurp(first.out_dir + "/metrics.jsonl"));
        std::string kept;
        for (std::string line; std::getline(in, line);)
            if (line.find("{\"step\":5,") != 0 && line.find("{\"step\":6,") != 0) kept += line + "\n";
        spit(first.out_dir + "/metrics.jsonl", kept);
    }
    testing::internal::CaptureStderr();
    ASSERT_EQ(Trainer(resuming(args("short"))).run(), 0);
    EXPECT_THAT(testing::internal::GetCapturedStderr(),
                HasSubstr("note: " + first.out_dir + "/metrics.jsonl ends at step 4, but " + first.out_dir +
                          "/resume.ckpt is at step 6: the lines of the steps between are lost (the log goes on from "
                          "step 7)"));
    EXPECT_EQ(metric(first.out_dir, "loss").size(), 8u - 2u);
    {  // steps 7 and 8 skipped or empty (logged with "loss":null): there, not lost
        std::istringstream in(slurp(first.out_dir + "/metrics.jsonl"));
        std::string kept;
        for (std::string line; std::getline(in, line);) {
            for (const char* s : {"{\"step\":7,\"loss\":", "{\"step\":8,\"loss\":"})
                if (line.rfind(s, 0) == 0) line = std::string(s) + "null" + line.substr(line.find(',', std::strlen(s)));
            kept += line + "\n";
        }
        spit(first.out_dir + "/metrics.jsonl", kept);
    }
    std::filesystem::remove(first.out_dir + "/model.ckpt");
    testing::internal::CaptureStderr();
    Trainer(resuming(args("short"))).run();
    EXPECT_THAT(testing::internal::GetCapturedStderr(), Not(HasSubstr("metrics.jsonl ends at step")));
    spit(first.out_dir + "/metrics.jsonl", "");
    std::filesystem::remove(first.out_dir + "/model.ckpt");
    testing::internal::CaptureStderr();
    Trainer(resuming(args("short"))).run();
    EXPECT_THAT(testing::internal::GetCapturedStderr(), HasSubstr("metrics.jsonl holds no training step, but"));
}

// Resuming with options that change the run says which, and what they were; --steps at or below the
// checkpoint's step is refused.
TEST_F(TrainerFixture, ResumeWithChangedOptionsNamesThemAndRefusesStepsAlreadyDone) {
    TrainArgs first = args("changed");
    first.halt_at = 4;
    ASSERT_EQ(Trainer(first).run(), 0);
    TrainArgs same = resuming(args("changed"));
    testing::internal::CaptureStderr();
    { Trainer t(same); }
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
    TrainArgs changed = same;
    changed.sched.lr = 1e-2f;
    changed.batch = 2;
    testing::internal::CaptureStderr();
    { Trainer t(changed); }
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_THAT(err, HasSubstr("--batch x ranks 2 (was 3)"));
    EXPECT_THAT(err, HasSubstr("--lr 0.01 (was 0.003)"));
    EXPECT_THAT(err, Not(HasSubstr("windows"))) << "the data did not change";
    TrainArgs shorter = same;
    shorter.seq = same.seq - 1;  // the same data cut into more windows
    testing::internal::CaptureStderr();
    size_t windows = 0;
    {
        Trainer t(shorter);
        windows = Loader(shorter.train_data, 37, 1, shorter.seq, false, 0).num_windows();
    }
    EXPECT_THAT(testing::internal::GetCapturedStderr(),
                HasSubstr("over training data of " + std::to_string(windows) + " windows of " +
                          std::to_string(shorter.seq) + "+1 tokens, where the checkpoint had " +
                          std::to_string(Loader(same.train_data, 37, 1, same.seq, false, 0).num_windows())));
    TrainArgs fewer = same;
    fewer.steps = 3;
    fewer.sched.warmup = 0;
    try {
        Trainer t(fewer);
        FAIL() << "--steps 3 below the checkpoint's step 4 was accepted";
    } catch (const UsageError& e) {
        EXPECT_THAT(e.what(), HasSubstr("is at step 4 already"));
    }
}

// Validation covers at most one pass over the validation windows, each once: val.bin's 800 tokens make 61
// windows of 13 (+1), 21 batches of 3 (the last of 1), so --val-batches 1000 gives the loss of 21, and 20 leaves
// the last window out.
TEST_F(TrainerFixture, ValidationCountsEachWindowOnceAtMost) {
    auto val_at_start = [&](int batches) {
        TrainArgs a = args("val" + std::to_string(batches));
        a.steps = 1;
        a.sched.warmup = 0;
        a.val_batches = batches;
        EXPECT_EQ(Trainer(a).run(), 0);
        return metric(a.out_dir, "val_loss").at(0);
    };
    const double all = val_at_start(21);
    EXPECT_EQ(val_at_start(1000), all);
    EXPECT_NE(val_at_start(20), all);
}

// --ckpt-minutes: the resume checkpoint is also written by the clock (here after every step), changing nothing
// in the run; the default's half hour writes none in a short run, and 0 turns it off.
TEST_F(TrainerFixture, ResumeCheckpointsByTheClockChangeNothing) {
    TrainArgs often = args("clock"), never = args("noclock"), usual = args("usual");
    often.ckpt_minutes = 1e-9f;
    never.ckpt_minutes = 0;
    Trainer a(often), b(never), c(usual);
    ASSERT_EQ(a.run(), 0);
    ASSERT_EQ(b.run(), 0);
    ASSERT_EQ(c.run(), 0);
    EXPECT_EQ(a.resume_checkpoints_written(), often.steps);  // every step, the last one also the end's
    EXPECT_EQ(b.resume_checkpoints_written(), 1);
    EXPECT_EQ(c.resume_checkpoints_written(), 1);
    EXPECT_EQ(metric(often.out_dir, "loss"), metric(never.out_dir, "loss"));
    EXPECT_EQ(slurp(often.out_dir + "/model.ckpt"), slurp(never.out_dir + "/model.ckpt"));
}

// What a run must not lose or get wrong when it is stopped or resumed at its edges: a stop request during
// validation ends it at once without logging a partial loss (a scheduler's SIGTERM grace period is short);
// a resume of a finished run (to write model.ckpt again, say after a full disk) logs its last validation
// once; a metrics line that cannot be written stops the run naming the file.
TEST_F(TrainerFixture, StopDuringValidationResumeOfAFinishedRunAndAFullDisk) {
    TrainArgs a = args("stopped");
    {
        Trainer t(a);
        t.request_stop();  // arrives before the step-0 validation ends
        EXPECT_EQ(t.run(), Trainer::kInterrupted);
    }
    EXPECT_TRUE(metric(a.out_dir, "val_loss").empty()) << "a validation cut short was logged";
    EXPECT_FALSE(slurp(a.out_dir + "/resume.ckpt").empty());
    // Cut short at a later step: the resumed run makes that validation up before its first step.
    TrainArgs whole = args("whole");
    whole.val_every = 2;
    ASSERT_EQ(Trainer(whole).run(), 0);
    TrainArgs cut = args("cut");
    cut.val_every = 2;
    cut.halt_at = 4;
    ASSERT_EQ(Trainer(cut).run(), 0);
    {  // the log as a stop during step 4's validation leaves it
        std::istringstream in(slurp(cut.out_dir + "/metrics.jsonl"));
        std::string kept;
        for (std::string line; std::getline(in, line);)
            if (line.find("{\"step\":4,\"val_loss\"") != 0) kept += line + "\n";
        std::ofstream(cut.out_dir + "/metrics.jsonl") << kept;
    }
    ASSERT_EQ(metric(cut.out_dir, "val_loss").size(), 2u);
    ASSERT_EQ(Trainer(resuming(cut)).run(), 0);
    EXPECT_EQ(metric(cut.out_dir, "val_loss"), metric(whole.out_dir, "val_loss"));

    TrainArgs done = args("finished");
    ASSERT_EQ(Trainer(done).run(), 0);
    const std::vector<double> vals = metric(done.out_dir, "val_loss");
    const std::string model = slurp(done.out_dir + "/model.ckpt");
    std::filesystem::remove(done.out_dir + "/model.ckpt");
    TrainArgs again = done;
    again.resume = done.out_dir + "/resume.ckpt";
    ASSERT_EQ(Trainer(again).run(), 0);
    EXPECT_EQ(metric(done.out_dir, "val_loss").size(), vals.size()) << "the last validation was logged twice";
    EXPECT_EQ(slurp(done.out_dir + "/model.ckpt"), model);

    TrainArgs full = args("full");
    std::filesystem::create_directories(full.out_dir);
    std::filesystem::create_symlink("/dev/full", full.out_dir + "/metrics.jsonl");
    EXPECT_THAT(error_of([&] { Trainer(full).run(); }), HasSubstr("metrics.jsonl: write failed (No space left"));
}

TEST_F(TrainerFixture, TrainingLowersTheLossAndWritesItsRunDirectory) {
    TrainArgs a = args("run");
    a.steps = 60;
    a.sched.lr = 1e-2f;
    a.val_every = 20;
    ASSERT_EQ(Trainer(a).run(), 0);
    auto l = losses(a.out_dir);
    ASSERT_EQ(l.size(), 60u);
    EXPECT_LT(l.back(), 0.5 * l.front()) << "first " << l.front() << " last " << l.back();
    const std::string svg = slurp(a.out_dir + "/loss.svg");
    EXPECT_THAT(svg, HasSubstr("<svg"));
    EXPECT_THAT(svg, HasSubstr("polyline"));
    EXPECT_THAT(svg, HasSubstr("validation"));
    EXPECT_THAT(slurp(a.out_dir + "/metrics.jsonl"), HasSubstr("\"val_loss\""));
    EXPECT_THAT(slurp(a.out_dir + "/metrics.jsonl"), HasSubstr("\"mfu_percent\":null"))  // the CPU has no peak rate
        << "an MFU without a peak rate to divide by";
    EXPECT_FALSE(slurp(a.out_dir + "/model.ckpt").empty());
}

TEST_F(TrainerFixture, NonFiniteStepsAreSkippedThenTheRunStops) {
    TrainArgs a = args("nan");
    a.sched.lr = 1e30f;  // validate_schedule accepts it; the weights blow up after the first update
    a.sched.warmup = 0;
    a.grad_clip = 0;
    a.max_bad_steps = 2;
    a.steps = 20;
    Trainer t(a);
    EXPECT_EQ(t.run(), 1);
    EXPECT_GE(t.state().skipped_steps, 2u);
    EXPECT_LT(t.state().step, 20u);
}

// A skipped step touches nothing: weights, Adam's moments and its step count are byte-identical afterwards. When
// the run gives up it says why and leaves those last good weights in resume.ckpt.
TEST_F(TrainerFixture, ASkippedStepLeavesWeightsAndAdamStateUntouchedAndTheStopKeepsThem) {
    TrainArgs a = args("nan_state");
    a.sched.lr = 1e30f;
    a.sched.warmup = 0;
    a.grad_clip = 0;
    a.max_bad_steps = 2;
    a.steps = 20;
    a.quiet = true;
    Trainer t(a);
    auto arena = [&](const Arena& ar) {
        std::vector<double> v(ar.elems());
        t.backend().download(v.data(), ar.base(), ar.dtype(), v.size());
        return v;
    };
    ASSERT_FALSE(t.step().skipped);  // the update that blows the weights up
    const std::vector<double> p = arena(t.model().params()), m = arena(t.optimizer().m()), v = arena(t.optimizer().v());
    const int adam_t = t.optimizer().t();
    ASSERT_TRUE(t.step().skipped);
    EXPECT_EQ(arena(t.model().params()), p);
    EXPECT_EQ(arena(t.optimizer().m()), m);
    EXPECT_EQ(arena(t.optimizer().v()), v);
    EXPECT_EQ(t.optimizer().t(), adam_t);
    testing::internal::CaptureStderr();
    EXPECT_EQ(t.run(), 1);  // one more skipped step makes two in a row
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_THAT(err, HasSubstr("2 steps in a row had a non-finite loss or gradient; stopping"));
    EXPECT_THAT(err, HasSubstr(a.out_dir + "/resume.ckpt"));
    auto be = make_cpu_backend(DType::f32);
    GPT2 saved(t.model().config(), *be, 1, 1);
    load_checkpoint(a.out_dir + "/resume.ckpt", saved, nullptr, nullptr);
    std::vector<double> got(saved.params().elems());
    be->download(got.data(), saved.params().base(), saved.params().dtype(), got.size());
    EXPECT_EQ(got, p);
}

// Windows that are all prompt (every target masked) give a step with nothing to learn from: no update (Adam
// would still decay the weights, apply its momentum and count the step), not a bad step, and no loss (null).
TEST_F(TrainerFixture, AStepWithNoCountedTokenMakesNoUpdate) {
    std::vector<int32_t> tokens = pattern_tokens(4000, 1);
    std::vector<uint8_t> mask(tokens.size(), 1);
    for (size_t i = 0; i < 60; i++) mask[i] = 0;
    write_shard(dir + "/masked.bin", tokens, &mask, 37);
    TrainArgs a = args("empty");
    a.train_data = {dir + "/masked.bin"};
    a.batch = 1;
    a.grad_accum = 1;
    a.shuffle = false;
    a.steps = 6;
    Trainer t(a);
    auto params = [&] {
        std::vector<double> v(t.model().params().elems());
        t.backend().download(v.data(), t.model().params().base(), t.model().params().dtype(), v.size());
        return v;
    };
    const std::vector<double> before = params();
    const StepStats first = t.step();
    ASSERT_EQ(first.counted, 0u);
    EXPECT_TRUE(first.empty);
    EXPECT_FALSE(first.skipped);
    EXPECT_TRUE(std::isnan(first.loss)) << first.loss;
    EXPECT_EQ(params(), before);
    EXPECT_EQ(t.optimizer().t(), 0);
    EXPECT_EQ(t.state().step, 1u);  // the schedule goes on
    StepStats st = first;
    while (st.counted == 0 && t.state().step < 6) st = t.step();
    ASSERT_GT(st.counted, 0u);
    EXPECT_FALSE(st.empty);
    EXPECT_EQ(t.optimizer().t(), 1);  // the first counted step is Adam's first
    EXPECT_NE(params(), before);
    TrainArgs b = a;  // the same from the command line's loop: logged
    b.out_dir = dir + "/empty_run";
    ASSERT_EQ(Trainer(b).run(), 0);
    const std::vector<double> logged = losses(b.out_dir), counted = metric(b.out_dir, "counted_tokens");
    ASSERT_EQ(logged.size(), 6u);
    EXPECT_EQ(counted[0], 0.0);
    EXPECT_TRUE(std::isnan(logged[0])) << "the empty step's loss is logged as null";
    EXPECT_TRUE(std::isfinite(logged.back()));
    EXPECT_EQ(metric(b.out_dir, "skipped_total").back(), 0.0);
}

TEST_F(TrainerFixture, PowerOfTwoLossScalingIsExactInF32) {
    TrainArgs plain = args("plain");
    ASSERT_EQ(Trainer(plain).run(), 0);
    TrainArgs scaled = args("scaled");
    scaled.loss_scaling = "on";
    scaled.loss_scale = 1024;  // scaling by a power of two and back changes no bit in fp32
    ASSERT_EQ(Trainer(scaled).run(), 0);
    EXPECT_EQ(losses(plain.out_dir), losses(scaled.out_dir));
    EXPECT_EQ(slurp(plain.out_dir + "/model.ckpt"), slurp(scaled.out_dir + "/model.ckpt"));
}

// --max-bad-steps counts bad steps in a row across a resume: a run halted after one bad step stops after two
// more with a limit of 3, as the uninterrupted run does.
TEST_F(TrainerFixture, BadStepsInARowAreCountedAcrossAResume) {
    auto blowing_up = [&](const std::string& out) {
        TrainArgs a = args(out);
        a.sched.lr = 1e30f;  // step 1 blows the weights up; every later step is non-finite and skipped
        a.sched.warmup = 0;
        a.grad_clip = 0;
        a.max_bad_steps = 3;
        a.steps = 20;
        return a;
    };
    TrainArgs whole = blowing_up("bad_whole");
    {
        Trainer t(whole);
        testing::internal::CaptureStderr();
        const int rc = t.run();
        testing::internal::GetCapturedStderr();
        ASSERT_EQ(rc, 1);
        EXPECT_EQ(t.state().step, 4u);
    }
    TrainArgs first = blowing_up("bad_split");
    first.halt_at = 2;
    ASSERT_EQ(Trainer(first).run(), 0);
    Trainer t(resuming(blowing_up("bad_split")));
    testing::internal::CaptureStderr();
    EXPECT_EQ(t.run(), 1);
    EXPECT_THAT(testing::internal::GetCapturedStderr(), HasSubstr("3 steps in a row"));
    EXPECT_EQ(t.state().step, 4u);
}

// The dynamic loss scale goes on from the checkpoint (value and clean-step count) only when the resumed run
// scales dynamically too, from the same --loss-scale; otherwise it starts afresh: 1 without dynamic scaling,
// --loss-scale when scaling starts now or --loss-scale changed.
TEST_F(TrainerFixture, ResumeKeepsTheLossScaleOnlyWhereBothRunsScaleDynamically) {
    TrainArgs scaled = args("scaled");
    scaled.loss_scaling = "on";
    scaled.loss_scale = 1024;
    scaled.halt_at = 2;
    ASSERT_EQ(Trainer(scaled).run(), 0);
    TrainArgs plain = args("plain");
    plain.halt_at = 2;
    ASSERT_EQ(Trainer(plain).run(), 0);
    auto resumed = [&](const std::string& run, const std::string& scaling, float scale) {
        TrainArgs r = resuming(args(run));
        r.loss_scaling = scaling;
        r.loss_scale = scale;
        Trainer t(r);
        return std::make_pair(t.state().loss_scale, t.state().loss_scale_clean);
    };
    using Scale = std::pair<double, uint64_t>;
    EXPECT_EQ(resumed("scaled", "on", 1024), Scale(1024, 2));
    EXPECT_EQ(resumed("scaled", "off", 65536), Scale(1, 0));  // (--loss-scale without scaling is refused)
    EXPECT_EQ(resumed("scaled", "on", 4096), Scale(4096, 0));
    EXPECT_EQ(resumed("plain", "on", 65536), Scale(65536, 0));
    EXPECT_EQ(resumed("plain", "auto", 65536), Scale(1, 0));
}

TEST_F(TrainerFixture, LrFindSweepsExponentiallyAndSuggestsARateInsideTheRange) {
    TrainArgs a = args("lrfind");
    a.sched.warmup = 0;
    Trainer t(a);
    const double lr = t.lr_find(60, 1e-5, 1.0);
    EXPECT_GT(lr, 1e-5);
    EXPECT_LT(lr, 1.0);
    std::istringstream in(slurp(a.out_dir + "/lr_find.jsonl"));
    std::vector<double> rates;
    for (std::string line; std::getline(in, line);) rates.push_back(nlohmann::json::parse(line)["lr"].get<double>());
    ASSERT_GE(rates.size(), 12u);
    EXPECT_NEAR(rates[0], 1e-5, 1e-12);
    EXPECT_NEAR(rates[1] / rates[0], std::pow(1e5, 1.0 / 59), 1e-6);  // a constant ratio: exponential
    EXPECT_THAT(slurp(a.out_dir + "/lr_find.svg"), HasSubstr("log scale"));
    // Two points have no slope between them: no suggestion (NaN), rather than the first rate tried.
    TrainArgs b = args("lrfind2");
    b.sched.warmup = 0;
    EXPECT_TRUE(std::isnan(Trainer(b).lr_find(2, 1e-5, 1.0)));
}

TEST(LossScale, HalvesOnOverflowAndDoublesAfterTheWindowOfCleanSteps) {
    TrainState s;
    s.loss_scale = 65536;
    update_loss_scale(s, false);
    EXPECT_EQ(s.loss_scale, 32768);
    for (uint64_t i = 0; i + 1 < kLossScaleWindow; i++) update_loss_scale(s, true);
    EXPECT_EQ(s.loss_scale, 32768);  // one clean step short of the window
    update_loss_scale(s, true);
    EXPECT_EQ(s.loss_scale, 65536);
    EXPECT_EQ(s.loss_scale_clean, 0u);
    for (int i = 0; i < 10; i++) update_loss_scale(s, true);
    update_loss_scale(s, false);  // an overflow restarts the count
    EXPECT_EQ(s.loss_scale_clean, 0u);
    s.loss_scale = 1;
    update_loss_scale(s, false);
    EXPECT_EQ(s.loss_scale, 1);  // never below 1
}

TEST(Schedule, CosineMatchesItsFormulaAtChosenSteps) {
    ScheduleConfig s;
    s.kind = "cosine";
    s.lr = 1.0f;
    s.warmup = 10;
    s.min_frac = 0.1f;
    s.total_steps = 110;
    EXPECT_FLOAT_EQ(lr_at(s, 0), 0.1f);   // warmup: (step+1)/warmup
    EXPECT_FLOAT_EQ(lr_at(s, 4), 0.5f);
    EXPECT_FLOAT_EQ(lr_at(s, 10), 1.0f);  // decay starts at the peak
    // Halfway through the 100 decay steps (progress 49.5/99 = 0.5): lr_min + (lr - lr_min)/2 = 0.55
    EXPECT_NEAR(lr_at(s, 10 + 49) , 0.1 + 0.45 * (1 + std::cos(M_PI * 49.0 / 99.0)), 1e-6);
    EXPECT_FLOAT_EQ(lr_at(s, 109), 0.1f);  // the floor at the last step
}

TEST(Schedule, LinearDecaysToTheFloor) {
    ScheduleConfig s;
    s.kind = "linear";
    s.lr = 2.0f;
    s.min_frac = 0.25f;
    s.total_steps = 11;
    EXPECT_FLOAT_EQ(lr_at(s, 0), 2.0f);
    EXPECT_FLOAT_EQ(lr_at(s, 5), 1.25f);  // halfway: (2 + 0.5) / 2
    EXPECT_FLOAT_EQ(lr_at(s, 10), 0.5f);
}

// One step after warmup is both the first and the last: it runs at the peak, not at the floor.
TEST(Schedule, SingleDecayStepRunsAtThePeak) {
    for (const char* kind : {"cosine", "linear"}) {
        ScheduleConfig s;
        s.kind = kind;
        s.lr = 2.0f;
        s.min_frac = 0.25f;
        s.total_steps = 1;
        EXPECT_FLOAT_EQ(lr_at(s, 0), 2.0f) << kind;
        s.warmup = 2;
        s.total_steps = 3;
        EXPECT_FLOAT_EQ(lr_at(s, 1), 2.0f) << kind;  // the end of warmup
        EXPECT_FLOAT_EQ(lr_at(s, 2), 2.0f) << kind;
    }
}

TEST(Schedule, CyclicalTriangularFamilyMatchesSmith2017) {
    ScheduleConfig s;
    s.lr = 1.0f;        // max_lr
    s.min_frac = 0.1f;  // base_lr 0.1
    s.half_cycle = 4;
    s.total_steps = 100;
    s.kind = "triangular";
    // t = 0: base; t = 4: peak; t = 8: base again; t = 2: halfway up; t = 12: second peak, same height.
    EXPECT_FLOAT_EQ(lr_at(s, 0), 0.1f);
    EXPECT_FLOAT_EQ(lr_at(s, 2), 0.55f);
    EXPECT_FLOAT_EQ(lr_at(s, 4), 1.0f);
    EXPECT_FLOAT_EQ(lr_at(s, 8), 0.1f);
    EXPECT_FLOAT_EQ(lr_at(s, 12), 1.0f);
    s.kind = "triangular2";  // the amplitude halves every cycle
    EXPECT_FLOAT_EQ(lr_at(s, 4), 1.0f);
    EXPECT_FLOAT_EQ(lr_at(s, 12), 0.55f);
    EXPECT_FLOAT_EQ(lr_at(s, 20), 0.325f);
    s.kind = "exp_range";
    s.gamma = 0.9f;
    EXPECT_NEAR(lr_at(s, 4), 0.1 + 0.9 * std::pow(0.9, 4), 1e-6);
    EXPECT_NEAR(lr_at(s, 12), 0.1 + 0.9 * std::pow(0.9, 12), 1e-6);
}

TEST(Schedule, SlantedTriangularMatchesUlmfit) {
    ScheduleConfig s;
    s.kind = "stlr";
    s.lr = 0.01f;
    s.cut_frac = 0.1f;
    s.ratio = 32;
    s.total_steps = 1000;  // cut = 100
    EXPECT_FLOAT_EQ(lr_at(s, 0), 0.01f / 32);               // the lowest rate
    EXPECT_FLOAT_EQ(lr_at(s, 50), 0.01f * (1 + 0.5f * 31) / 32);
    EXPECT_FLOAT_EQ(lr_at(s, 100), 0.01f);                  // the peak at the cut
    // after the cut: p = 1 - (t - cut) / (cut * (1/cut_frac - 1)) = 1 - 450/900 = 0.5 at t = 550
    EXPECT_FLOAT_EQ(lr_at(s, 550), 0.01f * (1 + 0.5f * 31) / 32);
    EXPECT_NEAR(lr_at(s, 999), 0.01 * (1 + (1 - 899.0 / 900) * 31) / 32, 1e-9);
    // The decay spans the steps after the cut whatever the run's length: a run shorter than 1/cut_frac steps
    // (cut = 1) goes down to 1/4 of the way above the floor at its 5th step, not 6/9; at 105 steps (cut = 10)
    // the last step is 1/95 above it, not at the floor since step 100.
    s.total_steps = 5;
    EXPECT_FLOAT_EQ(lr_at(s, 1), 0.01f);
    EXPECT_NEAR(lr_at(s, 4), 0.01 * (1 + 0.25 * 31) / 32, 1e-9);
    s.total_steps = 105;
    EXPECT_FLOAT_EQ(lr_at(s, 10), 0.01f);
    EXPECT_NEAR(lr_at(s, 104), 0.01 * (1 + (1 - 94.0 / 95) * 31) / 32, 1e-9);
    EXPECT_GT(lr_at(s, 103), lr_at(s, 104));
}

TEST(Schedule, UnknownKindsAndBadNumbersAreUsageErrors) {
    ScheduleConfig s;
    s.kind = "sawtooth";
    EXPECT_THAT(error_of([&] { validate_schedule(s); }), HasSubstr("sawtooth"));
    s.kind = "stlr";
    s.cut_frac = 1.5f;
    EXPECT_THAT(error_of([&] { validate_schedule(s); }), HasSubstr("--cut-frac"));
}

TEST(Schedule, ConstantHoldsAfterWarmup) {
    ScheduleConfig s;
    s.kind = "constant";
    s.lr = 0.5f;
    s.warmup = 4;
    s.total_steps = 100;
    EXPECT_FLOAT_EQ(lr_at(s, 1), 0.25f);
    EXPECT_FLOAT_EQ(lr_at(s, 50), 0.5f);
    EXPECT_FLOAT_EQ(lr_at(s, 99), 0.5f);
}

std::string parse_error(std::vector<std::string> argv) {
    argv.insert(argv.begin(), "train");
    std::vector<char*> p;
    for (auto& s : argv) p.push_back(s.data());
    TrainArgs a;
    try {
        parse_train_args((int)p.size(), p.data(), a);
        validate_train_args(a);
    } catch (const UsageError& e) {
        return e.what();
    }
    return "";
}

TEST(TrainArgsParse, InvalidValuesAreUsageErrorsNamingTheFlag) {
    EXPECT_THAT(parse_error({"--lr", "-1"}), HasSubstr("--lr"));
    EXPECT_THAT(parse_error({"--batch", "0"}), HasSubstr("--batch"));
    EXPECT_THAT(parse_error({"--batch", "two"}), HasSubstr("expected an integer"));
    EXPECT_THAT(parse_error({"--bogus"}), HasSubstr("unknown option '--bogus' (see --help)"));
    EXPECT_THAT(parse_error({"--train_data", "x"}),
                HasSubstr("unknown option '--train_data' (did you mean --train-data?"));
    EXPECT_THAT(parse_error({"--setps", "3"}), HasSubstr("(did you mean --steps?"));
    EXPECT_THAT(parse_error({"--steps"}), HasSubstr("missing value"));
    EXPECT_THAT(parse_error({"--device", "tpu"}), HasSubstr("--device"));
    EXPECT_THAT(parse_error({"--model", "gpt5"}), HasSubstr("unknown model preset 'gpt5'"));
    EXPECT_THAT(parse_error({"--schedule", "zigzag"}), HasSubstr("zigzag"));
    EXPECT_THAT(parse_error({"--steps", "10", "--halt-at", "11"}), HasSubstr("--halt-at"));
    EXPECT_EQ(parse_error({"--lr=1e-3", "--batch", "8", "--steps", "5"}), "");
    // A name the system refuses (a component past 255 bytes) is a file that does not exist, not a
    // std::filesystem error escaping the check (found by a review of the fuzz targets).
    EXPECT_THAT(parse_error({"--ewc", "1", "--fisher", std::string(300, 'f')}), HasSubstr("does not exist yet"));
    // A list of files given again replaces the earlier one, as a single value does, and parsing says so.
    for (const char* flag : {"--train-data", "--val-data", "--fisher-data", "--replay-data"}) {
        std::vector<std::string> argv = {"train", flag, "a.bin,c.bin", flag, "b.bin"};
        std::vector<char*> p;
        for (auto& s : argv) p.push_back(s.data());
        TrainArgs a;
        ASSERT_TRUE(parse_train_args((int)p.size(), p.data(), a));
        ASSERT_EQ(a.parse_notes.size(), 1u) << flag;
        EXPECT_THAT(a.parse_notes[0], HasSubstr(std::string(flag) + " given twice: the later list replaces the "
                                                "earlier (2 files)"));
    }
}

TrainArgs parsed(std::vector<std::string> argv) {
    argv.insert(argv.begin(), "train");
    std::vector<char*> p;
    for (auto& s : argv) p.push_back(s.data());
    TrainArgs a;
    EXPECT_TRUE(parse_train_args((int)p.size(), p.data(), a));
    return a;
}

// --lr-find sweeps a few hundred steps unless told otherwise; --lr-layer-factor ulmfit is Howard and Ruder's 1/2.6.
TEST(TrainArgsParse, LrFindDefaultsTo300StepsAndUlmfitFactorIsOneOver2_6) {
    EXPECT_EQ(parsed({}).steps, 100);
    EXPECT_EQ(parsed({"--lr-find"}).steps, 300);
    EXPECT_EQ(parsed({"--lr-find", "--steps", "50"}).steps, 50);
    EXPECT_EQ(parsed({"--steps", "50", "--lr-find"}).steps, 50);
    EXPECT_FLOAT_EQ(parsed({"--lr-layer-factor", "ulmfit"}).lr_layer_factor, 0.384615391f);  // 1/2.6
    EXPECT_FLOAT_EQ(parsed({"--lr-layer-factor", "0.5"}).lr_layer_factor, 0.5f);
    EXPECT_THAT(parse_error({"--lr-layer-factor", "ulm"}), HasSubstr("--lr-layer-factor"));
    EXPECT_THAT(parse_error({"--lr-layer-factor", "2"}), HasSubstr("--lr-layer-factor"));
    EXPECT_THAT(train_help(), HasSubstr("[100; 300 with --lr-find]"));
}

// bin/train's --windows is auto unless given; a program that fills TrainArgs itself gets what it sets (fixed).
TEST(TrainArgsParse, WindowsAreAutoOnTheCommandLine) {
    EXPECT_TRUE(parsed({}).windows_auto);
    EXPECT_FALSE(TrainArgs().windows_auto);
    const TrainArgs fixed = parsed({"--windows", "fixed"});
    EXPECT_FALSE(fixed.windows_auto);
    EXPECT_EQ(fixed.windows, Windows::fixed);
    EXPECT_EQ(parsed({"--windows", "single"}).windows, Windows::single);
    EXPECT_EQ(parsed({"--windows", "isolated"}).windows, Windows::isolated);
    EXPECT_TRUE(parsed({"--windows", "single", "--windows", "auto"}).windows_auto);
    EXPECT_THAT(parse_error({"--windows", "page"}), HasSubstr("expected auto, fixed, documents, single or isolated"));
    EXPECT_THAT(train_help(), HasSubstr("--windows auto|fixed|documents|single|isolated"));
}

// Isolated windows mask attention by document, which cuDNN's fused attention here cannot.
TEST(TrainArgsParse, IsolatedWindowsRefuseCudnnAttention) {
    EXPECT_THAT(parse_error({"--windows", "isolated", "--device", "cuda", "--precision", "bf16", "--attention",
                             "cudnn"}),
                HasSubstr("--windows isolated masks attention by document"));
    EXPECT_EQ(parse_error({"--windows", "isolated", "--device", "cuda", "--precision", "bf16"}), "");
    EXPECT_EQ(parse_error({"--windows", "isolated", "--virtual", "prompt", "--virtual-tokens", "4"}), "");
}

TEST(TrainArgsParse, HelpListsEveryOptionWithItsDefault) {
    const std::string h = train_help();
    for (const char* flag : {"--device", "--lr", "--batch", "--seq", "--grad-accum", "--steps", "--resume", "--init",
                             "--grad-clip", "--weight-decay", "--out"})
        EXPECT_THAT(h, HasSubstr(flag));
    EXPECT_THAT(h, HasSubstr("[0.0003]"));  // the real default learning rate
}

TEST_F(TrainerFixture, SequenceLongerThanTheBlockSizeIsRejected) {
    TrainArgs a = args("long");
    a.seq = 17;  // block size 16
    EXPECT_THAT(error_of([&] { Trainer t(a); }), HasSubstr("block size 16"));
}

}  // namespace
}  // namespace tune::test
