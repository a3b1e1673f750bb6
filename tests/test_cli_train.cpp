// bin/train as a user runs it: help, exit codes, error messages, and a short run that trains.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/fileio.h"
#include "data/shard.h"
#include "tests/model_util.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/cli.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

void on_stop_signal(int) {}

// bin/train and bin/prepare stop cleanly on SIGINT, SIGTERM and SIGHUP, but one started ignoring a signal
// (nohup, a script's background job) must not start taking it: `nohup bin/prepare ...` outlives the session.
TEST(ToolSignals, AnIgnoredSignalStaysIgnoredTheOthersAreCaught) {
    struct sigaction saved[3];
    const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) sigaction(sigs[i], nullptr, &saved[i]);
    std::signal(SIGHUP, SIG_IGN);
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    catch_stop_signals(on_stop_signal);
    struct sigaction now {};
    sigaction(SIGHUP, nullptr, &now);
    EXPECT_EQ(now.sa_handler, SIG_IGN);
    sigaction(SIGINT, nullptr, &now);
    EXPECT_EQ(now.sa_handler, &on_stop_signal);
    EXPECT_TRUE(now.sa_flags & SA_RESTART) << "a read or write the signal interrupts must go on";
    sigaction(SIGTERM, nullptr, &now);
    EXPECT_EQ(now.sa_handler, &on_stop_signal);
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &saved[i], nullptr);
}

// README's first command is `make && bin/train`, so `make` alone must build the tools. A rule that only added
// prerequisites, read before `all`, was the default goal for a while: a fresh clone's `make` built one object.
TEST(Makefile, PlainMakeBuildsTheTools) {
    // -p prints make's database (the default goal among it), -q runs nothing; the parent make's flags stay out, and
    // the stamp the Makefile writes as it is read goes to a folder of the test's own, not build/.
    TempDir tmp("make");
    CmdResult r = run_cmd("env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -pq BUILD=" + tmp.path());
    if (r.out.find("# GNU Make") == std::string::npos)
        GTEST_SKIP() << "make cannot read the Makefile here: " << r.out.substr(0, 300);
    EXPECT_THAT(r.out, HasSubstr("\n.DEFAULT_GOAL := all\n"));
}

// README: `make GPU_ARCH=80` for an A100. After a build for sm_90 it found the kernels up to date and kept them;
// the flags nvcc was given are a stamp the kernels' objects depend on. In a build folder of the test's own: a
// kernel's object newer than its source and than the stamp is up to date for the same flags, not for another arch.
TEST(Makefile, AnotherGpuArchCompilesTheKernelsAgain) {
    TempDir tmp("make");
    const std::string make = "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory BUILD=" + tmp.path();
    CmdResult read = run_cmd(make + " -pq");  // writes the stamp for the default arch
    if (read.out.find("# GNU Make") == std::string::npos)
        GTEST_SKIP() << "make cannot read the Makefile here: " << read.out.substr(0, 300);
    std::filesystem::create_directories(tmp.path() + "/kernels");
    const std::string obj = tmp.path() + "/kernels/gelu.o";
    ASSERT_EQ(run_cmd("touch -d '-1 hour' " + tmp.path() + "/nvcc-flags.stamp && touch " + obj).rc, 0);
    EXPECT_EQ(run_cmd(make + " -q " + obj).rc, 0) << "the same flags: up to date";
    EXPECT_EQ(run_cmd(make + " -q GPU_ARCH=80 " + obj).rc, 1) << "another arch: out of date";
    EXPECT_THAT(slurp(tmp.path() + "/nvcc-flags.stamp"), HasSubstr("-arch=sm_80"));
}

TEST(TrainCli, HelpExitsZeroAndListsOptions) {
    CmdResult r = run_cmd("bin/train --help");
    EXPECT_EQ(r.rc, 0);
    EXPECT_THAT(r.out, HasSubstr("usage: bin/train"));
    EXPECT_THAT(r.out, HasSubstr("--train-data"));
}

// --help's text is what the call is for, so a write of it that fails (a full disk; /dev/full here) is an error in
// every tool: bin/train and bin/tokenize exited 0.
TEST(TrainCli, EveryToolsHelpThatCannotBeWrittenExitsOne) {
    for (const char* tool : {"train", "prepare", "tokenize", "generate", "evaluate", "export"}) {
        CmdResult r = run_cmd(std::string("(bin/") + tool + " --help >/dev/full)");
        EXPECT_EQ(r.rc, 1) << tool << ": " << r.out;
        EXPECT_THAT(r.out, HasSubstr("standard output")) << tool;
    }
}

TEST(TrainCli, UsageErrorsExitTwoWithOneLine) {
    for (const char* args : {"--bogus", "--lr -1", "--batch 0", "--seq 100000 --device cpu", "--steps",
                             "--attention flash", "--attention cudnn --device cpu", "--attention cudnn --precision fp32",
                             "--stochastic-rounding --precision fp16"}) {
        CmdResult r = run_cmd(std::string("bin/train ") + args);
        EXPECT_EQ(r.rc, 2) << args << ": " << r.out;
        EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << args << ": " << r.out;
    }
}

// An empty value, as --init "$BASE" gives with BASE unset, is refused naming the flag: read as "not given" it
// trained from random weights, evaluated without the adapter, exported nothing merged, all with exit 0.
TEST(TrainCli, EmptyValueIsRefusedNamingTheFlag) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"bin/train --init ''", "--init"},           {"bin/train --val-data ''", "--val-data"},
        {"bin/train --teacher=", "--teacher"},       {"bin/train --steps ''", "--steps"},
        {"bin/generate --model x --adapter ''", "--adapter"},
        {"bin/generate --model x --prompt-file ''", "--prompt-file"},
        {"bin/evaluate --model x --choices ''", "--choices"}, {"bin/evaluate --model '' --data x", "--model"}};
    for (const auto& [cmd, flag] : cases) {
        CmdResult r = run_cmd(cmd);
        EXPECT_EQ(r.rc, 2) << cmd << ": " << r.out;
        EXPECT_THAT(r.out, HasSubstr(flag + ": empty (an unset variable?); give ")) << cmd;
        EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << cmd << ": " << r.out;
    }
    // Where '' means something of its own it is still taken: --out '' writes nothing, --prompt '' is no prompt.
    EXPECT_EQ(run_cmd("bin/train --out '' --help").rc, 0);
    CmdResult no_prompt = run_cmd("bin/generate --model /nonexistent --prompt ''");
    EXPECT_THAT(no_prompt.out, HasSubstr("--model: no such file or directory")) << no_prompt.out;
}

// --warmup rises to --lr; a schedule that starts from its low point then drops at once, which a note says.
TEST(TrainCli, WarmupBeforeAScheduleThatStartsLowIsNoted) {
    TempDir tmp("cliwarm");
    std::vector<int32_t> t(400);
    for (size_t i = 0; i < t.size(); i++) t[i] = (int32_t)(i * 7 % 50);
    write_shard(tmp.file("train.bin"), t, nullptr, 50257);
    const std::string run = "bin/train --device cpu --seq 8 --batch 1 --steps 2 --warmup 1 --train-data " +
                            tmp.file("train.bin") + " --out '' --schedule ";
    CmdResult stlr = run_cmd(run + "stlr");
    EXPECT_EQ(stlr.rc, 0) << stlr.out;
    EXPECT_THAT(stlr.out, HasSubstr("note: --warmup 1 with --schedule stlr: warmup rises to --lr, then stlr starts "
                                    "again from --lr/--ratio"));
    CmdResult tri = run_cmd(run + "triangular2");
    EXPECT_THAT(tri.out, HasSubstr("note: --warmup 1 with --schedule triangular2: warmup rises to --lr, then the "
                                   "cycles start from their base"));
    CmdResult cosine = run_cmd(run + "cosine");
    EXPECT_EQ(cosine.rc, 0) << cosine.out;
    EXPECT_THAT(cosine.out, ::testing::Not(HasSubstr("note: --warmup")));
}

// A beta2 that rounds to 1 in single precision would zero Adam's bias correction (every weight 0/0): the
// bound is the largest float below 1, and the message shows it as it is.
TEST(TrainCli, Beta2ThatRoundsToOneIsRefused) {
    CmdResult r = run_cmd("bin/train --beta2 0.99999999");
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr("--beta2: 0.99999999 is out of range [0, 0.99999994]"));
}

