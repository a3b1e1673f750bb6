// The roll call (train/roll_call.h): how an NCCL job names the rank that hangs or dies. No NCCL here: the
// ranks are RollCall objects in one process, talking over loopback TCP as they would across nodes, and a
// dead rank is a raw socket that says hello, reports a position, and closes without a goodbye, which is all
// rank 0 sees of a process that was killed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "train/roll_call.h"
#include "train/socket.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Polls `done` for up to `seconds`.
bool eventually(const std::function<bool()>& done, double seconds = 5) {
    const double deadline = steady_now_s() + seconds;
    while (steady_now_s() < deadline) {
        if (done()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return done();
}

// Rank 0 advertises loopback, whatever this host's name resolves to.
class RollCallTest : public ::testing::Test {
   protected:
    EnvVars addr_{"TUNE_ROLL_CALL_ADDR", "127.0.0.1"};

    // A raw client that plays rank `rank`: says hello and where it is, then stays until closed.
    static Fd fake_rank(const std::string& address, int rank, uint64_t seq, const std::string& what) {
        const size_t colon = address.rfind(':');
        std::string why;
        Fd fd = connect_tcp(address.substr(0, colon), std::atoi(address.c_str() + colon + 1), 2, &why);
        EXPECT_TRUE(fd.ok()) << why;
        const std::string hello = "hello " + std::to_string(rank) + "\nat " + std::to_string(seq) + " " + what + "\n";
        EXPECT_TRUE(send_all(fd.fd, hello.data(), hello.size()));
        return fd;
    }

    // Waits for every rank's report to reach rank 0 (a heartbeat and a bit).
    static void settle() { std::this_thread::sleep_for(std::chrono::duration<double>(RollCall::kHeartbeat + 0.3)); }
};

TEST_F(RollCallTest, AHangingRankIsNamedWithItsLastCollective_ThreeRanks) {
    RollCall r0(0, 3, "");
    EXPECT_THAT(r0.address(), HasSubstr("127.0.0.1:"));
    RollCall r1(1, 3, r0.address()), r2(2, 3, r0.address());
    ASSERT_TRUE(eventually([&] { return r1.connected() && r2.connected(); }));
    for (RollCall* r : {&r0, &r1, &r2}) EXPECT_EQ(r->enter("NCCL initialisation"), 1u);
    for (RollCall* r : {&r0, &r1}) EXPECT_EQ(r->enter("layer 3 gradients"), 2u);
    settle();
    // Ranks 0 and 1 wait in collective #2; rank 2 never came.
    const std::string want = "rank 2 never entered it: it hangs after entering collective #1 'NCCL initialisation'";
    EXPECT_EQ(r0.blame(2), want);
    EXPECT_EQ(r1.blame(2), want);  // asked of rank 0 over the connection
    EXPECT_EQ(r1.death(), "");
    // Once it is there, nobody is behind: the stall is NCCL's or the network's.
    EXPECT_EQ(r2.enter("layer 3 gradients"), 2u);
    settle();
    EXPECT_THAT(r1.blame(2), HasSubstr("every rank has entered it"));
    // Rank 0 behind is named too, by itself and by the others.
    for (RollCall* r : {&r1, &r2}) r->enter("loss sum");
    settle();
    EXPECT_EQ(r0.blame(3), "rank 0 never entered it: it hangs after entering collective #2 'layer 3 gradients'");
    EXPECT_EQ(r2.blame(3), r0.blame(3));
}

TEST_F(RollCallTest, ADeadRankIsNamedOnEveryRankAtOnce) {
    RollCall r0(0, 3, "");
    RollCall r1(1, 3, r0.address());
    ASSERT_TRUE(eventually([&] { return r1.connected(); }));
    {
        Fd dead = fake_rank(r0.address(), 2, 41, "layer 7 gradients");
        settle();
        EXPECT_EQ(r0.death(), "");
    }  // closed without a goodbye: killed
    const double t0 = steady_now_s();
    ASSERT_TRUE(eventually([&] { return !r1.death().empty() && !r0.death().empty(); }));
    EXPECT_LT(steady_now_s() - t0, 1.0) << "noticed at once, not at a timeout";
    for (RollCall* r : {&r0, &r1})
        EXPECT_THAT(r->death(), HasSubstr("rank 2 died after entering collective #41 'layer 7 gradients': its "
                                          "roll-call connection closed without a goodbye"));
    EXPECT_THAT(r0.blame(42), HasSubstr("rank 2 died after entering collective #41"));
}

TEST_F(RollCallTest, AGoodbyeIsNotADeath) {
    RollCall r0(0, 3, "");
    RollCall r1(1, 3, r0.address());
    {
        RollCall r2(2, 3, r0.address());
        ASSERT_TRUE(eventually([&] { return r1.connected() && r2.connected(); }));
        r2.enter("loss sum");
        settle();
    }
    settle();
    EXPECT_EQ(r0.death(), "");
    EXPECT_EQ(r1.death(), "");
    // A collective after it left: the finished rank is the one missing.
    EXPECT_THAT(r1.blame(2), HasSubstr("rank 2 had already finished, after entering collective #1 'loss sum'"));
}

TEST_F(RollCallTest, AFailingRankLeavesWithoutAGoodbye) {
    RollCall r0(0, 3, "");
    RollCall r1(1, 3, r0.address()), r2(2, 3, r0.address());
    ASSERT_TRUE(eventually([&] { return r1.connected() && r2.connected(); }));
    r2.enter("NCCL initialisation");
    settle();
    r2.fail("ncclCommInitRank: unhandled system error");
    ASSERT_TRUE(eventually([&] { return !r1.death().empty(); }, 2));
    EXPECT_EQ(r1.death(), "rank 2 stopped after entering collective #1 'NCCL initialisation': ncclCommInitRank: "
                          "unhandled system error");
    EXPECT_EQ(r0.death(), r1.death());
}

TEST_F(RollCallTest, RankZerosVerdictReachesEveryRankAsItStops) {
    auto r0 = std::make_unique<RollCall>(0, 3, "");
    RollCall r1(1, 3, r0->address()), r2(2, 3, r0->address());
    ASSERT_TRUE(eventually([&] { return r1.connected() && r2.connected(); }));
    for (RollCall* r : {r0.get(), &r1, &r2}) r->enter("a");
    for (RollCall* r : {r0.get(), &r1}) r->enter("b");
    settle();
    // Rank 0's watchdog times out first, blames rank 2 and stops; rank 1's, a moment later, can no longer ask.
    const std::string v = r0->blame(2);
    EXPECT_EQ(v, "rank 2 never entered it: it hangs after entering collective #1 'a'");
    r0->fail("collective #2 'b' has not finished: " + v);
    ASSERT_TRUE(eventually([&] { return !r1.connected() && !r2.connected(); }));
    EXPECT_EQ(r1.blame(2, 0.2), v);
    EXPECT_EQ(r1.death(), "rank 0 stopped: collective #2 'b' has not finished: " + v);
    EXPECT_EQ(r2.death(), r1.death());
}

TEST_F(RollCallTest, RankZeroGoneOrFinishedAsSeenByAnotherRank) {
    int port = 0;
    for (bool says_bye : {false, true}) {
        Fd srv = listen_tcp(0, &port);
        RollCall r1(1, 2, "127.0.0.1:" + std::to_string(port));
        ASSERT_TRUE(eventually([&] { return r1.connected(); }));
        {
            Fd rank0(::accept(srv.fd, nullptr, nullptr));
            ASSERT_TRUE(rank0.ok());
            if (says_bye) {
                ASSERT_TRUE(send_all(rank0.fd, "bye\n", 4));
            }
        }
        ASSERT_TRUE(eventually([&] { return !r1.connected(); }));
        if (says_bye)
            EXPECT_EQ(r1.death(), "");
        else
            EXPECT_THAT(r1.death(), HasSubstr("rank 0 died: its roll-call connection closed without a goodbye"));
        EXPECT_EQ(r1.blame(1, 0.2), "") << "no connection, no answer";
    }
}

TEST_F(RollCallTest, UnreachableRankZeroWarnsAndGoesWithout) {
    int port = 0;
    { Fd gone = listen_tcp(0, &port); }  // a port nobody listens on now
    testing::internal::CaptureStderr();
    {
        RollCall r1(1, 2, "127.0.0.1:" + std::to_string(port), 0.3);
        std::this_thread::sleep_for(std::chrono::milliseconds(600));
        EXPECT_FALSE(r1.connected());
        EXPECT_EQ(r1.enter("x"), 1u);  // entering still counts
        EXPECT_EQ(r1.blame(1, 0.1), "");
        EXPECT_EQ(r1.death(), "");
    }
    EXPECT_THAT(testing::internal::GetCapturedStderr(),
                HasSubstr("rank 1: warning: cannot reach rank 0's roll call at 127.0.0.1:" + std::to_string(port)));
}

TEST_F(RollCallTest, AStrangerIsHungUpOnAndChangesNothing) {
    RollCall r0(0, 2, "");
    auto hung_up_on = [&](const std::string& hello) {
        std::string why;
        const size_t colon = r0.address().rfind(':');
        Fd stranger = connect_tcp("127.0.0.1", std::atoi(r0.address().c_str() + colon + 1), 2, &why);
        ASSERT_TRUE(stranger.ok()) << why;
        ASSERT_TRUE(send_all(stranger.fd, hello.data(), hello.size()));
        char c;
        ASSERT_TRUE(wait_fd(stranger.fd, false, steady_now_s() + 2)) << hello.substr(0, 20);
        EXPECT_LE(::recv(stranger.fd, &c, 1, 0), 0) << "rank 0 hung up on " << hello.substr(0, 20);
    };
    // Rank 5 of 2; 2^32 + 1, which sscanf's %d took for rank 1; not a rank at all; a line that never ends (rank 0
    // must not hold it all in memory).
    for (const std::string& hello : {std::string("hello 5\n"), std::string("hello 4294967297\n"),
                                     std::string("GET / HTTP/1.0\n"), std::string(70 * 1024, 'x')})
        ASSERT_NO_FATAL_FAILURE(hung_up_on(hello));
    EXPECT_EQ(r0.death(), "");
    RollCall r1(1, 2, r0.address());
    ASSERT_TRUE(eventually([&] { return r1.connected(); }));
    // A second connection as rank 1 is hung up on: its report is not rank 1's, and its leaving not rank 1's death.
    ASSERT_NO_FATAL_FAILURE(hung_up_on("hello 1\nat 9 stranger\n"));
    EXPECT_EQ(r0.death(), "");
    r0.enter("a");
    EXPECT_EQ(r0.blame(1), "rank 1 never entered it: it hangs before its first collective");
    r0.enter("b");
    r1.enter("a");
    settle();
    EXPECT_EQ(r0.blame(2), "rank 1 never entered it: it hangs after entering collective #1 'a'");
}

// Each line read strictly, both ways: a number is digits that fit, a rank is the world's, nothing trails where
// nothing may; what is accepted is written back as a line that reads the same.
TEST(RollCallLines, ReadStrictlyAndWrittenBackTheSame) {
    using K = RollLine::Kind;
    struct Case {
        const char* line;
        bool to_rank0;
        RollLine want;  // kind none: refused
    };
    const Case cases[] = {
        {"hello 3", true, {K::hello, 3}},
        {"hello 4", true, {}},  // world 4
        {"hello 0", true, {}},  // rank 0 does not call itself
        {"hello 4294967297", true, {}},  // 2^32 + 1: sscanf's %d gave 1
        {"hello +1", true, {}},
        {"hello 1 ", true, {}},
        {"hello 1x", true, {}},
        {"at 12 allreduce grads", true, {K::at, -1, 12, "allreduce grads"}},
        {"at 0 ", true, {K::at, -1, 0, ""}},
        {"at 0", true, {K::at, -1, 0, ""}},
        {"at 18446744073709551615 x", true, {K::at, -1, 18446744073709551615ull, "x"}},
        {"at 18446744073709551616 x", true, {}},  // 2^64
        {"at -5 x", true, {}},
        {"at x", true, {}},
        {"ask 7", true, {K::ask, -1, 7}},
        {"ask -1", true, {}},  // %llu gave 2^64 - 1
        {"ask 7 ", true, {}},
        {"stop", true, {K::stop, -1, 0, ""}},
        {"stop CUDA error: out of memory", true, {K::stop, -1, 0, "CUDA error: out of memory"}},
        {"stopped", true, {}},
        {"bye", true, {K::bye}},
        {"bye ", true, {}},
        {"", true, {}},
        {"verdict 1 x", true, {}},  // rank 0's line, not a rank's
        {"stop 0 rank 0 ran out of memory", false, {K::stop, 0, 0, "rank 0 ran out of memory"}},
        {"stop 3", false, {K::stop, 3, 0, ""}},
        {"stop 4 why", false, {}},
        {"stop why", false, {}},
        {"gone 1 7 allreduce grads", false, {K::gone, 1, 7, "allreduce grads"}},
        {"gone 2 0 ", false, {K::gone, 2, 0, ""}},
        {"gone 0 7 x", false, {}},  // rank 0 does not report itself gone
        {"gone 1 x", false, {}},
        {"gone 1", false, {}},
        {"verdict 7 rank 1 never entered it", false, {K::verdict, -1, 7, "rank 1 never entered it"}},
        {"verdict -7 x", false, {}},
        {"bye", false, {K::bye}},
        {"hello 1", false, {}},
    };
    for (const Case& c : cases) {
        const RollLine got = c.to_rank0 ? parse_line_to_rank0(c.line, 4) : parse_line_from_rank0(c.line, 4);
        EXPECT_TRUE(got == c.want) << "'" << c.line << "': kind " << (int)got.kind << ", rank " << got.rank << ", seq "
                                   << got.seq << ", text '" << got.text << "'";
        if (got.kind == K::none) continue;
        const std::string text = roll_line_text(got);
        const RollLine again = c.to_rank0 ? parse_line_to_rank0(text, 4) : parse_line_from_rank0(text, 4);
        EXPECT_TRUE(again == got) << "'" << c.line << "' written back as '" << text << "'";
    }
}

// Above 64 ranks rank 0 reads in batches; every rank is still let in and heard.
TEST_F(RollCallTest, AHundredRanksAreLetInAndHeard_World100) {
    RollCall r0(0, 100, "");
    std::vector<Fd> ranks;
    for (int r = 1; r < 100; r++) ranks.push_back(fake_rank(r0.address(), r, 1, "a"));
    r0.enter("a"), r0.enter("b");
    settle();
    const std::string v = r0.blame(2);
    EXPECT_THAT(v, ::testing::StartsWith("rank 1 never entered it: it hangs after entering collective #1 'a'; "
                                         "rank 2 never entered it"));
    EXPECT_THAT(v, ::testing::EndsWith("; and 91 more ranks"));
    EXPECT_THAT(v, Not(HasSubstr("never joined")));
}

TEST(RollCallAddress, AMalformedAddressIsRefusedNamingTheVariable) {
    for (const char* bad : {"[::1", "[::1]x", "[::1]:", "node7:http", "node7:70000", ":29500", "[]:29500"}) {
        EnvVars addr("TUNE_ROLL_CALL_ADDR", bad);
        EXPECT_THAT(error_of([] { RollCall r0(0, 2, ""); }), HasSubstr(std::string("TUNE_ROLL_CALL_ADDR='") + bad + "' is not host, host:port"));
    }
}

// An IPv6 address goes in brackets, so the ranks do not read its last group as the port.
TEST(RollCallAddress, IPv6LoopbackInBracketsIsJoined) {
    {
        Fd probe(::socket(AF_INET6, SOCK_STREAM, 0));
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_addr = in6addr_loopback;
        if (!probe.ok() || ::bind(probe.fd, (sockaddr*)&a, sizeof a) != 0)
            GTEST_SKIP() << "this host has no IPv6 loopback (::1)";
    }
    EnvVars addr("TUNE_ROLL_CALL_ADDR", "[::1]");
    RollCall r0(0, 2, "");
    ASSERT_THAT(r0.address(), ::testing::StartsWith("[::1]:"));
    EXPECT_GT(std::atoi(r0.address().c_str() + 6), 0) << r0.address();
    RollCall r1(1, 2, r0.address());
    ASSERT_TRUE(eventually([&] { return r1.connected(); })) << r0.address();
    r0.enter("a"), r0.enter("b");
    r1.enter("a");
    std::this_thread::sleep_for(std::chrono::duration<double>(RollCall::kHeartbeat + 0.3));
    EXPECT_EQ(r1.blame(2), "rank 1 never entered it: it hangs after entering collective #1 'a'");
}

TEST(RollCallBlame, NamesAbsentSilentGoneBehindAndStopsAtEight) {
    using S = RollEntry::State;
    const double now = 100;
    std::vector<RollEntry> t(4);
    t[0] = {S::alive, 9, "wte grads", now, ""};
    t[1] = {S::absent, 0, "", 0, ""};
    t[2] = {S::alive, 8, "layer 0 grads", now - 30, ""};  // silent beats behind
    t[3] = {S::gone, 3, "loss sum", now - 50, ""};
    // The ranks known to be at fault first; those it cannot tell about last.
    EXPECT_EQ(roll_call_blame(t, 9, now, 5),
              "rank 2 has not been heard from for 30 s (its host is down or stalled), after entering collective #8 "
              "'layer 0 grads'; rank 3 died after entering collective #3 'loss sum'; rank 1 never joined the roll "
              "call, so whether it entered it is unknown");
    t[3].why = "out of memory";  // it said why before it went
    EXPECT_THAT(roll_call_blame(t, 9, now, 5),
                HasSubstr("; rank 3 stopped after entering collective #3 'loss sum' (out of memory)"));
    t[1] = t[2] = t[3] = t[0];
    EXPECT_EQ(roll_call_blame(t, 9, now, 5), "");
    EXPECT_EQ(roll_call_blame(t, 10, now, 5).find("rank 0 never entered it"), 0u);
    std::vector<RollEntry> many(20, RollEntry{S::alive, 1, "a", now, ""});
    many[0].seq = 2;
    const std::string s = roll_call_blame(many, 2, now, 5);
    EXPECT_THAT(s, HasSubstr("rank 8 never entered it"));
    EXPECT_THAT(s, Not(HasSubstr("rank 9 ")));
    EXPECT_THAT(s, HasSubstr("; and 11 more ranks"));
    std::vector<RollEntry> three(3, {S::absent, 0, "", 0, ""});
    three[0] = {S::alive, 1, "a", now, ""};
    EXPECT_EQ(roll_call_blame(three, 1, now, 5),
              "ranks 1 and 2 never joined the roll call, so whether they entered it is unknown");
    for (RollEntry& e : many) e.state = S::absent;
    many[0].state = S::alive;
    EXPECT_EQ(roll_call_blame(many, 1, now, 5),
              "ranks 1, 2, 3, 4, 5, 6, 7, 8 and 11 more never joined the roll call, so whether they entered it is "
              "unknown");
}

TEST(RollCallSwitch, OffByEnvironment) {
    EnvVars unset("TUNE_ROLL_CALL", nullptr);
    EXPECT_TRUE(RollCall::enabled());
    for (const char* v : {"off", "0", "on"}) {
        EnvVars set("TUNE_ROLL_CALL", v);
        EXPECT_EQ(RollCall::enabled(), std::string(v) == "on") << v;
    }
}

}  // namespace
}  // namespace tune::test
