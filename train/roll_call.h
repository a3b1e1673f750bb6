// The roll call: which rank is where, for naming the rank that hangs or dies in an NCCL job.
//
// NCCL cannot say which peer failed to arrive: every rank of a stuck collective just waits. So beside NCCL
// each rank keeps one TCP connection to rank 0, served by a thread of its own, and reports there, a few
// times a second, how many collectives it has entered and the name of the last. Rank 0 keeps the table.
//   - A rank whose connection closes without a goodbye has died. Rank 0 tells every rank at once, so the job
//     stops in about a second instead of at the timeout, and every rank names the one that went. A rank that
//     stops on an error of its own says why first, and the others repeat it.
//   - When a collective times out, the rank that waited asks rank 0 who never entered it: a rank that still
//     reports but is behind hangs (in or after its last collective); one not heard from for a while is on a
//     host that is down or stalled. Rank 0 sends its verdict to every rank, so all of them print it.
// The thread never touches NCCL or CUDA, so it answers while the main thread is stuck.
//
// Best effort: when the connection cannot be made (a firewall between nodes), the job runs without it and
// says so once; --comm-timeout still stops a stuck job, only without a name. TUNE_ROLL_CALL=off turns it off;
// TUNE_ROLL_CALL_ADDR (host or host:port) sets where rank 0 listens, which is by default a free port on
// MASTER_ADDR, or on this host's name.
//
// Protocol, text lines: rank -> 0 "hello R", "at SEQ WHAT", "ask SEQ", "stop WHY", "bye"; 0 -> rank
// "stop R WHY", "gone R SEQ WHAT", "verdict SEQ TEXT", "bye".
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "train/socket.h"

namespace tune {

// One rank as rank 0 last heard of it.
struct RollEntry {
    enum class State { absent, alive, finished, gone };
    State state = State::absent;  // absent: never connected; finished: said goodbye; gone: closed without one
    uint64_t seq = 0;             // collectives entered
    std::string what;             // the name of the last
    double heard = 0;             // steady_now_s() of its last report
    std::string why;              // why it stopped, when it said
};

// One line of the protocol, read strictly: a number is decimal digits that fit (no sign, no "4294967297" that
// sscanf's %d took for rank 1), a rank is one of the world's, and nothing else follows where nothing may. Kind none:
// not a line of the protocol in that direction, and rank 0 hangs up on whoever sent it.
struct RollLine {
    enum class Kind { none, hello, at, ask, stop, bye, gone, verdict };
    Kind kind = Kind::none;
    int rank = -1;     // hello; stop and gone from rank 0 (-1: stop to rank 0, which knows who sent it)
    uint64_t seq = 0;  // at, ask, gone, verdict
    std::string text;  // at and gone: the last collective's name; stop: why; verdict: rank 0's answer
    RollLine() = default;
    RollLine(Kind k, int r = -1, uint64_t s = 0, std::string t = "") : kind(k), rank(r), seq(s), text(std::move(t)) {}
    bool operator==(const RollLine& o) const {
        return kind == o.kind && rank == o.rank && seq == o.seq && text == o.text;
    }
};
// Rank -> 0: "hello R" (R from 1), "at SEQ WHAT", "ask SEQ", "stop WHY", "bye".
RollLine parse_line_to_rank0(const std::string& line, int world);
// 0 -> rank: "stop R WHY", "gone R SEQ WHAT" (R from 1), "verdict SEQ TEXT", "bye".
RollLine parse_line_from_rank0(const std::string& line, int world);
// The line as it travels (without its newline); parsing it in its direction gives `l` back.
std::string roll_line_text(const RollLine& l);

// Who keeps collective number `seq` (1-based) from finishing, by the table at time `now`: every rank behind it,
// gone, silent for longer than `silent_s`, or absent; "" when every rank has entered it.
std::string roll_call_blame(const std::vector<RollEntry>& table, uint64_t seq, double now, double silent_s);

class RollCall {
   public:
    static constexpr double kReportEvery = 0.2;  // seconds between reports of a changed position
    static constexpr double kHeartbeat = 1.0;    // seconds between reports when nothing changed
    static constexpr double kSilent = 5.0;       // no report for this long: the host is down or stalled

    // Whether the environment turned it off (TUNE_ROLL_CALL=off).
    static bool enabled();

    // Rank 0 listens at once (throws tune::Error when it cannot) and serves from a thread; address() is what
    // the other ranks need. Other ranks connect from their thread, for at most connect_s seconds.
    RollCall(int rank, int world, const std::string& rank0_address, double connect_s = 10);
    ~RollCall();  // says goodbye, unless fail() came first
    // This rank is stopping on an error: tell the others why and leave without a goodbye, so that they stop now
    // instead of at their timeout.
    void fail(const std::string& why);
    RollCall(const RollCall&) = delete;
    RollCall& operator=(const RollCall&) = delete;

    // Rank 0: "host:port" for the others (where TUNE_ROLL_CALL_ADDR, MASTER_ADDR or the host name says).
    const std::string& address() const { return address_; }

    // Main thread: this rank enters its next collective. Returns its number (1-based).
    uint64_t enter(const std::string& what);

    // A rank gone without a goodbye (the first one, if several), as a sentence naming it and why it went
    // (its own words when it said); "" while none is.
    std::string death() const;

    // Why collective `seq` has not finished, from rank 0's table (roll_call_blame, or that every rank has
    // entered it); rank 0 answers others' questions within `wait_s` seconds. "" when it cannot tell (no
    // connection, no answer).
    std::string blame(uint64_t seq, double wait_s = 2);

    // Whether this rank is connected (rank 0: listening). For tests and the one warning.
    bool connected() const { return connected_; }

   private:
    void serve();   // rank 0's thread
    void report();  // every other rank's thread
    void mark_gone(int r);                                 // under mu_
    bool handle_line(int from, const RollLine& l);        // rank 0, under mu_
    void take_line(const std::string& line, bool* bye);    // the others, under mu_
    std::string verdict(uint64_t seq);                     // rank 0
    std::string position_line() const;

    const int rank_, world_;
    std::string address_;
    const double connect_s_;
    Fd listen_, up_;  // rank 0: the listening socket; others: the connection to rank 0
    std::thread thread_;
    std::atomic<bool> stop_{false}, connected_{false}, failed_{false};

    std::atomic<uint64_t> seq_{0};
    mutable std::mutex mu_;
    std::string what_;                 // guarded by mu_
    std::vector<RollEntry> table_;     // rank 0's table, guarded by mu_
    std::string death_;                // guarded by mu_
    std::string fail_why_;             // fail()'s words, for the thread to send
    std::vector<std::string> outbox_;  // rank 0: lines for the thread to send to every rank
    std::vector<std::string> why_;     // the others: the reasons rank 0 relayed, by rank
    uint64_t asked_ = 0;               // the others: a question for the thread to send
    struct Verdict {
        std::string text;
        double at;  // steady_now_s() when it came
    };
    std::map<uint64_t, Verdict> verdicts_;  // the others: rank 0's latest verdict on each collective
    std::condition_variable verdict_cv_;
};

}  // namespace tune