TEST(TrainCli, MissingFileIsAUsageErrorNamingIt) {
    for (const char* flag : {"--train-data", "--init", "--resume"}) {
        CmdResult r = run_cmd(std::string("bin/train --device cpu ") + flag + " /nonexistent/x.bin --out ''");
        EXPECT_EQ(r.rc, 2) << r.out;
        EXPECT_THAT(r.out, HasSubstr(std::string(flag) + ": no such file or directory: /nonexistent/x.bin"));
    }
    // A path through a file is named for what is wrong with it (the system says "not a directory").
    TempDir tmp("clipath");
    spit(tmp.file("afile"), "x");
    CmdResult r = run_cmd("bin/train --device cpu --init " + tmp.file("afile/x.ckpt") + " --out ''");
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr("--init: " + tmp.file("afile/x.ckpt") + ": " + tmp.file("afile") +
                                 " is a file, not a directory"));
    // A number past 64 bits is out of range, not "not a non-negative integer".
    r = run_cmd("bin/train --seed 18446744073709551616");
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr("--seed: 18446744073709551616 is out of range [0, 18446744073709551615]"));
}

// A directory where a shard or checkpoint belongs is a usage error naming the flag and the path (the
// reader used to end in std::bad_alloc).
TEST(TrainCli, DirectoryGivenAsDataOrCheckpointIsAUsageErrorNamingIt) {
    TempDir tmp("cli");
    const std::string notes = tmp.path();
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(), *be, 1, 1);
    m.init_random(1);
    save_checkpoint(tmp.file("init.ckpt"), m, nullptr, nullptr);
    std::vector<int32_t> t(200, 1);
    write_shard(tmp.file("train.bin"), t, nullptr, 37);
    const std::string init =
        " --init " + tmp.file("init.ckpt") + " --train-data " + tmp.file("train.bin") + " --batch 1 --seq 8";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"--train-data", ""}, {"--val-data", init}, {"--resume", " --train-data " + tmp.file("train.bin")}};  // flag, the other options it needs
    for (const auto& [flag, other] : cases) {
        CmdResult r = run_cmd("bin/train --device cpu --out ''" + other + " " + flag + " " + notes);
        EXPECT_EQ(r.rc, 2) << flag << ": " << r.out;
        EXPECT_THAT(r.out, HasSubstr(flag + ": " + notes + ": is a directory, not a file")) << flag;
        EXPECT_THAT(r.out, ::testing::Not(HasSubstr("bad_alloc"))) << flag;
    }
}

TEST(TrainCli, MalformedDataFileIsNamedAndExitsOne) {
    TempDir tmp("cli");
    spit(tmp.file("bad.bin"), "not a shard at all, just text");
    CmdResult r = run_cmd("bin/train --device cpu --train-data " + tmp.file("bad.bin") + " --out ''");
    EXPECT_EQ(r.rc, 1) << r.out;
    EXPECT_THAT(r.out, HasSubstr("bad.bin: not a token shard"));
}

TEST(TrainCli, ShortRunPrintsProgressAndMemoryMapAndLearns) {
    TempDir tmp("cli");
    const std::string d = tmp.path();
    std::vector<int32_t> t;
    for (int i = 0; i < 3000; i++) t.push_back((i * 5) % 37);  // a fixed cycle: easy to learn
    write_shard(d + "/train.bin", t, nullptr, 37);
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);
    m.init_random(1);
    save_checkpoint(d + "/init.ckpt", m, nullptr, nullptr);
    std::filesystem::create_directories(d + "/run");
    spit(d + "/run/adapter.ckpt", "an earlier LoRA run's");  // would pass for this run's
    CmdResult r = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                          "/train.bin --val-data " + d + "/train.bin --batch 2 --seq 15 --steps 30 --lr 1e-2 --out " +
                          d + "/run --overwrite");
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("note: removed " + d + "/run/adapter.ckpt of an earlier run"));
    EXPECT_FALSE(std::filesystem::exists(d + "/run/adapter.ckpt"));
    EXPECT_THAT(r.out, HasSubstr("memory: parameters"));
    EXPECT_THAT(r.out, HasSubstr("step    30/30 | loss"));
    EXPECT_THAT(r.out, HasSubstr("tok/s | ETA"));
    EXPECT_THAT(r.out, HasSubstr("validation loss"));
    for (const char* f : {"metrics.jsonl", "loss.svg", "model.ckpt", "resume.ckpt"})
        EXPECT_FALSE(slurp(d + "/run/" + f).empty()) << f;
}

// d/train.bin (a fixed cycle over V=37, 2000 tokens) and d/init.ckpt (a small random model) for short runs.
void write_cycle_data(const std::string& d) {
    std::vector<int32_t> t;
    for (int i = 0; i < 2000; i++) t.push_back((i * 5) % 37);
    write_shard(d + "/train.bin", t, nullptr, 37);
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);
    m.init_random(1);
    save_checkpoint(d + "/init.ckpt", m, nullptr, nullptr);
}

// Checkpoints record the longest --seq their weights trained at (TrainedOn::positions), over the runs they come
// from; bin/evaluate and bin/generate say when they use positions past it. Weights from a file that does not record
// it (made elsewhere, or before the record) make it unknown: no note.
TEST(TrainCli, TheLongestTrainingWindowIsRecordedAndAskedAbout) {
    TempDir tmp("cli");
    const std::string d = tmp.path();
    write_cycle_data(d);
    const std::string train = "bin/train --device cpu --quiet --train-data " + d + "/train.bin --batch 2 --steps 1 ";
    ASSERT_EQ(run_cmd(train + "--model tiny --seq 12 --out " + d + "/a").rc, 0);
    EXPECT_EQ(checkpoint_trained_on(d + "/a/model.ckpt").positions, 12);
    CmdResult b = run_cmd(train + "--init " + d + "/a/model.ckpt --seq 8 --lora-rank 2 --out " + d + "/b");
    ASSERT_EQ(b.rc, 0) << b.out;
    for (const char* f : {"model.ckpt", "adapter.ckpt", "resume.ckpt"})
        EXPECT_EQ(checkpoint_trained_on(d + "/b/" + f).positions, 12) << f << ": the longer of the two runs'";
    ASSERT_EQ(run_cmd(train + "--init " + d + "/init.ckpt --seq 8 --out " + d + "/c").rc, 0);
    EXPECT_EQ(checkpoint_trained_on(d + "/c/model.ckpt").positions, 0) << "init.ckpt records none: unknown";

    const std::string eval = "bin/evaluate --device cpu --data " + d + "/train.bin --batches 1 --model ";
    const std::string note = "trained 12 positions (its longest --seq); --seq 16 also scores positions past those, "
                             "which never trained (--seq 12 stays within them)";
    CmdResult longer = run_cmd(eval + d + "/b/model.ckpt --seq 16");
    ASSERT_EQ(longer.rc, 0) << longer.out;
    EXPECT_THAT(longer.out, HasSubstr(d + "/b/model.ckpt " + note));
    CmdResult same = run_cmd(eval + d + "/b/model.ckpt --seq 12");
    ASSERT_EQ(same.rc, 0) << same.out;
    EXPECT_THAT(same.out, Not(HasSubstr("positions past")));
    CmdResult unknown = run_cmd(eval + d + "/c/model.ckpt --seq 16");
    ASSERT_EQ(unknown.rc, 0) << unknown.out;
    EXPECT_THAT(unknown.out, Not(HasSubstr("positions past")));

    const std::string gen = "bin/generate --device cpu --model " + d + "/a/model.ckpt --prompt ' one two' --max-new ";
    CmdResult far = run_cmd(gen + "20 --temperature 0");
    ASSERT_EQ(far.rc, 0) << far.out;
    EXPECT_THAT(far.out, HasSubstr("/a/model.ckpt trained 12 positions; the prompt (2 tokens) and --max-new 20 reach "
                                   "21, and past 12 the text comes from positions that never trained"));

    // Virtual tokens take the first positions: 6 of them and --seq 8 train 14, more than a's 12.
    CmdResult v = run_cmd(train + "--init " + d + "/a/model.ckpt --seq 8 --virtual prompt --virtual-tokens 6 --out " + d +
                          "/v");
    ASSERT_EQ(v.rc, 0) << v.out;
    EXPECT_EQ(checkpoint_trained_on(d + "/v/model.ckpt").positions, 14);
    CmdResult within = run_cmd(eval + d + "/v/model.ckpt --seq 8");
    ASSERT_EQ(within.rc, 0) << within.out;
    EXPECT_THAT(within.out, Not(HasSubstr("positions past")));
    CmdResult past = run_cmd(eval + d + "/v/model.ckpt --seq 9");
    ASSERT_EQ(past.rc, 0) << past.out;
    EXPECT_THAT(past.out, HasSubstr("trained 14 positions (6 virtual tokens and its longest --seq); --seq 9 also scores "
                                    "positions past those, which never trained (--seq 8 stays within them)"));
    CmdResult near = run_cmd(gen + "11 --temperature 0");
    ASSERT_EQ(near.rc, 0) << near.out;
    EXPECT_THAT(near.out, Not(HasSubstr("never trained")));
}

// --profile-step N prints where step N's time went and writes profile.json: on the CPU, each op's wall time,
// under the model's ranges, adding up to no more than the step. With two micro-batches each model op runs twice.
TEST(TrainCli, ProfileStepSaysWhereTheStepsTimeWent) {
    TempDir tmp("cli");
    const std::string d = tmp.path();
    write_cycle_data(d);
    CmdResult r = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                          "/train.bin --batch 2 --seq 15 --grad-accum 2 --steps 3 --val-every 0 --profile-step 2 " +
                          "--out " + d + "/run");
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("profile of step 2 (wall time of each op on the CPU): the step took"));
    EXPECT_THAT(r.out, HasSubstr("· adamw_update\n"));
    EXPECT_THAT(r.out, HasSubstr("/run/{model.ckpt,resume.ckpt,metrics.jsonl,loss.svg,profile.json}\n"));
    const nlohmann::json j = nlohmann::json::parse(slurp(d + "/run/profile.json"));
    EXPECT_EQ(j.at("step"), 2);
    const double step_ms = j.at("step_ms").get<double>();
    std::map<std::string, int> calls;
    double sum = 0;
    for (const auto& op : j.at("ops")) {
        calls[op.at("where").get<std::string>() + " · " + op.at("op").get<std::string>()] = op.at("calls").get<int>();
        EXPECT_GE(op.at("ms").get<double>(), 0.0) << op.dump();
        sum += op.at("ms").get<double>();
    }
    EXPECT_GT(sum, 0.0);
    EXPECT_LE(sum, step_ms);
    const int L = 2, accum = 2;
    EXPECT_EQ(calls["layers / forward · matmul_forward"], 4 * L * accum);
    EXPECT_EQ(calls["layers / backward · matmul_backward"], 4 * L * accum);
    EXPECT_EQ(calls["head / loss · crossentropy_forward_backward"], accum);
    EXPECT_EQ(calls["embeddings / backward · encoder_backward"], accum);
    EXPECT_EQ(calls["optimizer · sum_squares"], 1);
    EXPECT_EQ(calls["optimizer · adamw_update"], 1);
    // Only step 2 was profiled: one table.
    EXPECT_EQ(r.out.find("profile of step"), r.out.rfind("profile of step"));
    // --quiet silences progress, not what was asked for: with --out '' the table is all a profile leaves.
    CmdResult quiet = run_cmd("bin/train --device cpu --quiet --init " + d + "/init.ckpt --train-data " + d +
                              "/train.bin --batch 2 --seq 15 --steps 2 --val-every 0 --profile-step 2 --out ''");
    ASSERT_EQ(quiet.rc, 0) << quiet.out;
    EXPECT_THAT(quiet.out, HasSubstr("profile of step 2 (wall time of each op on the CPU): the step took"));
    EXPECT_THAT(quiet.out, Not(HasSubstr("step     1/2 |")));
    // Not quiet, and no run directory: said so, not left blank.
    CmdResult nowhere = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                                "/train.bin --batch 2 --seq 15 --steps 1 --out ''");
    ASSERT_EQ(nowhere.rc, 0) << nowhere.out;
    EXPECT_THAT(nowhere.out, HasSubstr("; no run directory (--out '')\n"));

    r = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                "/train.bin --steps 2 --profile-step 3 --out ''");
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr("--profile-step: 3 is beyond --steps 2"));
    r = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                "/train.bin --lr-find --profile-step 1 --out ''");
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr("--profile-step profiles a training step, and --lr-find trains none"));
}

// A directory another run (or bin/prepare) is writing is refused, naming the holder, before anything is read or
// written there; once the holder ends, a run may use it. A new run where an earlier one left checkpoints is
// refused, saying what is there, and leaves them as they were; --resume goes on with that run (not with
// another's), --overwrite starts over.
TEST(TrainCli, ARunDirectoryInUseOrHoldingAnotherRunIsRefused) {
    TempDir tmp("clibusy");
    const std::string d = tmp.path();
    write_cycle_data(d);
    spit(d + "/x.txt", "some text\n");
    const std::string train = "bin/train --device cpu --quiet --init " + d + "/init.ckpt --seq 15 --batch 2 "
                              "--steps 2 --train-data " + d + "/train.bin --out " + d + "/run";
    const std::string prepare = "bin/prepare --quiet --out " + d + "/run " + d + "/x.txt";
    {
        const DirLock held(d + "/run", "a test");
        const std::string holder = d + "/run: in use by a test, pid " + std::to_string(getpid()) + " on host ";
        for (const std::string& cmd : {train, prepare}) {
            CmdResult r = run_cmd(cmd);
            EXPECT_EQ(r.rc, 1) << cmd << ": " << r.out;
            EXPECT_THAT(r.out, HasSubstr(holder)) << cmd;
        }
        EXPECT_FALSE(std::filesystem::exists(d + "/run/metrics.jsonl"));
    }
    EXPECT_FALSE(std::filesystem::exists(d + "/run/.lock")) << "the holder's end removes its lock";
    CmdResult halted = run_cmd(train + " --halt-at 1");
    ASSERT_EQ(halted.rc, 0) << halted.out;
    EXPECT_FALSE(std::filesystem::exists(d + "/run/.lock"));
    const std::string ckpt = slurp(d + "/run/resume.ckpt"), log = slurp(d + "/run/metrics.jsonl");
    CmdResult fresh = run_cmd(train);
    EXPECT_EQ(fresh.rc, 2) << fresh.out;
    EXPECT_THAT(fresh.out, HasSubstr("--out " + d + "/run holds an earlier run's checkpoints (resume.ckpt at step 1 "
                                     "of 2): go on with it with --resume " + d + "/run/resume.ckpt, give --overwrite "
                                     "to start over there"));
    EXPECT_EQ(slurp(d + "/run/resume.ckpt"), ckpt) << "the refused run changed the earlier run's checkpoint";
    EXPECT_EQ(slurp(d + "/run/metrics.jsonl"), log);
    CmdResult resumed = run_cmd(train + " --resume " + d + "/run/resume.ckpt");
    ASSERT_EQ(resumed.rc, 0) << resumed.out;
    EXPECT_TRUE(std::filesystem::exists(d + "/run/model.ckpt"));
    CmdResult again = run_cmd(train);
    EXPECT_EQ(again.rc, 2) << again.out;
    EXPECT_THAT(again.out, HasSubstr("holds an earlier run's checkpoints (resume.ckpt at step 2 of 2, model.ckpt: "
                                     "finished): give --overwrite"));
    // A finished run's resume.ckpt whose model.ckpt was moved away: still finished, nothing to go on with.
    const std::string in_moved = "bin/train --device cpu --quiet --seq 15 --batch 2 --steps 2 --train-data " + d +
                                 "/train.bin --out " + d + "/moved";
    std::filesystem::create_directories(d + "/moved");
    std::filesystem::copy_file(d + "/run/resume.ckpt", d + "/moved/resume.ckpt");
    CmdResult moved = run_cmd(in_moved + " --init " + d + "/init.ckpt");
    EXPECT_EQ(moved.rc, 2) << moved.out;
    EXPECT_THAT(moved.out, HasSubstr("(resume.ckpt at step 2 of 2: finished): give --overwrite"));
    // A --resume names the run to continue: its own resume.ckpt, or a copy kept from it.
    spit(d + "/kept.ckpt", slurp(d + "/moved/resume.ckpt"));
    EXPECT_EQ(run_cmd(in_moved + " --resume " + d + "/kept.ckpt").rc, 0);
    EXPECT_EQ(run_cmd(in_moved + " --resume " + d + "/moved/resume.ckpt").rc, 0);
    // Another run's checkpoint is no way in: refused, leaving the finished run there as it was (it removed its
    // model.ckpt and mixed the two runs' metrics). --overwrite lets it, and the log starts afresh.
    CmdResult other = run_cmd("bin/train --device cpu --quiet --init " + d + "/init.ckpt --seq 15 --batch 2 --steps 3 "
                              "--lr 1e-3 --train-data " + d + "/train.bin --out " + d + "/other --halt-at 1");
    ASSERT_EQ(other.rc, 0) << other.out;
    const std::string finished = slurp(d + "/run/model.ckpt"), finished_log = slurp(d + "/run/metrics.jsonl");
    CmdResult into = run_cmd(train + " --resume " + d + "/other/resume.ckpt");
    EXPECT_EQ(into.rc, 2) << into.out;
    EXPECT_THAT(into.out, HasSubstr("--out " + d + "/run holds another run's checkpoints (resume.ckpt at step 2 of 2, "
                                    "model.ckpt: finished; its options differ from those --resume " + d +
                                    "/other/resume.ckpt records)"));
    EXPECT_EQ(slurp(d + "/run/model.ckpt"), finished);
    EXPECT_EQ(slurp(d + "/run/metrics.jsonl"), finished_log);
    CmdResult replaced = run_cmd(train + " --resume " + d + "/other/resume.ckpt --overwrite");
    ASSERT_EQ(replaced.rc, 0) << replaced.out;
    EXPECT_EQ(slurp(d + "/run/metrics.jsonl").find("\"step\":1,"), std::string::npos)
        << "the replaced run's step 1 is still in the log:\n" << slurp(d + "/run/metrics.jsonl");
    // A file this run reads is not an earlier run's to replace: --init from its own --out.
    std::filesystem::create_directories(d + "/own");
    std::filesystem::copy_file(d + "/init.ckpt", d + "/own/model.ckpt");
    CmdResult own = run_cmd("bin/train --device cpu --quiet --seq 15 --batch 2 --steps 1 --train-data " + d +
                            "/train.bin --init " + d + "/own/model.ckpt --out " + d + "/own");
    EXPECT_EQ(own.rc, 0) << own.out;
    CmdResult over = run_cmd(train + " --overwrite --halt-at 1");
    ASSERT_EQ(over.rc, 0) << over.out;
    EXPECT_THAT(over.out, HasSubstr("note: removed " + d + "/run/model.ckpt of an earlier run"));
    EXPECT_FALSE(std::filesystem::exists(d + "/run/model.ckpt"));
}

// A run let replace an earlier one (--overwrite) and killed before its first checkpoint leaves no resume.ckpt of
// that run beside its own log: a --resume of it would have gone on with the earlier run, its log mixed into this
// one's. The directory reads as empty of checkpoints, so the command is simply run again.
TEST(TrainCli, AnOverwritingRunKilledBeforeItsFirstCheckpointLeavesNoEarlierResumeCheckpoint) {
    TempDir tmp("clikilled");
    const std::string d = tmp.path();
    write_cycle_data(d);
    const std::string train = "bin/train --device cpu --quiet --init " + d + "/init.ckpt --seq 15 --batch 2 "
                              "--train-data " + d + "/train.bin --out " + d + "/run ";
    ASSERT_EQ(run_cmd(train + "--steps 2").rc, 0);
    ASSERT_TRUE(std::filesystem::exists(d + "/run/resume.ckpt"));
    // (So that the wait below sees the new run's step 1, not the earlier run's.)
    std::filesystem::remove(d + "/run/metrics.jsonl");
    spit(d + "/kill.sh", train + "--steps 100000 --overwrite 2> " + d + "/err & pid=$!\n"
         "for i in $(seq 300); do grep -qs '\"step\":1,' " + d + "/run/metrics.jsonl && break; sleep 0.1; done\n"
         "kill -KILL $pid; wait $pid; echo \"status $?\"\n");
    CmdResult killed = run_cmd("timeout 120 bash " + d + "/kill.sh");
    EXPECT_THAT(killed.out, HasSubstr("status 137"));
    EXPECT_THAT(slurp(d + "/err"), HasSubstr("note: removed " + d + "/run/resume.ckpt of an earlier run (this run "
                                             "writes its own at its first checkpoint)"));
    EXPECT_FALSE(std::filesystem::exists(d + "/run/resume.ckpt"));
    EXPECT_FALSE(std::filesystem::exists(d + "/run/model.ckpt"));
    CmdResult again = run_cmd(train + "--steps 2");
    EXPECT_EQ(again.rc, 0) << again.out;
}

// A stop signal while the run sets up (here: a Fisher estimate of ten million batches; in earnest, gpt2-xl's
// weights or a real estimate) ends it by the signal, saying that nothing had been trained.
TEST(TrainCli, AStopWhileSettingUpEndsTheRunAndSaysNothingWasTrained) {
    TempDir tmp("clisetup");
    const std::string d = tmp.path();
    write_cycle_data(d);
    spit(d + "/stop.sh", "bin/train --device cpu --quiet --init " + d + "/init.ckpt --seq 15 --batch 2 --steps 2 "
         "--train-data " + d + "/train.bin --ewc 1 --fisher " + d + "/fisher.safetensors --fisher-data " + d +
         "/train.bin --fisher-batches 10000000 --out " + d + "/run & pid=$!\n"
         "for i in $(seq 300); do [ -e " + d + "/run/.lock ] && break; sleep 0.1; done\n"
         "sleep 0.5; kill -TERM $pid; wait $pid; echo \"status $?\"\n");
    CmdResult r = run_cmd("timeout 120 bash " + d + "/stop.sh");
    EXPECT_THAT(r.out, HasSubstr("train: stopped before the run began training (nothing of it to save)"));
    EXPECT_THAT(r.out, HasSubstr("status 143"));
}

// Settings that could not do what they ask are refused before the run: --halt-at with --out '' (the steps were
// trained and then lost), a --profile-step past --halt-at or at a step a resume has done already (no profile, no
// word), and a new run over a resume.ckpt that does not read as one (cut short: taken for "nothing there" and
// replaced, though it may be a run's only copy).
TEST(TrainCli, SettingsThatCouldNotWorkAreRefusedBeforeTheRun) {
    TempDir tmp("clinever");
    const std::string d = tmp.path();
    write_cycle_data(d);
    const std::string train = "bin/train --device cpu --quiet --init " + d + "/init.ckpt --seq 15 --batch 2 "
                              "--steps 4 --train-data " + d + "/train.bin ";
    CmdResult lost = run_cmd(train + "--halt-at 2 --out ''");
    EXPECT_EQ(lost.rc, 2) << lost.out;
    EXPECT_THAT(lost.out, HasSubstr("--halt-at stops the run to write its resume checkpoint, and --out '' writes "
                                    "nothing"));
    CmdResult past = run_cmd(train + "--halt-at 2 --profile-step 3 --out " + d + "/run");
    EXPECT_EQ(past.rc, 2) << past.out;
    EXPECT_THAT(past.out, HasSubstr("--profile-step: 3 is beyond --halt-at 2: it would never run"));
    ASSERT_EQ(run_cmd(train + "--halt-at 2 --out " + d + "/run").rc, 0);
    CmdResult done = run_cmd(train + "--profile-step 2 --resume " + d + "/run/resume.ckpt --out " + d + "/run");
    EXPECT_EQ(done.rc, 2) << done.out;
    EXPECT_THAT(done.out, HasSubstr("--profile-step 2: " + d + "/run/resume.ckpt is at step 2 already, so it would "
                                    "never run"));
    const std::string whole = slurp(d + "/run/resume.ckpt");
    spit(d + "/run/resume.ckpt", whole.substr(0, 10));  // an interrupted copy
    CmdResult fresh = run_cmd(train + "--out " + d + "/run");
    EXPECT_EQ(fresh.rc, 2) << fresh.out;
    EXPECT_THAT(fresh.out, HasSubstr("--out " + d + "/run holds an earlier run's checkpoints (resume.ckpt, which does "
                                     "not read as one: cut short or damaged"));
    EXPECT_EQ(slurp(d + "/run/resume.ckpt"), whole.substr(0, 10));
}

// --windows documents from the command line: prepared prompt/completion examples train and evaluate in document
// windows (the progress says what their padding costs), a model without <|endoftext|> is refused, and a resume
// that changes the windows is named like any changed option.
TEST(TrainCli, DocumentWindowsTrainEvaluateAndResume) {
    TempDir tmp("clidocs");
    const std::string d = tmp.path();
    std::string jsonl;
    for (int i = 0; i < 12; i++)
        jsonl += "{\"prompt\": \"Question " + std::to_string(i) + ": which word is an animal, cat or red?\\n\", "
                 "\"completion\": \"cat\"}\n";
    std::string words;
    for (int i = 0; i < 40; i++) words += " dog";
    jsonl += "{\"prompt\": \"Which word?" + words + "\", \"completion\": \" dog\"}\n";  // 40+ tokens: over a window
    spit(d + "/x.jsonl", jsonl);
    CmdResult prep = run_cmd("bin/prepare --quiet --val-frac 0 --out " + d + "/p " + d + "/x.jsonl");
    ASSERT_EQ(prep.rc, 0) << prep.out;
    const std::string train = "bin/train --device cpu --model tiny --train-data " + d + "/p/train.bin --seq 32 "
                              "--batch 2 --steps 2 --windows documents --out " + d + "/run";
    CmdResult r = run_cmd(train + " --halt-at 1");
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, Not(HasSubstr("would keep those examples whole")));
    EXPECT_THAT(r.out, HasSubstr("document windows of 32 ("));
    EXPECT_THAT(r.out, HasSubstr("% of their positions hold a target, the rest is padding)"));
    EXPECT_THAT(r.out, HasSubstr("note: --windows documents: 1 document of --train-data is longer than a window of "
                                 "--seq 32: each is cut into windows"));
    // Resumed without --windows, a run goes on with its own windows (auto would choose them for this data too;
    // --windows fixed below would not).
    std::filesystem::copy_file(d + "/run/resume.ckpt", d + "/kept.ckpt");
    CmdResult same = run_cmd("bin/train --device cpu --model tiny --train-data " + d + "/p/train.bin --seq 32 "
                             "--batch 2 --steps 2 --out " + d + "/same --resume " + d + "/kept.ckpt");
    ASSERT_EQ(same.rc, 0) << same.out;
    EXPECT_THAT(same.out, Not(HasSubstr("(was ")));
    EXPECT_THAT(same.out, HasSubstr("document windows of 32 ("));
    EXPECT_THAT(same.out, Not(HasSubstr("--windows auto"))) << "the run's own choice, not auto's";
    CmdResult changed = run_cmd("bin/train --device cpu --model tiny --train-data " + d + "/p/train.bin --seq 32 "
                                "--batch 2 --steps 2 --out " + d + "/run --resume " + d + "/run/resume.ckpt "
                                "--windows fixed");
    ASSERT_EQ(changed.rc, 0) << changed.out;
    EXPECT_THAT(changed.out, HasSubstr("--windows fixed (was documents)"));
    // The short examples are 16 tokens (the long one comes last): fixed windows of 32 hold two whole ones each,
    // and bin/train has nothing to say; fixed windows of 20 cut them, and it says how many of their tokens.
    EXPECT_THAT(changed.out, Not(HasSubstr("note: --train-data: ")));
    CmdResult cut = run_cmd("bin/train --device cpu --model tiny --train-data " + d + "/p/train.bin --seq 20 "
                            "--batch 2 --steps 1 --out '' --windows fixed");
    ASSERT_EQ(cut.rc, 0) << cut.out;
    EXPECT_THAT(cut.out, HasSubstr(" counted tokens ("));
    EXPECT_THAT(cut.out, HasSubstr("%) are trained in a window of --seq 20 that starts inside their example, without "
                                   "its beginning; --windows documents would keep those examples whole"));
    CmdResult ev = run_cmd("bin/evaluate --device cpu --model " + d + "/run/model.ckpt --data " + d +
                           "/p/train.bin --seq 32 --windows documents");
    ASSERT_EQ(ev.rc, 0) << ev.out;
    EXPECT_THAT(ev.out, HasSubstr("loss "));
    EXPECT_EQ(checkpoint_trained_on(d + "/run/model.ckpt").windows, Windows::fixed) << "its last run's windows";
    // A run on document windows (here one document a window) records them in every checkpoint it writes (an
    // adapter's too). bin/generate then asks the model as it trained, after an <|endoftext|>, and says so;
    // bin/evaluate notes it.
    CmdResult docs = run_cmd("bin/train --device cpu --init " + d + "/run/model.ckpt --train-data " + d +
                             "/p/train.bin --seq 32 --batch 2 --steps 1 --windows single --lora-rank 2 --out " + d +
                             "/docs");
    ASSERT_EQ(docs.rc, 0) << docs.out;
    EXPECT_THAT(docs.out, HasSubstr("training tokens in 14 document windows of 32 ("))
        << "12 short examples one a window, the long one in two";
    for (const char* f : {"model.ckpt", "adapter.ckpt", "resume.ckpt"})
        EXPECT_EQ(checkpoint_trained_on(d + "/docs/" + f).windows, Windows::single) << f;
    const std::string gen = "bin/generate --device cpu --model " + d + "/docs/model.ckpt --prompt 'Question 3:' "
                            "--max-new 6 --temperature 0";
    CmdResult asked = run_cmd(gen), forced = run_cmd(gen + " --eot-first"), plain = run_cmd(gen + " --no-eot-first");
    ASSERT_EQ(asked.rc, 0) << asked.out;
    const std::string note = "note: " + d + "/docs/model.ckpt was trained on document windows: the prompt goes "
                             "after <|endoftext|>, as its examples did (--no-eot-first: the prompt alone)\n";
    ASSERT_THAT(asked.out, HasSubstr(note));
    EXPECT_EQ(asked.out.substr(0, asked.out.find(note)) + asked.out.substr(asked.out.find(note) + note.size()),
              forced.out);
    EXPECT_THAT(plain.out, Not(HasSubstr("note:")));
    // The adapter is the latest training: its windows count, not its base's.
    CmdResult on_base = run_cmd("bin/generate --device cpu --model " + d + "/run/model.ckpt --adapter " + d +
                                "/docs/adapter.ckpt --prompt 'Question 3:' --max-new 2");
    EXPECT_EQ(on_base.rc, 0) << on_base.out;
    EXPECT_THAT(on_base.out, HasSubstr("note: " + d + "/docs/adapter.ckpt was trained on document windows"));
    CmdResult both = run_cmd(gen + " --eot-first --no-eot-first");
    EXPECT_EQ(both.rc, 2) << both.out;
    EXPECT_THAT(both.out, HasSubstr("--eot-first and --no-eot-first: give one, not both"));
    CmdResult ev_docs = run_cmd("bin/evaluate --device cpu --model " + d + "/docs/model.ckpt --data " + d +
                                "/p/train.bin --seq 32");
    ASSERT_EQ(ev_docs.rc, 0) << ev_docs.out;
    EXPECT_THAT(ev_docs.out, HasSubstr("; document windows: --windows auto, as the data is prompt/completion)"));
    EXPECT_THAT(ev_docs.out, HasSubstr("note: " + d + "/docs/model.ckpt was trained on document windows; --windows "
                                       "single measures it on windows like those (this pass: --windows documents)"));
    // Isolated windows pack the documents as `documents` does, but each sees only itself at positions from 0: the
    // loss of every document is then the one it has alone in a window (`single`), and so is the mean.
    auto loss_of = [](const std::string& out) {
        const size_t at = out.find("loss ");
        return at == std::string::npos ? NAN : std::stod(out.substr(at + 5));
    };
    const std::string ev_model = "bin/evaluate --device cpu --model " + d + "/docs/model.ckpt --data " + d +
                                 "/p/train.bin --seq 32 --windows ";
    CmdResult ev_single = run_cmd(ev_model + "single"), ev_isolated = run_cmd(ev_model + "isolated"),
              ev_packed = run_cmd(ev_model + "documents");
    ASSERT_EQ(ev_isolated.rc, 0) << ev_isolated.out;
    EXPECT_NEAR(loss_of(ev_isolated.out), loss_of(ev_single.out), 2e-4) << ev_isolated.out << ev_single.out;
    EXPECT_NE(loss_of(ev_isolated.out), loss_of(ev_packed.out)) << "packed documents that see each other differ";
    // Training on them: the distillation teacher (the starting model) sees the student's positions, so their KL
    // at the first step is 0; validation sees them too, so its loss is bin/evaluate's on isolated windows.
    CmdResult iso = run_cmd("bin/train --device cpu --init " + d + "/run/model.ckpt --train-data " + d +
                            "/p/train.bin --val-data " + d + "/p/train.bin --val-every 1 --val-batches 1000 --seq 32 "
                            "--batch 2 --steps 1 --distill 0.5 --windows isolated --out " + d + "/iso");
    ASSERT_EQ(iso.rc, 0) << iso.out;
    EXPECT_THAT(iso.out, HasSubstr("isolated document windows of 32 ("));
    EXPECT_EQ(checkpoint_trained_on(d + "/iso/model.ckpt").windows, Windows::isolated);
    double kl = NAN, val = NAN;
    std::istringstream lines(slurp(d + "/iso/metrics.jsonl"));
    for (std::string line; std::getline(lines, line);) {
        const nlohmann::json j = nlohmann::json::parse(line);
        if (j.contains("distill_kl")) kl = j["distill_kl"].get<double>();
        if (j.contains("val_loss")) val = j["val_loss"].get<double>();
    }
    EXPECT_NEAR(kl, 0.0, 1e-6) << "the teacher saw other positions than the student";
    CmdResult ev_iso = run_cmd("bin/evaluate --device cpu --model " + d + "/iso/model.ckpt --data " + d +
                               "/p/train.bin --seq 32 --windows isolated");
    ASSERT_EQ(ev_iso.rc, 0) << ev_iso.out;
    EXPECT_NEAR(val, loss_of(ev_iso.out), 2e-4) << ev_iso.out;
    // With virtual tokens every packed document sees them, as it would alone: a soft prompt trained on isolated
    // windows scores the same on isolated and single windows; and a resume of an isolated run cannot take cuDNN's
    // attention.
    CmdResult prompt = run_cmd("bin/train --device cpu --init " + d + "/run/model.ckpt --train-data " + d +
                               "/p/train.bin --seq 32 --batch 2 --steps 2 --windows isolated --virtual prompt "
                               "--virtual-tokens 2 --out " + d + "/prompt");
    ASSERT_EQ(prompt.rc, 0) << prompt.out;
    const std::string ev_prompt = "bin/evaluate --device cpu --model " + d + "/run/model.ckpt --adapter " + d +
                                  "/prompt/adapter.ckpt --data " + d + "/p/train.bin --seq 32 --windows ";
    CmdResult ev_prompt_iso = run_cmd(ev_prompt + "isolated"), ev_prompt_single = run_cmd(ev_prompt + "single");
    ASSERT_EQ(ev_prompt_iso.rc, 0) << ev_prompt_iso.out;
    ASSERT_EQ(ev_prompt_single.rc, 0) << ev_prompt_single.out;
    EXPECT_NEAR(loss_of(ev_prompt_iso.out), loss_of(ev_prompt_single.out), 2e-4)
        << ev_prompt_iso.out << ev_prompt_single.out;
    CmdResult resumed_cudnn = run_cmd("bin/train --device cuda --precision bf16 --attention cudnn --train-data " + d +
                                      "/p/train.bin --seq 32 --batch 2 --steps 2 --resume " + d +
                                      "/iso/resume.ckpt --out ''");
    EXPECT_EQ(resumed_cudnn.rc, 2) << resumed_cudnn.out;
    EXPECT_THAT(resumed_cudnn.out, HasSubstr("continues a run on --windows isolated"));
    // Multiple choice asks it the same way: after an <|endoftext|>, with a note, as --eot-first does.
    spit(d + "/choices.jsonl", "{\"context\": \"Question 3: which word is an animal, cat or red?\\n\", "
                               "\"endings\": [\"cat\", \"red\"], \"label\": 0}\n");
    const std::string mc =
        "bin/evaluate --device cpu --model " + d + "/docs/model.ckpt --choices " + d + "/choices.jsonl";
    CmdResult mc_auto = run_cmd(mc), mc_forced = run_cmd(mc + " --eot-first");
    CmdResult mc_plain = run_cmd(mc + " --no-eot-first");
    ASSERT_EQ(mc_auto.rc, 0) << mc_auto.out;
    const std::string mc_note = "note: " + d + "/docs/model.ckpt was trained on document windows: every context goes "
                                "after <|endoftext|>, as its examples did (--no-eot-first: the contexts alone)\n";
    ASSERT_THAT(mc_auto.out, HasSubstr(mc_note));
    EXPECT_EQ(mc_auto.out.substr(0, mc_auto.out.find(mc_note)) +
                  mc_auto.out.substr(mc_auto.out.find(mc_note) + mc_note.size()),
              mc_forced.out);
    EXPECT_THAT(mc_forced.out, HasSubstr("multiple choice: 1 example |"));
    EXPECT_EQ(mc_plain.rc, 0) << mc_plain.out;
    EXPECT_THAT(mc_plain.out, Not(HasSubstr("note:")));
    CmdResult mc_data = run_cmd("bin/evaluate --device cpu --model " + d + "/docs/model.ckpt --data " + d +
                                "/p/train.bin --eot-first");
    EXPECT_EQ(mc_data.rc, 2) << mc_data.out;
    EXPECT_THAT(mc_data.out, HasSubstr("--eot-first has no effect without --choices"));
    write_cycle_data(d);  // a model of 37 tokens
    CmdResult small = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                              "/train.bin --seq 15 --steps 1 --out '' --windows documents");
    EXPECT_EQ(small.rc, 2) << small.out;
    EXPECT_THAT(small.out, HasSubstr("--windows documents: the model's vocabulary of 37 tokens has no "
                                     "<|endoftext|> (id 50256) to find documents by"));
    CmdResult pages = run_cmd("bin/train --windows pages");
    EXPECT_EQ(pages.rc, 2);
    EXPECT_THAT(pages.out, HasSubstr("--windows: expected auto, fixed, documents, single or isolated, got 'pages'"));
}

// --windows auto, bin/train's default: prompt/completion data (a target with loss weight 0) trains on document
// windows, said on the start line and recorded in the checkpoints; plain text keeps fixed windows; a model whose
// vocabulary has no <|endoftext|> keeps fixed windows on any data. A resume goes on with its run's windows, also
// a fixed-window run on prompt/completion data, and a --vocab that served auto may be repeated.
TEST(TrainCli, AutoWindowsAreDocumentsForPromptCompletionDataOnly) {
    TempDir tmp("cliauto");
    const std::string d = tmp.path();
    std::string jsonl, text;
    for (int i = 0; i < 12; i++) {
        jsonl += "{\"prompt\": \"Question " + std::to_string(i) + ": which word is an animal, cat or red?\\n\", "
                 "\"completion\": \"cat\"}\n";
        text += "Line " + std::to_string(i) + " of some plain text, which every token of trains on.\n";
    }
    spit(d + "/x.jsonl", jsonl);
    spit(d + "/x.txt", text);
    ASSERT_EQ(run_cmd("bin/prepare --quiet --val-frac 0 --out " + d + "/p " + d + "/x.jsonl").rc, 0);
    ASSERT_EQ(run_cmd("bin/prepare --quiet --val-frac 0 --out " + d + "/t " + d + "/x.txt").rc, 0);
    const std::string train = "bin/train --device cpu --model tiny --seq 32 --batch 2 --steps 1 --train-data ";
    CmdResult pc = run_cmd(train + d + "/p/train.bin --out " + d + "/pc");
    ASSERT_EQ(pc.rc, 0) << pc.out;
    EXPECT_THAT(pc.out, HasSubstr("document windows of 32 (--windows auto, as the data is prompt/completion; "));
    EXPECT_EQ(checkpoint_trained_on(d + "/pc/model.ckpt").windows, Windows::documents);
    CmdResult plain = run_cmd(train + d + "/t/train.bin --out " + d + "/plain");
    ASSERT_EQ(plain.rc, 0) << plain.out;
    EXPECT_THAT(plain.out, HasSubstr(" windows of 32; run directory"));
    EXPECT_THAT(plain.out, Not(HasSubstr("document windows")));
    EXPECT_EQ(checkpoint_trained_on(d + "/plain/model.ckpt").windows, Windows::fixed);
    const std::string fx = "bin/train --device cpu --model tiny --seq 32 --batch 2 --steps 2 --train-data " + d +
                           "/p/train.bin --out " + d + "/fx";
    CmdResult fixed = run_cmd(fx + " --windows fixed --halt-at 1");
    ASSERT_EQ(fixed.rc, 0) << fixed.out;
    EXPECT_THAT(fixed.out, Not(HasSubstr("document windows")));
    CmdResult fixed_on = run_cmd(fx + " --resume " + d + "/fx/resume.ckpt");
    ASSERT_EQ(fixed_on.rc, 0) << fixed_on.out;
    EXPECT_THAT(fixed_on.out, Not(HasSubstr("document windows")));
    EXPECT_THAT(fixed_on.out, Not(HasSubstr("(was ")));
    EXPECT_EQ(checkpoint_trained_on(d + "/fx/model.ckpt").windows, Windows::fixed);
    const std::string vocab = "bin/train --device cpu --model tiny --seq 32 --batch 2 --steps 2 --vocab ./data/gpt2 "
                              "--train-data " + d + "/t/train.bin --out " + d + "/v";
    CmdResult v1 = run_cmd(vocab + " --halt-at 1"), v2 = run_cmd(vocab + " --resume " + d + "/v/resume.ckpt");
    ASSERT_EQ(v1.rc, 0) << v1.out;
    EXPECT_EQ(v2.rc, 0) << v2.out;
    write_cycle_data(d);  // a model of 37 tokens, whose vocabulary holds no <|endoftext|>
    std::vector<int32_t> t;
    std::vector<uint8_t> mask;
    for (int i = 0; i < 300; i++) {
        t.push_back((i * 5) % 37);
        mask.push_back(i % 3 != 0);
    }
    write_shard(d + "/m37.bin", t, &mask, 37);
    CmdResult small = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d + "/m37.bin "
                              "--seq 15 --batch 2 --steps 1 --out ''");
    ASSERT_EQ(small.rc, 0) << small.out;
    EXPECT_THAT(small.out, HasSubstr(" windows of 15;"));
    EXPECT_THAT(small.out, Not(HasSubstr("document windows")));
    // bin/evaluate decides the same way; on plain text it notes a model trained on document windows.
    const std::string ev = "bin/evaluate --device cpu --seq 32 --model " + d + "/pc/model.ckpt --data ";
    CmdResult ev_pc = run_cmd(ev + d + "/p/train.bin"), ev_plain = run_cmd(ev + d + "/t/train.bin");
    ASSERT_EQ(ev_pc.rc, 0) << ev_pc.out;
    EXPECT_THAT(ev_pc.out, HasSubstr("; document windows: --windows auto, as the data is prompt/completion)"));
    ASSERT_EQ(ev_plain.rc, 0) << ev_plain.out;
    EXPECT_THAT(ev_plain.out, HasSubstr("note: " + d + "/pc/model.ckpt was trained on document windows; --windows "
                                        "documents measures it on windows like those (this pass: --windows fixed)"));
    EXPECT_THAT(ev_pc.out, Not(HasSubstr("note:"))) << "measured on the windows it trained on";
    EXPECT_THAT(ev_plain.out, Not(HasSubstr("document windows: --windows auto")));
}

// Data named twice, or validation data that is also training (or replayed) data, is allowed but noted.
TEST(TrainCli, RepeatedOrOverlappingDataIsNoted) {
    TempDir tmp("clioverlap");
    const std::string d = tmp.path();
    write_cycle_data(d);
    CmdResult r = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --seq 15 --steps 1 --out '' --train-data " +
                          d + "/train.bin," + d + "/./train.bin --val-data " + d + "/train.bin");
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("note: --train-data names " + d + "/./train.bin twice"));
    EXPECT_THAT(r.out, HasSubstr("note: --val-data " + d + "/train.bin is also --train-data"));
    // Replayed data is trained on too.
    spit(d + "/other.bin", slurp(d + "/train.bin"));
    CmdResult replay = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --seq 15 --steps 1 --out '' "
                               "--train-data " + d + "/other.bin --val-data " + d + "/train.bin --replay-data " + d +
                               "/train.bin --replay-frac 0.5");
    ASSERT_EQ(replay.rc, 0) << replay.out;
    EXPECT_THAT(replay.out, HasSubstr("note: --val-data " + d + "/train.bin is also --replay-data"));
    EXPECT_THAT(replay.out, Not(HasSubstr("is also --train-data")));
}

// A resume names every option that changes the run's trajectory, by its flag, with values as they were typed
// (0.005, not 0.00499999989); an unchanged resume names none.
TEST(TrainCli, ResumeNamesChangedOptionsByTheirFlags) {
    TempDir tmp("cliresume");
    const std::string d = tmp.path();
    write_cycle_data(d);
    const std::string base = "bin/train --device cpu --quiet --init " + d + "/init.ckpt --train-data " + d +
                             "/train.bin --batch 2 --seq 15 --steps 6 --lr 1e-3 --seed 1234567890 --out " + d + "/run";
    CmdResult first = run_cmd(base + " --halt-at 2");
    ASSERT_EQ(first.rc, 0) << first.out;
    const std::string resume = " --resume " + d + "/run/resume.ckpt --halt-at 4";
    CmdResult same = run_cmd(base + resume);
    ASSERT_EQ(same.rc, 0) << same.out;
    EXPECT_THAT(same.out, Not(HasSubstr("changed options")));
    CmdResult changed = run_cmd("bin/train --device cpu --quiet --init " + d + "/init.ckpt --train-data " + d +
                                "/train.bin --batch 2 --seq 15 --steps 6 --lr 0.005 --seed 1234567891 --out " + d +
                                "/run --sequential "
                                "--min-lr-frac 0.5 --beta2 0.5 --eps 1e-3 --resume " + d + "/run/resume.ckpt --halt-at 5");
    ASSERT_EQ(changed.rc, 0) << changed.out;
    for (const char* part : {"--lr 0.005 (was 0.001)", "--sequential on (was off)", "--min-lr-frac 0.5 (was 0.1)",
                             "--beta2 0.5 (was 0.95)", "--eps 0.001 (was 1e-08)",
                             "--seed 1234567891 (was 1234567890)"})  // equal as floats, not as seeds
        EXPECT_THAT(changed.out, HasSubstr(part));
}

// The run directory's edges: a killed run's checkpoint temporaries on this host are removed (another host's
// stay), an --out that is a file is refused, an empty --out says that nothing will be written, and SIGHUP (a
// closed terminal) saves the run like Ctrl-C.
TEST(TrainCli, RunDirectoryTemporariesFilesEmptyOutAndHangup) {
    TempDir tmp("cliedges");
    const std::string d = tmp.path();
    write_cycle_data(d);
    const std::string base = "bin/train --device cpu --quiet --init " + d + "/init.ckpt --train-data " + d +
                             "/train.bin --batch 2 --seq 15 ";
    const pid_t child = fork();
    if (child == 0) _exit(0);
    ASSERT_GT(child, 0);
    waitpid(child, nullptr, 0);  // a process id that is gone
    std::filesystem::create_directories(d + "/run");
    const std::string dead = d + "/run/resume.ckpt.tmp." + host_name() + "." + std::to_string(child) + ".3";
    const std::string other = d + "/run/resume.ckpt.tmp.another-host." + std::to_string(child) + ".3";
    spit(dead, "half a checkpoint");
    spit(other, "half a checkpoint");
    CmdResult r = run_cmd(base + "--steps 2 --out " + d + "/run");
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("note: " + dead + ": left by a run that was killed"));
    EXPECT_FALSE(std::filesystem::exists(dead));
    EXPECT_TRUE(std::filesystem::exists(other));
    spit(d + "/afile", "x");
    CmdResult f = run_cmd(base + "--steps 2 --out " + d + "/afile");
    EXPECT_EQ(f.rc, 2) << f.out;
    EXPECT_THAT(f.out, HasSubstr("--out " + d + "/afile: is a file, not a directory"));
    CmdResult none = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                             "/train.bin --batch 2 --seq 15 --steps 1 --out ''");
    EXPECT_EQ(none.rc, 0) << none.out;
    EXPECT_THAT(none.out, HasSubstr("note: --out is empty: this run writes nothing"));
    CmdResult hup = run_cmd("timeout --preserve-status -s HUP 3 " + base + "--steps 100000 --out " + d + "/hup");
    EXPECT_EQ(hup.rc, 130) << hup.out;
    EXPECT_THAT(hup.out, HasSubstr("interrupted after step"));
    EXPECT_FALSE(slurp(d + "/hup/resume.ckpt").empty());
}

// A stop signal finishes the step and writes resume.ckpt; a second one 2 s or more later, while that write takes
// long (a test hook makes it take 60 s), ends the process at once, by the signal, and says so. A repeat within
// 2 s (a terminal's hangup arriving twice; pkill reaching mpirun and its ranks) is the same stop: the run writes
// its checkpoint (here 2 s) and ends with status 130. (SIGTERM: a script's background job ignores SIGINT.)
TEST(TrainCli, ASecondStopSignalEndsTheRunAtOnceAQuickRepeatDoesNot) {
    TempDir tmp("clitwice");
    const std::string d = tmp.path();
    write_cycle_data(d);
    auto script = [&](const std::string& run, int slow, const char* gap) {
        spit(d + "/twice.sh",
             "TUNE_TEST_SLOW_CHECKPOINT=" + std::to_string(slow) + " bin/train --device cpu --quiet --init " + d +
                 "/init.ckpt --train-data " + d + "/train.bin --batch 2 --seq 15 --steps 100000 --ckpt-every 1 --out " +
                 run + " & pid=$!\n"
                 "for i in $(seq 300); do grep -qs '\"step\":1,' " + run + "/metrics.jsonl && break; sleep 0.1; done\n"
                 "sleep 0.5; kill -TERM $pid; sleep " + gap + "; kill -TERM $pid; wait $pid; echo \"status $?\"\n");
        return run_cmd("timeout 120 bash " + d + "/twice.sh");
    };
    CmdResult r = script(d + "/twice", 60, "2.5");
    EXPECT_THAT(r.out, HasSubstr("stopped at once (a second stop signal)")) << r.out;
    EXPECT_THAT(r.out, HasSubstr("status 143")) << r.out;  // 128 + SIGTERM: ended by the signal
    EXPECT_FALSE(std::filesystem::exists(d + "/twice/resume.ckpt")) << "the first write was cut short";
    CmdResult q = script(d + "/quick", 2, "0.2");
    EXPECT_THAT(q.out, Not(HasSubstr("stopped at once"))) << q.out;
    EXPECT_THAT(q.out, HasSubstr("interrupted after step")) << q.out;
    // The first signal is answered at once, even under --quiet: a long step is otherwise silence.
    EXPECT_THAT(q.out, HasSubstr("train: stop signal: the run stops after this step")) << q.out;
    EXPECT_THAT(q.out, HasSubstr("status 130")) << q.out;
    EXPECT_FALSE(slurp(d + "/quick/resume.ckpt").empty());
}

// A --vocab given is read even where the data never asks for it (plain text: --windows auto needs no vocabulary),
// and a file in the way of --fisher's folder is found before the estimate it is written after: both passed unseen,
// the Fisher's after the whole estimate, with exit 1. A folder not there yet is made.
TEST(TrainCli, AGivenVocabAndTheFishersFolderAreCheckedBeforeTheRun) {
    TempDir tmp("cli");
    const std::string d = tmp.path();
    write_cycle_data(d);
    std::filesystem::create_directory(d + "/empty");
    const std::string train = "bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                              "/train.bin --batch 2 --seq 15 --steps 1 --out ''";
    CmdResult plain = run_cmd(train);
    ASSERT_EQ(plain.rc, 0) << plain.out;
    CmdResult novocab = run_cmd(train + " --vocab " + d + "/novocab");
    EXPECT_EQ(novocab.rc, 2) << novocab.out;
    EXPECT_THAT(novocab.out, HasSubstr("--vocab: no such directory: " + d + "/novocab"));
    CmdResult empty = run_cmd(train + " --vocab " + d + "/empty");
    EXPECT_EQ(empty.rc, 1) << empty.out;
    EXPECT_THAT(empty.out, HasSubstr(d + "/empty/encoder.json"));
    spit(d + "/afile", "x");
    const std::string ewc = train + " --ewc 1 --fisher-batches 2 --fisher-data " + d + "/train.bin --fisher ";
    CmdResult fisher = run_cmd(ewc + d + "/afile/f.st");
    EXPECT_EQ(fisher.rc, 2) << fisher.out;
    EXPECT_THAT(fisher.out, HasSubstr("--fisher " + d + "/afile/f.st: " + d + "/afile is a file, not a directory"));
    EXPECT_THAT(fisher.out, Not(HasSubstr("estimating")));
    // A folder that is not there yet is made, as --out's are (README's example writes runs/fisher.safetensors).
    CmdResult made = run_cmd(ewc + d + "/new/dir/f.st");
    EXPECT_EQ(made.rc, 0) << made.out;
    EXPECT_TRUE(std::filesystem::exists(d + "/new/dir/f.st"));
    const std::string eval = "bin/evaluate --device cpu --model " + d + "/init.ckpt --data " + d + "/train.bin --seq 15";
    ASSERT_EQ(run_cmd(eval).rc, 0);
    CmdResult eval_novocab = run_cmd(eval + " --vocab " + d + "/novocab");
    EXPECT_EQ(eval_novocab.rc, 2) << eval_novocab.out;
    EXPECT_THAT(eval_novocab.out, HasSubstr("--vocab: no such directory"));
}

// --memory-map: every tensor with its bytes, and no training. Sizes computed here from the config: a frozen
// model (LoRA) has no gradient rows for its base tensors, and an f32 (4C, C) = (96, 24) weight is 9216 bytes.
TEST(TrainCli, MemoryMapListsEveryTensorAndDoesNotTrain) {
    TempDir tmp("cli");
    const std::string d = tmp.path();
    std::vector<int32_t> t;
    for (int i = 0; i < 300; i++) t.push_back((i * 5) % 37);
    write_shard(d + "/train.bin", t, nullptr, 37);
    auto be = make_cpu_backend(DType::f32);
    GPT2 m(small_config(37, 2, 3, 24, 16), *be, 1, 1);  // V=37, L=2, NH=3, C=24, maxT=16
    m.init_random(1);
    save_checkpoint(d + "/init.ckpt", m, nullptr, nullptr);
    const std::string cmd = "bin/train --device cpu --init " + d + "/init.ckpt --train-data " + d +
                            "/train.bin --batch 2 --seq 15 --memory-map --out " + d + "/run";
    CmdResult full = run_cmd(cmd);
    ASSERT_EQ(full.rc, 0) << full.out;
    EXPECT_THAT(full.out, HasSubstr("memory: parameters"));
    EXPECT_THAT(full.out, HasSubstr("parameters: f32, 28 tensors"));  // wte, wpe, 12 per block, ln_f
    EXPECT_THAT(full.out, ::testing::ContainsRegex(" 9216 +\\(96, 24\\) +h\\.1\\.mlp\\.c_fc\\.weight"));
    // Offsets in bytes: wpe starts where wte (Vp = 128 rows of C = 24 floats) ends; ln_1's bias 24 floats, rounded up
    // to the arena's 64-element alignment, after its weight.
    EXPECT_THAT(full.out, ::testing::ContainsRegex("\n +12288 +1536 +\\(16, 24\\) +wpe\n"));
    EXPECT_THAT(full.out, ::testing::ContainsRegex("\n +13824 +96 +\\(24\\) +h\\.0\\.ln_1\\.weight\n"
                                                   " +14080 +96 +\\(24\\) +h\\.0\\.ln_1\\.bias\n"));
    EXPECT_THAT(full.out, ::testing::ContainsRegex("gradients \\(trainable tensors only\\): f32, 28 tensors"));
    EXPECT_THAT(full.out, ::testing::ContainsRegex(" 2880 +\\(30, 24\\) +h\\.0\\.ln1[^_]"));  // B*T rows of C
    EXPECT_THAT(full.out, Not(HasSubstr("step ")));
    EXPECT_TRUE(slurp(d + "/run/metrics.jsonl").empty()) << "--memory-map trained";
    CmdResult lora = run_cmd(cmd + " --lora-rank 2");
    ASSERT_EQ(lora.rc, 0) << lora.out;
    EXPECT_THAT(lora.out, HasSubstr("gradients (trainable tensors only): f32, 16 tensors"));  // A and B, 4 sites, 2 blocks
    EXPECT_THAT(lora.out, ::testing::ContainsRegex(" 192 +\\(2, 24\\) +h\\.0\\.attn\\.c_attn\\.lora_A"));
    // No data needed: the same map from the model and the options alone.
    CmdResult dataless = run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --batch 2 --seq 15 --memory-map "
                                 "--out ''");
    ASSERT_EQ(dataless.rc, 0) << dataless.out;
    EXPECT_THAT(dataless.out, ::testing::ContainsRegex(" 9216 +\\(96, 24\\) +h\\.1\\.mlp\\.c_fc\\.weight"));
    EXPECT_EQ(run_cmd("bin/train --device cpu --init " + d + "/init.ckpt --batch 2 --seq 15 --steps 1").rc, 2);
    // Planned, not allocated: a GPU run's map on a machine without one, and a run far past this machine's memory
    // (gpt2-xl at B=256 wants about 1.4 TB on the CPU: the real backend would refuse the first arena past RAM).
    CmdResult gpu = run_cmd("bin/train --device cuda --precision bf16 --model gpt2 --batch 4 --seq 64 --memory-map "
                            "--out ''");
    ASSERT_EQ(gpu.rc, 0) << gpu.out;
    // Isolated windows mask attention by document, which cuDNN's fused path here does not: the matmul path plans.
    CmdResult isolated = run_cmd("bin/train --device cuda --precision bf16 --model gpt2 --batch 4 --seq 64 "
                                 "--memory-map --windows isolated --out ''");
    ASSERT_EQ(isolated.rc, 0) << isolated.out;
    EXPECT_THAT(gpu.out, HasSubstr("attention cudnn"));
    EXPECT_THAT(isolated.out, HasSubstr("attention matmul"));
    EXPECT_THAT(isolated.out, HasSubstr("note: --windows isolated: attention takes the matmul path"));
    EXPECT_THAT(gpu.out, Not(HasSubstr("note: --windows isolated")));
    EXPECT_THAT(gpu.out, HasSubstr("backend cuda (planned, nothing allocated)"));
    EXPECT_THAT(gpu.out, HasSubstr("parameters: bf16, "));
    EXPECT_THAT(gpu.out, HasSubstr("not in the plan: cuBLASLt's 32 MiB workspace"));
    CmdResult huge = run_cmd("bin/train --device cpu --model gpt2-xl --batch 256 --seq 1024 --memory-map --out ''");
    ASSERT_EQ(huge.rc, 0) << huge.out;
    EXPECT_THAT(huge.out, HasSubstr("backend cpu (planned, nothing allocated)"));
    EXPECT_THAT(huge.out, ::testing::ContainsRegex("total +[0-9]{7}\\.[0-9]{2} MiB"));  // over a million MiB
}

}  // namespace
}  // namespace tune::test
